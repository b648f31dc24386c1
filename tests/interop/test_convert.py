"""lm/convert.py against Hugging Face ``transformers``' GPT-2 (the reference)."""

import json

import pytest
import torch

from lm.checkpoint import checkpoint_dict, load_checkpoint
from lm.cli import main as lm
from lm.interop.hf import (
    export_hf_gpt2,
    init_from_hf,
    load_hf_gpt2,
    save_hf_tokenizer,
)
from lm.model import GPT, GPTConfig
from lm.sampling import generate
from lm.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SIZES = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32, "vocab_size": 100}


def hf_model(seed: int = 0, **overrides) -> "transformers.GPT2LMHeadModel":
    """A random tiny GPT-2 in eval mode; a wide init (0.2) so logits are far from uniform."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**SIZES, "initializer_range": 0.2, **overrides})
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 inits LayerNorm to (1, 0); random values test the mapping
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits  # (B, T, V)


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]  # (B, T, V)


@pytest.fixture
def idx():
    return torch.randint(0, SIZES["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))


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


def test_cli_import_then_export_round_trip(tmp_path, idx, capsys):
    tokenizer = BPETokenizer.train("the cat sat on the mat. " * 20, vocab_size=270)
    hf = hf_model(vocab_size=tokenizer.vocab_size)
    hf.save_pretrained(tmp_path / "hf")
    save_hf_tokenizer(tokenizer, tmp_path / "hf")
    assert lm(["convert", "direction=import", f"hf_dir={tmp_path / 'hf'}",
               f"ckpt={tmp_path / 'gpt.ckpt'}"]) == 0
    model, loaded_tokenizer, _ = load_checkpoint(tmp_path / "gpt.ckpt")
    assert loaded_tokenizer.encode("the cat") == tokenizer.encode("the cat")
    torch.testing.assert_close(our_logits(model, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)

    assert lm(["convert", "direction=export", f"ckpt={tmp_path / 'gpt.ckpt'}",
               f"hf_dir={tmp_path / 'out'}"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == (
        tokenizer.eos_id
    )
    assert BPETokenizer.load_gpt2(tmp_path / "out").to_dict() == tokenizer.to_dict()
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(hf_logits(reloaded, idx), hf_logits(hf, idx), atol=1e-5, rtol=0)


TEXT = "the cat sat on the mat.\nLe chat était là. " * 20


def round_trip_tokenizer(kind: str) -> Tokenizer:
    """A tokenizer of each kind; the BPE splits on whitespace, not GPT-2's pattern, so
    only lm_tokenizer.json (not vocab.json + merges.txt) gives it back."""
    if kind == "char":
        return CharTokenizer.from_text(TEXT)
    if kind == "byte":
        return ByteTokenizer()
    trained = BPETokenizer.train(TEXT, vocab_size=280, special_tokens=("<|endoftext|>",))
    return BPETokenizer(trained.merges, list(trained.special_tokens), pattern=r"\s+|\S+")


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_cli_export_then_import_gives_back_the_model_and_tokenizer(tmp_path, capsys, kind):
    tokenizer = round_trip_tokenizer(kind)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2,
                          n_embd=32)).eval()
    torch.save(checkpoint_dict(model, tokenizer), tmp_path / "m.ckpt")
    assert lm(["convert", "direction=export", f"ckpt={tmp_path / 'm.ckpt'}",
               f"hf_dir={tmp_path / 'hf'}"]) == 0
    assert lm(["convert", "direction=import", f"hf_dir={tmp_path / 'hf'}",
               f"ckpt={tmp_path / 'back.ckpt'}"]) == 0
    out = capsys.readouterr().out
    assert f"{kind} tokenizer from lm_tokenizer.json" in out
    assert ("vocab.json, merges.txt" in out) == (kind == "bpe")

    again, again_tokenizer, _ = load_checkpoint(tmp_path / "back.ckpt")
    assert again.config == model.config
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    idx = torch.tensor([tokenizer.encode(TEXT[:32])])  # (1, 32)
    assert torch.equal(our_logits(again, idx), our_logits(model, idx))
    assert again_tokenizer.to_dict() == tokenizer.to_dict()
    sample = "the cat était\n là <|endoftext|> ?"  # "?" is not a char of TEXT: <unk>
    assert again_tokenizer.encode(sample) == tokenizer.encode(sample)
    assert again_tokenizer.decode(tokenizer.encode(sample)) == tokenizer.decode(tokenizer.encode(sample))
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()  # still an HF dir
    torch.testing.assert_close(hf_logits(hf, idx), our_logits(model, idx), atol=1e-5, rtol=0)


def test_import_without_tokenizer_names_both_file_options(tmp_path, capsys):
    hf_model().save_pretrained(tmp_path)
    assert lm(["convert", "direction=import", f"hf_dir={tmp_path}",
               f"ckpt={tmp_path / 'x.ckpt'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"error: {tmp_path} has no tokenizer: a checkpoint needs lm_tokenizer.json (written by "
        "lm convert direction=export) or GPT-2's vocab.json + merges.txt\n")
    assert not (tmp_path / "x.ckpt").exists()


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


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert lm(["convert", "direction=import", f"hf_dir={tmp_path / 'nope'}",
               f"ckpt={tmp_path / 'x.ckpt'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "is not a directory" in err and err.count("\n") == 1
    assert lm(["convert", "direction=frobnicate", "hf_dir=a", "ckpt=b"]) == 2
    assert "direction=frobnicate is invalid: must be import" in capsys.readouterr().err
    assert lm(["convert", "direction=import", "hf_dir=a"]) == 2
    assert "ckpt is required" in capsys.readouterr().err


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
    from lm.config import ConfigError
    from lm.training.run import run

    hf_model(n_positions=64).save_pretrained(tmp_path / "hf")  # 32 wide; model=tiny is 64
    with pytest.raises(ConfigError, match="init_from=.*hf") as err:
        run(make_cfg(f"init_from={tmp_path / 'hf'}", "model.activation=gelu_tanh"))
    assert "\n" not in str(err.value)


# --- options GPT-2 cannot hold ---------------------------------------------------------

HOLDS = ("(GPT-2 holds learned or sinusoidal positions, layernorm, pre-norm blocks, "
         "gelu/gelu_tanh, no qk_norm, no logit_softcap)")


def tiny_gpt(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32,
                         **options)).eval()


@pytest.mark.parametrize("options, named", [
    ({"pos_encoding": "rope"}, "model.pos_encoding=rope"),
    ({"norm": "rmsnorm"}, "model.norm=rmsnorm"),
    ({"norm_position": "post"}, "model.norm_position=post"),
    ({"qk_norm": True}, "model.qk_norm=true"),
    ({"activation": "relu2"}, "model.activation=relu2"),
    ({"activation": "swiglu"}, "model.activation=swiglu"),
    ({"logit_softcap": 15.0}, "model.logit_softcap=15.0"),
    ({"pos_encoding": "rope", "norm": "rmsnorm", "norm_position": "post", "qk_norm": True,
      "activation": "swiglu", "logit_softcap": 30.0, "zero_init_proj": True, "tie_weights": False},
     ("model.pos_encoding=rope, model.norm=rmsnorm, model.norm_position=post, "
      "model.qk_norm=true, model.activation=swiglu, model.logit_softcap=30.0")),
], ids=["rope", "rmsnorm", "post_norm", "qk_norm", "relu2", "swiglu", "logit_softcap", "all"])
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


@pytest.mark.parametrize("options, named", [
    ({"pos_encoding": "rope", "norm": "rmsnorm"}, "model.pos_encoding=rope, model.norm=rmsnorm"),
    ({"norm_position": "post"}, "model.norm_position=post"),  # GPT-1's blocks, no ln_f
], ids=["rope_rmsnorm", "post_norm"])
def test_cli_export_of_a_non_gpt2_model_is_one_line_and_exit_2(tmp_path, capsys, options, named):
    from lm.interop.hf import checkpoint_dict
    from lm.tokenizers.byte import ByteTokenizer

    tokenizer = ByteTokenizer()
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                          n_embd=16, **options))
    torch.save(checkpoint_dict(model, tokenizer), tmp_path / "m.ckpt")
    assert lm(["convert", "direction=export", f"ckpt={tmp_path / 'm.ckpt'}",
               f"hf_dir={tmp_path / 'out'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err == f"error: cannot export to GPT-2: {named} {HOLDS}\n"
    assert not (tmp_path / "out").exists()


def test_import_builds_a_default_option_config(tmp_path):
    hf_model(activation_function="gelu", layer_norm_epsilon=1e-3).save_pretrained(tmp_path)
    model, _ = load_hf_gpt2(tmp_path)
    assert model.config == GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2,
                                     n_embd=32, dropout=0.1, activation="gelu",
                                     layer_norm_epsilon=1e-3)
    assert (model.config.pos_encoding, model.config.norm, model.config.qk_norm,
            model.config.zero_init_proj, model.config.logit_softcap) == (
        "learned", "layernorm", False, False, None)


@pytest.mark.parametrize("options, named", [
    ({"norm": "rmsnorm"}, "model.norm=rmsnorm but the checkpoint has layernorm"),
    ({"qk_norm": True}, "model.qk_norm=True but the checkpoint has False"),
    ({"logit_softcap": 30.0}, "model.logit_softcap=30.0 but the checkpoint has None"),
    ({"pos_encoding": "rope"}, "model.pos_encoding=rope but the checkpoint has learned"),
])
def test_init_from_hf_refuses_options_gpt2_has_not(tmp_path, options, named):
    """qk_norm and logit_softcap have no weights: without this check GPT-2's weights would
    load into a model that computes something else."""
    hf_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=named):
        init_from_hf(tiny_gpt(activation="gelu_tanh", **options), tmp_path)


# --- damaged files in a GPT-2 directory: one line, exit 2, nothing written ---------------

CONFIG = "a GPT-2 config object (config.json of GPT2LMHeadModel)"
LM_TOKENIZER = "an lm tokenizer object (written by lm convert direction=export)"
VOCAB = "GPT-2's vocab object (token string -> integer id)"
MERGES = "GPT-2's merges (a #version line, then one 'left right' token pair per line)"


@pytest.fixture
def exported(tmp_path):
    """A GPT-2 directory as lm convert direction=export writes it, BPE tokenizer: config.json,
    model.safetensors, lm_tokenizer.json, vocab.json, merges.txt."""
    tokenizer = BPETokenizer.train(TEXT, vocab_size=270)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2,
                          n_embd=32))
    export_hf_gpt2(model, tmp_path / "hf", tokenizer)
    return tmp_path / "hf"


@pytest.mark.parametrize("name, content, problem", [
    ("config.json", b"[1, 2]", f"holds a JSON array, not {CONFIG}"),
    ("config.json", b'"gpt2"', f"holds a JSON string, not {CONFIG}"),
    ("config.json", b"3", f"holds a JSON number, not {CONFIG}"),
    ("config.json", b"null", f"holds JSON null, not {CONFIG}"),
    ("config.json", b"", f"is empty (0 bytes): expected {CONFIG}"),
    ("config.json", b'{"n_embd": 32\xff}', (f"is not UTF-8 text (byte 0xff at offset 13): "
                                            f"expected {CONFIG}")),
    ("lm_tokenizer.json", b"[1]", f"holds a JSON array, not {LM_TOKENIZER}"),
    ("lm_tokenizer.json", b"\n", f"holds only whitespace: expected {LM_TOKENIZER}"),
    ("vocab.json", b'["a"]', f"holds a JSON array, not {VOCAB}"),
    ("vocab.json", b'{"a": "b"}', f"maps 'a' to \"b\": expected {VOCAB}"),
    ("vocab.json", b"\xfe\xff", f"is not UTF-8 text (byte 0xfe at offset 0): expected {VOCAB}"),
    ("merges.txt", b"", f"is empty (0 bytes): expected {MERGES}"),
    ("merges.txt", b"#version: 0.2\n\xe9 t\n", (f"is not UTF-8 text (byte 0xe9 at offset 14): "
                                                f"expected {MERGES}")),
    ("merges.txt", b"#version: 0.2\nabc\n", ("line 2 'abc' is not two tokens separated by one "
                                             f"space: expected {MERGES}")),
], ids=["config-array", "config-string", "config-number", "config-null", "config-empty",
        "config-not-utf8", "lm_tokenizer-array", "lm_tokenizer-blank", "vocab-array",
        "vocab-string-id", "vocab-not-utf8", "merges-empty", "merges-not-utf8", "merges-one-token"])
def test_cli_import_of_a_damaged_file_is_one_line_and_writes_nothing(exported, capsys, name,
                                                                    content, problem):
    (exported / name).write_bytes(content)
    ckpt = exported.parent / "x.ckpt"
    ckpt.write_bytes(b"an earlier checkpoint")  # lose nothing already written
    assert lm(["convert", "direction=import", f"hf_dir={exported}", f"ckpt={ckpt}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {exported / name} {problem}\n"
    assert ckpt.read_bytes() == b"an earlier checkpoint"


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
