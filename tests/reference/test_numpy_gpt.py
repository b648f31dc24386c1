"""The NumPy reference forward pass against lm/model.py's (and the pieces against torch)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm.checkpoint import checkpoint_dict
from lm.cli import main as lm
from lm.model import GPT, GPTConfig, apply_rope, rope_tables
from lm.reference import numpy_gpt
from lm.sampling import generate
from lm.tokenizers.byte import ByteTokenizer
from tests.conftest import arch_options

VARIANTS = list(itertools.product(["learned", "sinusoidal"], [True, False], [True, False],
                                  ["gelu", "gelu_tanh"]))
OPTIONS = arch_options(logit_softcap=1.0)  # each option alone, then together
ALL = OPTIONS["all"]


def random_gpt(**config) -> GPT:
    """A tiny GPT whose every parameter is random (norm gains near 1), eval mode."""
    torch.manual_seed(0)
    sizes = {"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    model = GPT(GPTConfig(**{**sizes, **config})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "ln" in name and name.endswith("weight") else 0.0, 0.3)
    return model


@pytest.mark.parametrize("pos_encoding, tie_weights, bias, activation", VARIANTS)
def test_numpy_forward_equals_torch(pos_encoding, tie_weights, bias, activation):
    model = random_gpt(pos_encoding=pos_encoding, tie_weights=tie_weights, bias=bias,
                       activation=activation)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        expected = model(idx)[0].double().numpy()  # (B, T, V)
    got = numpy_gpt.gpt(idx.numpy(), numpy_gpt.numpy_state_dict(model), model.config)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_numpy_forward_equals_torch_for_each_option(options):
    model = random_gpt(**options)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        expected = model(idx)[0].double().numpy()  # (B, T, V)
    if model.config.logit_softcap is not None:  # the cap is active, not a near-identity
        assert np.abs(expected).max() > 0.9 * model.config.logit_softcap
    got = numpy_gpt.gpt(idx.numpy(), numpy_gpt.numpy_state_dict(model), model.config)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_rope_rms_norm_and_activations_equal_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=g)  # (B, H, T, Dh)
    cos, sin = rope_tables(7, 8, 500.0)  # float32, (T, Dh/2)
    np_cos, np_sin = numpy_gpt.rope_tables(7, 8, 500.0)
    np.testing.assert_allclose(np_cos, cos.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(np_sin, sin.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(numpy_gpt.rope(x.numpy(), np_cos, np_sin),
                               apply_rope(x, torch.from_numpy(np_cos), torch.from_numpy(np_sin)),
                               atol=1e-12)
    gain = torch.rand(8, dtype=torch.float64, generator=g) + 0.5
    np.testing.assert_allclose(numpy_gpt.rms_norm(x.numpy(), gain.numpy(), 1e-5),
                               F.rms_norm(x, (8,), gain, 1e-5).numpy(), atol=1e-12)
    np.testing.assert_allclose(numpy_gpt.rms_norm(x.numpy(), None, 0.1),
                               F.rms_norm(x, (8,), None, 0.1).numpy(), atol=1e-12)
    np.testing.assert_allclose(numpy_gpt.relu2(x.numpy()), (F.relu(x) ** 2).numpy(), atol=1e-12)
    a, b = x.chunk(2, dim=-1)
    np.testing.assert_allclose(numpy_gpt.swiglu(x.numpy()), (F.silu(a) * b).numpy(), atol=1e-12)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_equals_torch(approximate):
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    expected = F.gelu(x, approximate="tanh" if approximate else "none").numpy()
    np.testing.assert_allclose(numpy_gpt.gelu(x.numpy(), approximate), expected, atol=1e-12)


def test_layer_norm_and_softmax_equal_torch():
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g, b = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    np.testing.assert_allclose(numpy_gpt.layer_norm(x.numpy(), g.numpy(), b.numpy(), 1e-5),
                               F.layer_norm(x, (8,), g, b, 1e-5).numpy(), atol=1e-12)
    np.testing.assert_allclose(numpy_gpt.softmax(x.numpy()), F.softmax(x, -1).numpy(), atol=1e-12)


@pytest.mark.parametrize("options", [{}, ALL, OPTIONS["attn_only_post_norm"]],
                         ids=["gpt2", "all_options", "attn_only_post_norm"])
def test_cli_greedy_text_equals_torch_greedy(tmp_path, capsys, options):
    tokenizer = ByteTokenizer()
    model = random_gpt(vocab_size=tokenizer.vocab_size, **options)
    torch.save(checkpoint_dict(model, tokenizer), tmp_path / "m.ckpt")
    prompt = torch.tensor([tokenizer.encode("hi")])  # (1, 2)
    expected = generate(model, prompt, max_new_tokens=20, temperature=0)  # crops past block_size
    argv = ["generate", f"ckpt={tmp_path / 'm.ckpt'}", "prompt=hi", "max_new_tokens=20",
            "strategy=greedy"]
    for backend in ("numpy", "torch"):  # the reference and lm/model.py print the same text
        assert lm([*argv, f"backend={backend}"]) == 0
        assert capsys.readouterr().out == tokenizer.decode(expected[0].tolist()) + "\n"


def test_cli_errors_exit_2(tmp_path, capsys):
    assert lm(["generate", "prompt=hi", "strategy=greedy", "backend=numpy"]) == 2
    assert "ckpt is required" in capsys.readouterr().err
    assert lm(["generate", f"ckpt={tmp_path / 'none.ckpt'}", "strategy=greedy",
               "backend=numpy"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert lm(["generate", f"ckpt={tmp_path / 'none.ckpt'}", "backend=numpy"]) == 2
    assert "backend=numpy is invalid with strategy=top_k" in capsys.readouterr().err
