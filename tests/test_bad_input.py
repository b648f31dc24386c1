"""Bad input to the command-line tools: one ``error:`` line on stderr, exit code 2, no
traceback; or, for input that can still be used, one ``warning:`` line and exit code 0.

Checkpoints are built by hand (``lm.checkpoint.checkpoint_dict``: what ``load_checkpoint``
reads), random weights, a char tokenizer; nothing trains.
"""

from __future__ import annotations

import pytest
import torch

from lm.checkpoint import CheckpointError, checkpoint_dict, load_checkpoint
from lm.cli import main as lm
from lm.cli import settings
from lm.commands import generate
from lm.model import GPT, GPTConfig
from lm.sampling import generate as generate_ids
from lm.tokenizers.char import CharTokenizer

TEXT = "ROMEO: but soft, what light\nJULIET: ay me\n"
NAN_KEY = "transformer.h.0.attn.c_attn.weight"


def tiny_model(vocab_size: int, **overrides) -> GPT:
    torch.manual_seed(0)
    sizes = {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    return GPT(GPTConfig(vocab_size=vocab_size, **{**sizes, **overrides})).eval()


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture
def ckpt(tmp_path, tokenizer):
    """A good checkpoint."""
    path = tmp_path / "good.ckpt"
    torch.save(checkpoint_dict(tiny_model(tokenizer.vocab_size), tokenizer), path)
    return path


def bad_checkpoint(tmp_path, tokenizer, case: str):
    """Path of a checkpoint file that is wrong in the way ``case`` names."""
    good = checkpoint_dict(tiny_model(tokenizer.vocab_size), tokenizer)
    path = tmp_path / f"{case}.ckpt"
    if case == "empty":
        path.write_bytes(b"")
        return path
    objects = {
        "list": [1, 2],
        "int": 7,
        "no_keys": {"state_dict": good["state_dict"]},
        "n_embd": {**good, "model_config": {**good["model_config"], "n_embd": 32}},
        "n_layer": {**good, "model_config": {**good["model_config"], "n_layer": 3}},
        "bad_config": {**good, "model_config": {**good["model_config"], "n_head": 3}},
        "vocab": checkpoint_dict(tiny_model(tokenizer.vocab_size - 4), tokenizer),
        "nan": {**good, "state_dict": {**good["state_dict"], f"model.{NAN_KEY}": torch.full(
            good["state_dict"][f"model.{NAN_KEY}"].shape, float("nan"))}},
    }
    torch.save(objects[case], path)
    return path


CASES = {  # case -> what the error line says
    "empty": "is empty (0 bytes",
    "list": "holds a Python list, not a checkpoint: expected a dict with state_dict",
    "int": "holds a Python int, not a checkpoint",
    "no_keys": "(no model_config, tokenizer; expected state_dict, model_config, tokenizer)",
    "n_embd": "its weights do not fit its model_config (n_layer=2, n_head=2, n_embd=32",
    "n_layer": "its weights do not fit its model_config (n_layer=3, n_head=2, n_embd=16, "
               "vocab_size=31, block_size=16): missing: transformer.h.2.",
    "bad_config": "model_config is not a valid model config: model.n_embd=16 is not divisible",
    "vocab": "its tokenizer has 31 tokens but model_config vocab_size=27",
    "nan": f"has NaN/Inf weights in 1 tensor(s) ({NAN_KEY})",
}

TOOLS = {
    "generate": lambda path, tmp: lm(["generate", f"ckpt={path}", "max_new_tokens=3"]),
    "evaluate": lambda path, tmp: lm(["evaluate", f"ckpt={path}"]),
    "numpy_gpt": lambda path, tmp: lm(["generate", f"ckpt={path}", "max_new_tokens=3",
                                       "strategy=greedy", "backend=numpy"]),
    "convert": lambda path, tmp: lm(["convert", "direction=export", f"ckpt={path}",
                                     f"hf_dir={tmp / 'hf'}"]),
}


def one_line(err: str, prefix: str = "error: ") -> str:
    """The single stderr line (asserts there is exactly one, with ``prefix``)."""
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert "Traceback" not in err
    return err.rstrip("\n")


# --- A. files ------------------------------------------------------------------------


@pytest.mark.parametrize("case, tool", [  # export keeps NaN weights with a warning (below)
    (case, tool) for case in CASES for tool in TOOLS if (case, tool) != ("nan", "convert")])
def test_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path, tokenizer, capsys, tool, case):
    path = bad_checkpoint(tmp_path, tokenizer, case)
    capsys.readouterr()
    assert TOOLS[tool](path, tmp_path) == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert f"ckpt={path}" in line and CASES[case] in line, line
    assert out == "" and not (tmp_path / "hf").exists()


def test_nan_weights_load_with_one_warning_line(tmp_path, tokenizer, capsys):
    path = bad_checkpoint(tmp_path, tokenizer, "nan")
    model, _, _ = load_checkpoint(path)  # default: load, warn
    assert torch.isnan(model.state_dict()[NAN_KEY]).all()
    line = one_line(capsys.readouterr().err, "warning: ")
    assert f"ckpt={path} has NaN/Inf weights in 1 tensor(s) ({NAN_KEY}); loaded" in line
    with pytest.raises(CheckpointError, match="its output would be garbage"):
        load_checkpoint(path, nonfinite="error")
    assert TOOLS["convert"](path, tmp_path) == 0  # exported as is
    out, err = capsys.readouterr()
    assert "has NaN/Inf weights" in one_line(err, "warning: ") and out.startswith("wrote")


def test_a_good_checkpoint_still_loads(ckpt, tokenizer, capsys):
    model, loaded, run_config = load_checkpoint(ckpt)
    assert loaded.to_dict() == tokenizer.to_dict() and run_config == {}
    assert not model.training and capsys.readouterr().err == ""


# --- B. generation: values, unused keys ----------------------------------------------------


@pytest.mark.parametrize("arg, message", [
    ("temperature=nan", "temperature=nan is invalid: must be a finite number >= 0"),
    ("temperature=inf", "temperature=inf is invalid: must be a finite number >= 0"),
    ("temperature=-1", "temperature=-1.0 is invalid: must be a finite number >= 0"),
    ("top_k=0", "top_k=0 is invalid: must be an integer >= 1, or null"),
    ("top_p=1.5", "top_p=1.5 is invalid: must be in (0, 1]"),  # strategy=top_k: still checked
    ("top_p=0", "top_p=0.0 is invalid: must be in (0, 1]"),
    ("top_p=nan", "top_p=nan is invalid: must be in (0, 1]"),
    ("beam_width=0", "beam_width=0 is invalid: must be an integer >= 1"),
    ("length_penalty=nan", "length_penalty=nan is invalid: must be a finite number >= 0"),
    ("length_penalty=-1", "length_penalty=-1.0 is invalid: must be a finite number >= 0"),
    ("max_new_tokens=-1", "max_new_tokens=-1 is invalid: must be an integer >= 0"),
    ("num_samples=0", "num_samples=0 is invalid: must be an integer >= 1"),
    ("seed=99999999999999999999999", "seed=99999999999999999999999 is invalid"),
    ("device=tpu", "device='tpu' is invalid: must be cpu or cuda"),
])
def test_b_out_of_range_values_are_one_line_and_exit_2(ckpt, capsys, arg, message):
    assert lm(["generate", f"ckpt={ckpt}", "max_new_tokens=3", arg]) == 2
    out, err = capsys.readouterr()
    assert message in one_line(err) and out == ""


@pytest.mark.parametrize("args, message", [
    (["top_p=0.9"], "top_p=0.9 is unused with strategy=top_k; it is used by strategy=top_p"),
    (["strategy=top_p", "top_k=5"],
     "top_k=5 is unused with strategy=top_p; it is used by strategy=top_k"),
    (["beam_width=3"], "beam_width=3 is unused with strategy=top_k; it is used by strategy=beam"),
    (["strategy=greedy", "temperature=0.5"],
     "temperature=0.5 is unused with strategy=greedy; it is used by strategy=sample"),
])
def test_b_a_key_the_strategy_does_not_use_is_one_warning_line(ckpt, capsys, args, message):
    assert lm(["generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=3", *args]) == 0
    out, err = capsys.readouterr()
    assert one_line(err, "warning: ").startswith(f"warning: {message}")
    assert out.startswith("ROMEO:")


def test_b_keys_the_strategy_uses_give_no_warning(ckpt, capsys):
    argv = [f"ckpt={ckpt}", "max_new_tokens=3", "strategy=top_p", "top_p=0.9", "temperature=1"]
    assert lm(["generate", *argv]) == 0
    assert capsys.readouterr().err == ""


# --- B. generation: prompts ----------------------------------------------------------


def test_b_an_empty_prompt_conditions_on_eos_but_does_not_print_it(ckpt, tokenizer, capsys):
    assert lm(["generate", f"ckpt={ckpt}", "prompt=", "max_new_tokens=6", "strategy=greedy"]) == 0
    model, _, _ = load_checkpoint(ckpt)
    new = generate_ids(model, torch.tensor([[tokenizer.eos_id]]), 6, temperature=0)[0, 1:]
    expected = tokenizer.decode(new.tolist())
    assert capsys.readouterr().out == expected + "\n"
    cfg = settings("generate", f"ckpt={ckpt}", "prompt=", "max_new_tokens=6", "strategy=greedy")
    assert generate.sample_texts(cfg) == [expected]
    cfg.stop = expected[2:4]  # cut inside the generated part; still no <eos> in front
    assert generate.sample_texts(cfg) == [expected[: expected.find(cfg.stop)]]


def test_b_unseen_prompt_characters_are_one_warning_line(ckpt, capsys):
    assert lm(["generate", f"ckpt={ckpt}", "prompt=éRO€MEO", "max_new_tokens=2"]) == 0
    out, err = capsys.readouterr()
    assert one_line(err, "warning: ") == ("warning: the tokenizer has no token for 2 prompt "
                                          "characters ('é', '€'); they are read as <unk>")
    assert out.startswith("<unk>RO<unk>MEO")


def test_b_a_prompt_with_no_known_character_is_one_line_and_exit_2(ckpt, tmp_path, capsys):
    assert lm(["generate", f"ckpt={ckpt}", "prompt=é€é", "max_new_tokens=2"]) == 2
    out, err = capsys.readouterr()
    assert "the prompt has no character the tokenizer knows ('é', '€')" in one_line(err)
    assert out == ""


def test_b_a_prompt_file_that_is_not_utf8_is_one_line_and_exit_2(ckpt, tmp_path, capsys):
    path = tmp_path / "prompt.txt"
    path.write_bytes(b"ROMEO\xff\xfe")
    assert lm(["generate", f"ckpt={ckpt}", f"prompt_file={path}", "max_new_tokens=2"]) == 2
    assert f"prompt_file={path} is not UTF-8 text" in one_line(capsys.readouterr().err)
