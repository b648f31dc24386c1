import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lm.tokenizers.char import (
    SPECIAL_TOKENS,
    TOKENIZERS,
    CharTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)

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
