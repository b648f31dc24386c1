"""The NumPy reference forward pass against lm/model.py's (and the pieces against torch)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm.cli import main as lm
from lm.interop.hf import checkpoint_dict
from lm.model import GPT, GPTConfig
from lm.reference import numpy_gpt
from lm.sampling import generate
from lm.tokenizers.byte import ByteTokenizer

VARIANTS = list(itertools.product(["learned", "sinusoidal"], [True, False], [True, False],
                                  ["gelu", "gelu_tanh"]))


def random_gpt(**config) -> GPT:
    """A tiny GPT whose every parameter is random (LayerNorm gains near 1), eval mode."""
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


def test_cli_greedy_text_equals_torch_greedy(tmp_path, capsys):
    tokenizer = ByteTokenizer()
    model = random_gpt(vocab_size=tokenizer.vocab_size)
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
