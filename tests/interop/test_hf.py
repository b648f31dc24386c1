"""lm/interop/hf.py and mapping.py against Hugging Face ``transformers``' GPT-2 (the
reference): import, export, fine-tune init, and the one-line errors of a damaged directory."""

import json

import pytest
import torch

from lm.interop.hf import export_hf_gpt2, init_from_hf, load_hf_gpt2, save_hf_tokenizer
from lm.model import GPT, GPTConfig
from lm.sampling import generate
from lm.tokenizers import BPETokenizer, CharTokenizer
from tests.interop.conftest import HOLDS, TEXT, hf_logits, hf_model, our_logits, tiny_gpt

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_import_gives_hf_logits(tmp_path, idx, safe):
    hf = hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    if not safe and not (tmp_path / "pytorch_model.bin").is_file():
        # transformers 5 always writes safetensors; write the legacy file as 4.x did
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    model, tokenizer = load_hf_gpt2(tmp_path)
    assert tokenizer is None
    assert model.config.activation == "gelu_tanh" and model.config.block_size == 32
    torch.testing.assert_close(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)


def test_import_untied_and_exact_gelu(tmp_path, idx):
    hf = hf_model(tie_word_embeddings=False, activation_function="gelu", layer_norm_epsilon=1e-3)
    hf.save_pretrained(tmp_path)
    model, _ = load_hf_gpt2(tmp_path)
    assert not model.config.tie_weights and model.config.activation == "gelu"
    assert model.config.layer_norm_epsilon == 1e-3
    torch.testing.assert_close(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)


def test_greedy_tokens_match_hf_generate(tmp_path, idx):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    model, _ = load_hf_gpt2(tmp_path)
    prompt = idx[:, :6]  # (2, 6)
    ours = generate(model, prompt, max_new_tokens=12, temperature=0)  # (2, 18)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                         min_new_tokens=12, do_sample=False, pad_token_id=0)  # (2, 18)
    assert torch.equal(ours, theirs)


def test_export_reimport_is_exact_and_hf_loads_it(tmp_path, idx):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    model, _ = load_hf_gpt2(tmp_path / "hf")
    export_hf_gpt2(model, tmp_path / "out")
    again, _ = load_hf_gpt2(tmp_path / "out")
    assert again.config == model.config
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(hf_logits(reloaded, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [
    {"tie_weights": False, "activation": "gelu"},
    {"bias": False, "activation": "gelu_tanh"},
    {"pos_encoding": "sinusoidal", "layer_norm_epsilon": 1e-3},
], ids=["untied-gelu", "no-bias", "sinusoidal"])
def test_export_of_other_variants_gives_our_logits_in_hf(tmp_path, idx, config):
    """GPT-2 has no bias-free or sinusoidal variant: they export as zero biases / a fixed wpe."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          **config)).eval()
    export_hf_gpt2(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(model, idx), atol=1e-5, rtol=0)


def test_import_builds_a_default_option_config(tmp_path):
    hf_model(activation_function="gelu", layer_norm_epsilon=1e-3).save_pretrained(tmp_path)
    model, _ = load_hf_gpt2(tmp_path)
    assert model.config == GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2,
                                     n_embd=32, dropout=0.1, activation="gelu",
                                     layer_norm_epsilon=1e-3)
    assert (model.config.pos_encoding, model.config.norm, model.config.qk_norm,
            model.config.zero_init_proj, model.config.logit_softcap) == (
        "learned", "layernorm", False, False, None)


def test_import_refuses_a_bad_or_stale_lm_tokenizer(tmp_path):
    tokenizer = BPETokenizer.train(TEXT, vocab_size=270)
    hf_model(vocab_size=tokenizer.vocab_size).save_pretrained(tmp_path)
    save_hf_tokenizer(tokenizer, tmp_path)
    (tmp_path / "lm_tokenizer.json").write_text('{"type": "nosuch"}')
    with pytest.raises(ValueError, match=r"lm_tokenizer.json is not an lm tokenizer: .*'nosuch'"):
        load_hf_gpt2(tmp_path)
    other = BPETokenizer.train(TEXT[::-1], vocab_size=270)  # other merges, same size
    (tmp_path / "lm_tokenizer.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(ValueError, match="hold different tokenizers"):
        load_hf_gpt2(tmp_path)
    too_big = CharTokenizer([chr(c) for c in range(0x100, 0x100 + 300)])  # 303 ids
    (tmp_path / "lm_tokenizer.json").write_text(json.dumps(too_big.to_dict()))
    with pytest.raises(ValueError, match="has 303 tokens but config.json vocab_size=270"):
        load_hf_gpt2(tmp_path)


def test_missing_weights_is_a_value_error(tmp_path):
    hf_model().config.to_json_file(tmp_path / "config.json")
    with pytest.raises(ValueError, match="has no weights"):
        load_hf_gpt2(tmp_path)
    with pytest.raises(ValueError, match="config.json does not exist"):
        load_hf_gpt2(tmp_path.parent)


@pytest.mark.parametrize("key, value", [
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("scale_attn_weights", False),
    ("activation_function", "relu"),
    ("n_inner", 40),
    ("model_type", "llama"),
])
def test_unsupported_config_is_rejected(tmp_path, key, value):
    hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=key):
        load_hf_gpt2(tmp_path)


@pytest.mark.parametrize("changes, problem", [
    ({"n_layer": "two"}, 'config.json n_layer="two" is invalid: must be an integer'),
    ({"n_head": True}, "config.json n_head=true is invalid: must be an integer"),
    ({"n_positions": None}, "config.json n_positions=null is invalid: must be an integer"),
    ({"n_inner": "x"}, 'config.json n_inner="x" is invalid: must be an integer or null'),
    ({"activation_function": []}, "config.json activation_function=[] is invalid: must be a string"),
    ({"resid_pdrop": [0.1]}, "config.json resid_pdrop=[0.1] is invalid: must be a number"),
    ({"tie_word_embeddings": "yes"},
     'config.json tie_word_embeddings="yes" is invalid: must be a boolean'),
    ({"n_head": 3}, ("config.json is not a model lm can build: model.n_embd=32 is not divisible "
                     "by model.n_head=3 (n_embd % n_head must be 0)")),
], ids=["string", "bool", "null", "n_inner", "activation", "dropout", "tie", "n_head"])
def test_a_config_value_lm_cannot_use_is_one_line(exported, changes, problem):
    config = json.loads((exported / "config.json").read_text())
    (exported / "config.json").write_text(json.dumps({**config, **changes}))
    with pytest.raises(ValueError) as err:
        load_hf_gpt2(exported)
    assert str(err.value) == problem


def test_weights_that_are_not_a_state_dict_are_one_line(exported):
    (exported / "model.safetensors").unlink()
    torch.save([1, 2], exported / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_hf_gpt2(exported)
    assert str(err.value) == (f"{exported / 'pytorch_model.bin'} holds a list, not a state dict "
                              "(parameter name -> tensor)")
    torch.save({"transformer.wte.weight": 1}, exported / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"entry 'transformer.wte.weight' is not a tensor \(it is int"):
        load_hf_gpt2(exported)
    torch.save({"wpe.weight": torch.zeros(32, 32)}, exported / "pytorch_model.bin")  # no wte
    with pytest.raises(ValueError, match=r"does not fit the model: missing: lm_head.weight"):
        load_hf_gpt2(exported)


def test_a_merge_of_a_token_vocab_json_lacks_is_one_line(exported):
    vocab = json.loads((exported / "vocab.json").read_text())
    merges = (exported / "merges.txt").read_text().splitlines()  # a #version line first
    new_id = 256 + len(merges) - 1  # the id GPT-2's layout gives one more merge
    vocab = {token: i + (i >= new_id) for token, i in vocab.items()}  # specials move up
    (exported / "vocab.json").write_text(json.dumps({**vocab, "qqr": new_id}))
    (exported / "merges.txt").write_text("\n".join([*merges, "qq r"]) + "\n")  # no "qq"
    with pytest.raises(ValueError) as err:
        load_hf_gpt2(exported)
    assert str(err.value) == (f"{exported / 'vocab.json'} + merges.txt are not GPT-2's "
                              "tokenizer: a merge names the token 'qq', which vocab.json lacks")


@pytest.mark.parametrize("options, named", [
    ({"pos_encoding": "rope"}, "model.pos_encoding=rope"),
    ({"norm": "rmsnorm"}, "model.norm=rmsnorm"),
    ({"norm_position": "post"}, "model.norm_position=post"),
    ({"mlp": False}, "model.mlp=false"),
    ({"mlp": False, "activation": "swiglu"}, "model.mlp=false"),  # no MLP: activation unused
    ({"qk_norm": True}, "model.qk_norm=true"),
    ({"activation": "relu2"}, "model.activation=relu2"),
    ({"activation": "swiglu"}, "model.activation=swiglu"),
    ({"logit_softcap": 15.0}, "model.logit_softcap=15.0"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "norm_position": "post", "qk_norm": True,
      "activation": "swiglu", "logit_softcap": 30.0, "zero_init_proj": True, "tie_weights": False},
     ("model.pos_encoding=rope, model.norm=rmsnorm, model.norm_position=post, "
      "model.qk_norm=true, model.activation=swiglu, model.logit_softcap=30.0")),
], ids=["rope", "rmsnorm", "post_norm", "attn_only", "attn_only_swiglu", "qk_norm", "relu2",
        "swiglu", "logit_softcap", "all"])
def test_export_refuses_what_gpt2_cannot_hold(tmp_path, options, named):
    model = tiny_gpt(**options)
    with pytest.raises(ValueError) as err:
        export_hf_gpt2(model, tmp_path / "out")
    assert str(err.value) == f"cannot export to GPT-2: {named} {HOLDS}"
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_export_allows_zero_init_proj_and_hf_computes_our_logits(tmp_path, idx):
    """zero_init_proj is an init only: once trained (here: perturbed) it is a GPT-2."""
    model = tiny_gpt(zero_init_proj=True, tie_weights=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, 0.2)
    export_hf_gpt2(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(model, idx), atol=1e-5, rtol=0)


def test_init_from_hf_copies_weights(tmp_path, idx):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          activation="gelu_tanh")).eval()
    assert init_from_hf(model, tmp_path) is model
    torch.testing.assert_close(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_init_from_hf_names_mismatched_shapes(tmp_path):
    hf_model().save_pretrained(tmp_path)
    model = GPT(GPTConfig(vocab_size=120, block_size=32, n_layer=2, n_head=2, n_embd=32,
                          activation="gelu_tanh"))
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight \(100, 32\) vs model \(120, 32\)"):
        init_from_hf(model, tmp_path)
    with pytest.raises(ValueError, match="model.activation=gelu"):
        init_from_hf(GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2,
                                   n_embd=32)), tmp_path)


@pytest.mark.parametrize("options, named", [
    ({"norm": "rmsnorm"}, "model.norm=rmsnorm but the checkpoint has layernorm"),
    ({"qk_norm": True}, "model.qk_norm=True but the checkpoint has False"),
    ({"logit_softcap": 30.0}, "model.logit_softcap=30.0 but the checkpoint has None"),
    ({"pos_encoding": "rope"}, "model.pos_encoding=rope but the checkpoint has learned"),
    ({"mlp": False}, "model.mlp=False but the checkpoint has True"),
])
def test_init_from_hf_refuses_options_gpt2_has_not(tmp_path, options, named):
    """qk_norm and logit_softcap have no weights: without this check GPT-2's weights would
    load into a model that computes something else."""
    hf_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=named):
        init_from_hf(tiny_gpt(activation="gelu_tanh", **options), tmp_path)


def test_train_fine_tunes_from_a_hf_directory(make_cfg, corpus, tmp_path):
    """init_from + GPT-2's tokenizer files: the run starts from the HF weights, so with a
    negligible learning rate its val/loss is the HF model's loss on the same batches."""
    import torch.nn.functional as F

    from lm.data.datamodule import build_datamodule
    from lm.training.run import run

    hf_dir = tmp_path / "hf"
    tokenizer = BPETokenizer.train(corpus.read_text(), 300, ("<|endoftext|>",))
    tokenizer.save_gpt2(hf_dir)
    hf = hf_model(n_layer=2, n_head=4, n_embd=64, n_positions=64,
                  vocab_size=tokenizer.vocab_size)
    hf.save_pretrained(hf_dir)
    cfg = make_cfg(f"init_from={hf_dir}", "data/tokenizer=gpt2_files",
                   f"data.tokenizer.path={hf_dir}", f"model.vocab_size={tokenizer.vocab_size}",
                   "model.activation=gelu_tanh", "optimizer.lr=1e-12", "trainer.max_steps=1",
                   "trainer.val_check_interval=1")
    record = run(cfg)
    dm = build_datamodule(cfg)
    assert dm.tokenizer.to_dict() == tokenizer.to_dict()  # the files' ids, not retrained
    with torch.no_grad():
        losses = [F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten())
                  for x, y in dm.val_dataloader()]
    expected = torch.stack(losses).mean().item()
    assert record["metrics"]["final"]["val/loss"] == pytest.approx(expected, abs=1e-4)


def test_init_from_a_mismatched_model_is_one_config_error(make_cfg, tmp_path):
    from lm.errors import ConfigError
    from lm.training.run import run

    hf_model(n_positions=64).save_pretrained(tmp_path / "hf")  # 32 wide; model=tiny is 64
    with pytest.raises(ConfigError, match="init_from=.*hf") as err:
        run(make_cfg(f"init_from={tmp_path / 'hf'}", "model.activation=gelu_tanh"))
    assert "\n" not in str(err.value)

