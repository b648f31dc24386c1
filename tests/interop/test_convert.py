"""``lm convert`` (lm/commands/convert.py) end to end: round trips through the command
line, and every error one line on stderr, exit code 2, nothing written."""

import json

import pytest
import torch

from lm.checkpoint import checkpoint_dict, load_checkpoint
from lm.cli import main as lm
from lm.interop.hf import save_hf_tokenizer
from lm.model import GPT, GPTConfig
from lm.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer
from tests.interop.conftest import HOLDS, TEXT, hf_logits, hf_model, our_logits

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


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


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert lm(["convert", "direction=import", f"hf_dir={tmp_path / 'nope'}",
               f"ckpt={tmp_path / 'x.ckpt'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "is not a directory" in err and err.count("\n") == 1
    assert lm(["convert", "direction=frobnicate", "hf_dir=a", "ckpt=b"]) == 2
    assert "direction=frobnicate is invalid: must be import" in capsys.readouterr().err
    assert lm(["convert", "direction=import", "hf_dir=a"]) == 2
    assert "ckpt is required" in capsys.readouterr().err


@pytest.mark.parametrize("options, named", [
    ({"pos_encoding": "rope", "norm": "rmsnorm"}, "model.pos_encoding=rope, model.norm=rmsnorm"),
    ({"norm_position": "post"}, "model.norm_position=post"),  # GPT-1's blocks, no ln_f
    ({"mlp": False}, "model.mlp=false"),  # attention-only blocks: GPT-2's always have an MLP
], ids=["rope_rmsnorm", "post_norm", "attn_only"])
def test_cli_export_of_a_non_gpt2_model_is_one_line_and_exit_2(tmp_path, capsys, options, named):
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


# --- damaged files in a GPT-2 directory: one line, exit 2, nothing written ---------------

CONFIG = "a GPT-2 config object (config.json of GPT2LMHeadModel)"
LM_TOKENIZER = "an lm tokenizer object (written by lm convert direction=export)"
VOCAB = "GPT-2's vocab object (token string -> integer id)"
MERGES = "GPT-2's merges (a #version line, then one 'left right' token pair per line)"


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

