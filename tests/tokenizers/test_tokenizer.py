import inspect
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lm.tokenizers import (
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)
from lm.tokenizers.bpe import GPT2_PATTERN
from lm.tokenizers.char import SPECIAL_TOKENS, CharTokenizer

# Mostly ASCII with some accented letters, CJK and an emoji (outside the BMP).
chars_mixed = st.one_of(
    st.characters(min_codepoint=32, max_codepoint=126),
    st.sampled_from("éßñ中文\n\t😀"),
    st.characters(),
)


def nanogpt_encode(train_text: str, s: str) -> list[int]:
    """Reference: nanoGPT shakespeare_char `prepare.py` (stoi over sorted chars),
    shifted past the 3 special tokens, with <unk> for unseen characters."""
    chars = sorted(set(train_text))
    stoi = {ch: i + len(SPECIAL_TOKENS) for i, ch in enumerate(chars)}
    return [stoi.get(ch, 1) for ch in s]


@given(st.data())
def test_round_trip_over_vocab(data):
    train = data.draw(st.text(chars_mixed, min_size=1))
    tok = CharTokenizer.from_text(train)
    s = data.draw(st.text(st.sampled_from(sorted(set(train)))))
    assert tok.decode(tok.encode(s)) == s


@given(st.text(chars_mixed), st.text(chars_mixed))
def test_encode_matches_reference_and_array(train, s):
    tok = CharTokenizer.from_text(train)
    ids = tok.encode(s)
    assert ids == nanogpt_encode(train, s)
    arr = tok.encode_array(s)
    assert arr.shape == (len(s),)
    np.testing.assert_array_equal(arr, np.asarray(ids, dtype=np.int64))


def test_unseen_chars_become_unk():
    tok = CharTokenizer.from_text("abc")
    assert tok.encode("axb€") == [3, 1, 4, 1]
    assert tok.encode_array("axb€").tolist() == [3, 1, 4, 1]
    assert tok.decode(tok.encode("axb")) == "a<unk>b"


def test_special_ids_and_vocab():
    tok = CharTokenizer.from_text("hello world")
    assert (tok.pad_id, tok.unk_id, tok.eos_id) == (0, 1, 2)
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 3 + 8
    assert tok.encode(" d") == [3, 4]
    assert tok.decode([0, 3, 1, 2, 0]) == " <unk><eos>"


def test_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="token id 5"):
        tok.decode([3, 5])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([-1])


def test_dict_round_trip():
    tok = CharTokenizer.from_text("To be, or not to be: é中😀\n")
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["type"] == "char" and d["special_tokens"] == ["<pad>", "<unk>", "<eos>"]
    again = tokenizer_from_dict(d)
    assert isinstance(again, CharTokenizer)
    assert again.to_dict() == tok.to_dict()
    s = "not to be? é😀"
    assert again.encode(s) == tok.encode(s)


def test_from_dict_errors():
    with pytest.raises(ValueError, match=r"type='nope' is not one of: char, byte, bpe"):
        tokenizer_from_dict({"type": "nope", "chars": []})
    with pytest.raises(ValueError, match="special_tokens"):
        tokenizer_from_dict({"type": "char", "chars": ["a"], "special_tokens": ["<pad>"]})


def test_unknown_tokenizer_name():
    assert set(TOKENIZERS) == {"char", "byte", "bpe"}
    with pytest.raises(ValueError, match=r"^data.tokenizer='x' is not one of: char, byte, bpe$"):
        build_tokenizer("x", "abc")
    assert isinstance(build_tokenizer("char", "abc"), CharTokenizer)


def test_constructor_rejects_bad_chars():
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["a", "bc"])
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(["a", "a"])


# --- the Tokenizer interface and the registry -------------------------------------------

# The Protocol's members: what every caller may rely on (pinned, so a member cannot be
# dropped from the interface unnoticed).
MEMBERS = {
    "from_text", "from_dict", "to_dict", "vocab_size", "special_tokens", "eos_id", "pad_id",
    "unk_id", "encode", "encode_array", "decode",
}
PROPERTIES = {"vocab_size", "special_tokens", "eos_id", "pad_id", "unk_id"}
TEXT = "To be, or not to be: that is the question.\n<eos> é中😀\t<pad>"
OPTIONS = {"char": {}, "byte": {}, "bpe": {"vocab_size": 300}}  # small, fast to train


def test_protocol_members():
    assert {name for name in vars(Tokenizer) if not name.startswith("_")} == MEMBERS


@pytest.mark.parametrize("missing", sorted(MEMBERS))
def test_a_class_missing_a_member_is_not_a_tokenizer(missing):
    stub = type("Stub", (), {m: (lambda *args: 0) for m in MEMBERS - {missing}})
    assert not isinstance(stub(), Tokenizer)
    assert isinstance(type("Full", (), {m: (lambda *args: 0) for m in MEMBERS})(), Tokenizer)


def test_registry_maps_each_name_to_its_class():
    assert TOKENIZERS == {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer}
    assert list(OPTIONS) == list(TOKENIZERS)  # every registered tokenizer is tested below
    for name, cls in TOKENIZERS.items():
        tok = build_tokenizer(name, TEXT, **OPTIONS[name])
        assert type(tok) is cls and tok.to_dict()["type"] == name


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_tokenizer_satisfies_the_protocol(name):
    tok = build_tokenizer(name, TEXT, **OPTIONS[name])
    assert isinstance(tok, Tokenizer)
    for member in MEMBERS - PROPERTIES:
        assert callable(getattr(tok, member)), member
    for member in PROPERTIES:
        assert not callable(getattr(tok, member)), member
    inspect.signature(tok.encode).bind(TEXT)
    inspect.signature(tok.decode).bind([0])
    inspect.signature(type(tok).from_text).bind(TEXT)
    inspect.signature(type(tok).from_dict).bind({})
    assert isinstance(tok.vocab_size, int)
    specials = dict(tok.special_tokens)
    assert "<eos>" in specials and tok.eos_id == specials["<eos>"]
    assert tok.pad_id == specials.get("<pad>") and tok.unk_id == specials.get("<unk>")
    assert all(0 <= i < tok.vocab_size for i in specials.values())


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_tokenizer_round_trips(name):
    tok = build_tokenizer(name, TEXT, **OPTIONS[name])
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert all(0 <= i < tok.vocab_size for i in ids)
    np.testing.assert_array_equal(tok.encode_array(TEXT), np.asarray(ids, dtype=np.int64))
    assert tok.encode_array(TEXT).dtype == np.int64
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert type(again) is type(tok) and again.to_dict() == tok.to_dict()
    assert again.encode(TEXT) == ids and again.decode(ids) == TEXT
    assert type(tok).from_dict(tok.to_dict()).to_dict() == tok.to_dict()
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size} is outside"):
        tok.decode([tok.vocab_size])


# The dicts checkpoints and token caches hold, written out: old files must keep loading
# and new ones must be written in the same format.
STORED = [
    {"type": "char", "chars": ["\n", " ", "a", "é"], "special_tokens": ["<pad>", "<unk>", "<eos>"]},
    {"type": "byte", "special_tokens": ["<eos>", "<pad>"]},
    {"type": "bpe", "pattern": GPT2_PATTERN, "byte_order": list(range(256)),
     "merges": [[97, 98], [256, 99]], "special_tokens": ["<eos>"]},
]


@pytest.mark.parametrize("d", STORED, ids=[d["type"] for d in STORED])
def test_stored_dict_format_is_unchanged(d):
    tok = tokenizer_from_dict(d)
    assert tok.to_dict() == d
    assert tokenizer_from_dict(json.loads(json.dumps(d))).to_dict() == d
    assert tok.decode(tok.encode("a\né")) == "a\né"
    if d["type"] == "bpe":
        assert tok.encode("abc") == [257] and tok.eos_id == 258
