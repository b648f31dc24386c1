"""GPT-2's tokenizer files (lm/tokenizers/gpt2_files.py) when they are damaged: one
``ValueError`` line naming the file and what it should hold, never a traceback, under
GPT-2's names and Hugging Face's alike (tests/interop/test_convert.py: the same lines
from ``lm convert``)."""

import json

import pytest

from lm.errors import ConfigError
from lm.tokenizers import BPETokenizer
from lm.tokenizers.gpt2_files import FileContentError, read_gpt2_files

VOCAB = "GPT-2's vocab object (token string -> integer id)"
MERGES = "GPT-2's merges (a #version line, then one 'left right' token pair per line)"
NAMES = {"gpt2": ("encoder.json", "vocab.bpe"), "hf": ("vocab.json", "merges.txt")}


@pytest.fixture(params=NAMES, ids=list(NAMES))
def files(request, tmp_path):
    """(vocab path, merges path) of a good tokenizer, under GPT-2's or HF's names."""
    BPETokenizer.train("aaabdaaabac", vocab_size=260).save_gpt2(tmp_path)
    vocab, merges = (tmp_path / name for name in NAMES[request.param])
    if request.param == "hf":
        (tmp_path / "encoder.json").replace(vocab)
        (tmp_path / "vocab.bpe").replace(merges)
    read_gpt2_files(tmp_path)  # good as written
    return vocab, merges


@pytest.mark.parametrize("which, content, problem", [
    ("vocab", b"{'a': 1}", ("is not valid JSON (Expecting property name enclosed in double "
                            f"quotes: line 1 column 2 (char 1)): expected {VOCAB}")),
    ("vocab", b"null", f"holds JSON null, not {VOCAB}"),
    ("vocab", b'{"a": 1.5}', f"maps 'a' to 1.5: expected {VOCAB}"),
    ("vocab", b'{"a": true}', f"maps 'a' to true: expected {VOCAB}"),
    ("merges", b" \n", f"holds only whitespace: expected {MERGES}"),
    ("merges", b"#version: 0.2\na a\na b c\n", ("line 3 'a b c' is not two tokens separated by "
                                                f"one space: expected {MERGES}")),
    ("merges", b"aa\n", f"line 1 'aa' is not two tokens separated by one space: expected {MERGES}"),
], ids=["vocab-not-json", "vocab-null", "vocab-float-id", "vocab-bool-id", "merges-blank",
        "merges-three-tokens", "merges-no-header"])
def test_a_damaged_file_is_one_line_naming_it(files, which, content, problem):
    path = files[0] if which == "vocab" else files[1]
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        BPETokenizer.load_gpt2(path.parent)
    assert isinstance(err.value, FileContentError)
    assert str(err.value) == f"{path} {problem}"


def test_files_out_of_gpt2s_layout_are_one_line_naming_both(files):
    vocab_path, merges_path = files
    vocab = json.loads(vocab_path.read_text())
    merges_path.write_text("#version: 0.2\na a\nqq b\n")  # "qqb" makes id 257; "qq" is no token
    vocab_path.write_text(json.dumps({**{k: v for k, v in vocab.items() if v != 257}, "qqb": 257}))
    with pytest.raises(FileContentError) as err:
        read_gpt2_files(vocab_path.parent)
    assert str(err.value) == (f"{vocab_path} + {merges_path.name} are not GPT-2's tokenizer: "
                              f"a merge names the token 'qq', which {vocab_path.name} lacks")
    vocab_path.write_text(json.dumps({k: v for k, v in vocab.items() if k != "a"}))
    with pytest.raises(FileContentError, match=rf"^{vocab_path} \+ {merges_path.name} are not "
                                               r"GPT-2's tokenizer: byte 97 \('a'\) must have an id"):
        read_gpt2_files(vocab_path.parent)


def test_lm_train_on_a_damaged_file_is_one_config_error(make_cfg, corpus, tmp_path):
    """data.tokenizer.path: a ``ConfigError``, which ``lm train`` prints as one ``error:``
    line with exit code 2 (as every command prints a ``ValueError``)."""
    from lm.training.run import run

    tokenizer_dir = tmp_path / "tokenizer"
    BPETokenizer.train(corpus.read_text(), 300, ("<|endoftext|>",)).save_gpt2(tokenizer_dir)
    (tokenizer_dir / "encoder.json").write_text('{"a": [1]}')
    cfg = make_cfg("data/tokenizer=gpt2_files", f"data.tokenizer.path={tokenizer_dir}")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert str(err.value) == f"{tokenizer_dir / 'encoder.json'} maps 'a' to [1]: expected {VOCAB}"
