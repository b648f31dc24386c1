"""Byte-level tokenizers (lm/tokenizers/byte.py, bpe.py, gpt2_files.py) against references: a hand-worked BPE example,
a naive recount-everything trainer, tiktoken, and GPT-2's known token ids."""

import json
import unicodedata
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.tokenizers import build_tokenizer, tokenizer_from_dict
from lm.tokenizers.bpe import GPT2_PATTERN, BPETokenizer, learn_merges, merge_ids, pretokenize
from lm.tokenizers.byte import ByteTokenizer
from lm.tokenizers.char import CharTokenizer
from lm.tokenizers.gpt2_files import bytes_to_unicode

LINES = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak. You're all resolved rather to die than to famish?",
    "ROMEO: But soft, what light through yonder window breaks? I'll go; we'd stay.",
    "Ça va très bien, merci — naïve café au lait, größer als Straße.",
    "Καλημέρα κόσμε. Привет, мир! 你好，世界。こんにちは 🙂👍🏽 ∑x² ≤ 10⁶",
    "    indented   code(x, y) = [1, 2, 3]\t# tabs\tand  spaces  \r\n",
    "Numbers 12345 and 3.14159, dates 2024-01-31, emails a.b@example.com",
]
# About 4 KB for training, and a different text for testing.
TRAIN_TEXT = "\n".join(f"{LINES[i % len(LINES)]} ({i})" for i in range(60)) + "\n"
HELD_OUT = "\n".join(f"[{i * 7}] {LINES[(i * 3) % len(LINES)][::-1]}" for i in range(40))

# Mostly ASCII, whitespace runs, contractions, specials and their fragments,
# accented letters, CJK, emoji (outside the BMP), and any valid code point (no
# lone surrogates: those are not Unicode text and cannot round-trip through UTF-8).
pieces = st.one_of(
    st.characters(min_codepoint=32, max_codepoint=126),
    st.sampled_from([" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "'s", "'ll", "'re"]),
    st.sampled_from(["<eos>", "<pad>", "<", "eos>", "<eo", "é", "ß", "中文", "😀", "🏽", "\u200d"]),
    st.characters(codec="utf-8"),
)
texts = st.lists(pieces, max_size=40).map("".join)
any_str = st.one_of(texts, st.text(st.characters()))  # lone surrogates too
# The `regex` module and tiktoken's Rust regex carry different Unicode versions: a code
# point unassigned in one (Python's unicodedata: category Cn) may be a letter in the
# other, and the two then split the text differently. Parity holds for assigned ones.
assigned_str = any_str.map(lambda s: "".join("?" if unicodedata.category(c) == "Cn" else c
                                            for c in s))


def naive_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Reference trainer (minbpe's RegexTokenizer.train): recount every pair of
    every chunk occurrence before each merge; most frequent pair, ties to the
    smallest pair of ids."""
    words = [list(chunk.encode("utf-8")) for chunk in regex.findall(GPT2_PATTERN, text)]
    merges = []
    for k in range(n_merges):
        counts = Counter(pair for word in words for pair in pairwise(word))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        words = [merge_ids(word, pair, 256 + k) for word in words]
        merges.append(pair)
    return merges


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TRAIN_TEXT, 256 + 300 + 2, special_tokens=("<eos>", "<pad>"))


@pytest.fixture(scope="module")
def byte():
    return ByteTokenizer()


# --- helpers ------------------------------------------------------------------------


def test_bytes_to_unicode_is_gpt2s():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    # Known GPT-2 token strings: space is "Ġ" (U+0120), newline "Ċ" (U+010A).
    assert (table[ord(" ")], table[ord("\n")], table[ord("!")], table[0]) == ("Ġ", "Ċ", "!", "Ā")
    assert table[0xFF] == "ÿ"


def test_pretokenize_gpt2_pattern():
    text = "Hello world's  end\n\n  x 123 ab!!  "
    chunks = pretokenize(text)
    assert chunks == [
        "Hello", " world", "'s", " ", " end", "\n\n ", " x", " 123", " ab", "!!", "  "
    ]
    assert "".join(chunks) == text


def test_merge_ids():
    assert merge_ids([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge_ids([1, 2, 1, 2, 3], (1, 2), 7) == [7, 7, 3]
    assert merge_ids([], (1, 2), 7) == []


# --- ByteTokenizer --------------------------------------------------------------------


def test_byte_ids_and_specials(byte):
    assert (byte.vocab_size, byte.eos_id, byte.pad_id, byte.unk_id) == (258, 256, 257, None)
    assert byte.encode("hé") == [104, 0xC3, 0xA9]
    assert byte.encode("a<eos>b<pad>") == [97, 256, 98, 257]
    assert byte.decode([97, 256, 98, 257]) == "a<eos>b<pad>"
    assert byte.encode("") == [] and byte.encode_array("").shape == (0,)
    assert byte.decode([]) == ""


@given(texts)
def test_byte_round_trip(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    np.testing.assert_array_equal(tok.encode_array(s), np.asarray(ids, dtype=np.int64))
    if "<" not in s:
        assert ids == list(s.encode("utf-8"))


def test_lone_surrogates_encode_as_replacement_character(bpe, byte):
    for tok in (bpe, byte):
        assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
        assert tok.encode("\ud83d\ude00") == tok.encode("😀")  # a pair written in halves
        assert tok.decode(tok.encode("x\udfff")) == "x\ufffd"
    assert byte.encode("\ud800") == list("\ufffd".encode("utf-8"))


def test_byte_invalid_utf8_is_replaced(byte):
    assert byte.decode([0xFF, ord("h"), 0xC3]) == "\ufffdh\ufffd"
    assert byte.decode(byte.encode("é")[:1]) == "\ufffd"
    with pytest.raises(ValueError, match="token id 258"):
        byte.decode([258])


# --- BPE by hand -----------------------------------------------------------------------


def test_hand_worked_example():
    """Wikipedia's "aaabdaaabac" (https://en.wikipedia.org/wiki/Byte_pair_encoding),
    byte-level: a=97, b=98, c=99, d=100. It is one pre-token (all letters).

    Pairs: (a,a)=4 (overlaps count: aaa has two), (a,b)=2, (b,d)=(d,a)=(b,a)=(a,c)=1.
    merge 0: (97, 97) -> 256 "aa"  => 256 97 98 100 256 97 98 97 99
    Pairs: (256,97)=2, (97,98)=2, the rest 1. Tie: the smaller pair (97, 98) wins.
    merge 1: (97, 98) -> 257 "ab"  => 256 257 100 256 257 97 99
    Pairs: (256,257)=2, the rest 1.
    merge 2: (256, 257) -> 258 "aaab" => 258 100 258 97 99   (Wikipedia's "XdXac")
    vocab_size 260 = 256 bytes + 3 merges + <eos> (id 259).
    """
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=260)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.vocab[256:] == [b"aa", b"ab", b"aaab"]
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.unk_id) == (260, 259, None, None)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    # New text: " aaab" is one chunk: 32 97 97 97 98 -> 32 256 97 98 -> 32 256 257 -> 32 258;
    # "ba" is never merged; "<eos>" is the special token.
    assert tok.encode("aaab aaab<eos>ba") == [258, 32, 258, 259, 98, 97]
    assert tok.decode([258, 32, 258, 259]) == "aaab aaab<eos>"
    assert naive_train("aaabdaaabac", 3) == tok.merges


def test_hand_worked_gpt2_files(tmp_path):
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=260)
    tok.save_gpt2(tmp_path)
    assert (tmp_path / "vocab.bpe").read_text() == "#version: 0.2\na a\na b\naa ab\n"
    encoder = json.loads((tmp_path / "encoder.json").read_text())
    assert len(encoder) == 260
    assert (encoder["aa"], encoder["aaab"], encoder["<eos>"], encoder["Ġ"]) == (256, 258, 259, 32)


# --- BPE training ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.text(st.sampled_from("aab c\n'é"), max_size=80), st.integers(0, 25))
def test_incremental_training_equals_naive_on_small_texts(text, n_merges):
    assert learn_merges(Counter(pretokenize(text)), n_merges) == naive_train(text, n_merges)


@settings(max_examples=10, deadline=None)
@given(st.text(st.characters(max_codepoint=0x3FF), min_size=200, max_size=600))
def test_incremental_training_equals_naive_on_random_texts(text):
    tok = BPETokenizer.train(text, 256 + 40 + 1)
    assert tok.merges == naive_train(text, 40)


def test_incremental_training_equals_naive_on_corpus(bpe):
    assert bpe.merges == naive_train(TRAIN_TEXT, 300)
    assert bpe.vocab_size == 558 and (bpe.eos_id, bpe.pad_id) == (556, 557)


def test_training_stops_when_out_of_pairs():
    tok = BPETokenizer.train("ab ab", 1000)
    assert tok.merges == [(97, 98), (32, 256)] and tok.vocab_size == 259


def test_training_ignores_literal_specials():
    assert BPETokenizer.train("<eos><eos><eos>", 300).merges == []
    assert BPETokenizer.train("<eos><eos>", 300, special_tokens=()).merges[0] == (101, 111)


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size=257 must be at least 256 \\+ 2"):
        BPETokenizer.train("abc", 257, special_tokens=("<eos>", "<pad>"))
    with pytest.raises(ValueError, match="distinct"):
        BPETokenizer.train("abc", 300, special_tokens=("<eos>", "<eos>"))
    with pytest.raises(ValueError, match="non-empty"):
        ByteTokenizer(special_tokens=("",))
    with pytest.raises(ValueError, match="merge 1 = \\(97, 300\\)"):
        BPETokenizer([(97, 98), (97, 300)])
    with pytest.raises(ValueError, match="permutation"):
        BPETokenizer([], byte_order=[0] * 256)


# --- BPE encoding, against tiktoken ----------------------------------------------------


@given(texts)
def test_bpe_round_trip(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


@given(assigned_str)
def test_bpe_equals_tiktoken(bpe, s):
    ids = bpe.encode(s)
    assert ids == bpe.to_tiktoken().encode(s, allowed_special="all")
    np.testing.assert_array_equal(bpe.encode_array(s), np.asarray(ids, dtype=np.int64))


def test_bpe_equals_tiktoken_on_text(bpe):
    enc = bpe.to_tiktoken()
    for text in (TRAIN_TEXT, HELD_OUT, TRAIN_TEXT + "<eos>" + HELD_OUT):
        ids = bpe.encode(text)
        assert ids == enc.encode(text, allowed_special="all")
        assert bpe.decode(ids) == text
    assert len(bpe.encode(TRAIN_TEXT)) < len(TRAIN_TEXT.encode("utf-8")) / 2  # it compresses


def test_bpe_special_tokens(bpe):
    n = 256 + 300
    assert bpe.special_tokens == {"<eos>": n, "<pad>": n + 1}
    assert bpe.encode("<eos>") == [n] and bpe.encode("<pad><eos>") == [n + 1, n]
    ids = bpe.encode("To be<eos>")
    assert ids[-1] == n and bpe.decode(ids) == "To be<eos>"
    assert n not in bpe.encode("<eo s>") and bpe.encode("") == []
    assert bpe.encode_array("").shape == (0,) and bpe.decode([]) == ""


@given(st.lists(st.integers(0, 557), max_size=30))
def test_bpe_decode_any_ids_like_tiktoken(bpe, ids):
    # tiktoken also decodes with errors="replace": a reference for U+FFFD handling.
    assert bpe.decode(ids) == bpe.to_tiktoken().decode(ids)


def test_bpe_invalid_utf8_is_replaced(bpe):
    assert bpe.decode([0xE4, 0xBD]) == "\ufffd"  # first two bytes of "你"
    assert bpe.decode([ord("x"), 0xFF]) == "x\ufffd"
    with pytest.raises(ValueError, match="token id 558"):
        bpe.decode([558])


# --- serialisation ------------------------------------------------------------------------


def test_dict_and_json_round_trip(bpe, tmp_path):
    d = json.loads(json.dumps(bpe.to_dict()))
    assert d["type"] == "bpe" and d["special_tokens"] == ["<eos>", "<pad>"]
    again = BPETokenizer.from_dict(d)
    assert again.to_dict() == bpe.to_dict()
    assert again.encode(HELD_OUT) == bpe.encode(HELD_OUT)
    bpe.save(tmp_path / "tok.json")
    assert BPETokenizer.load(tmp_path / "tok.json").to_dict() == bpe.to_dict()
    with pytest.raises(ValueError, match="type='char' must be 'bpe'"):
        BPETokenizer.from_dict({**d, "type": "char"})


def test_gpt2_files_round_trip(bpe, tmp_path):
    bpe.save_gpt2(tmp_path / "gpt2")
    again = BPETokenizer.load_gpt2(tmp_path / "gpt2")
    assert again.to_dict() == bpe.to_dict()
    assert again.encode(HELD_OUT) == bpe.encode(HELD_OUT)
    hf = tmp_path / "hf"  # Hugging Face's names for the same two files
    hf.mkdir()
    (hf / "vocab.json").write_bytes((tmp_path / "gpt2" / "encoder.json").read_bytes())
    (hf / "merges.txt").write_bytes((tmp_path / "gpt2" / "vocab.bpe").read_bytes())
    assert BPETokenizer.load_gpt2(hf).to_dict() == bpe.to_dict()
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load_gpt2(tmp_path / "missing")


def gpt2_byte_strings() -> list[str]:
    """The 256 byte tokens in GPT-2's id order (printable bytes first), as in
    openai/gpt-2 encoder.py `bytes_to_unicode` before it is made a dict."""
    table = bytes_to_unicode()
    printable = [b for b in range(256) if table[b] == chr(b)]
    return [table[b] for b in printable + [b for b in range(256) if table[b] != chr(b)]]


def test_load_gpt2_layout_gives_gpt2_ids(tmp_path):
    """Files in GPT-2's id layout: the byte tokens get GPT-2's ids."""
    strings = gpt2_byte_strings()
    merges = ["Ġ t", "h e", "Ġt he"]
    encoder = {s: i for i, s in enumerate(strings + ["Ġt", "he", "Ġthe", "<|endoftext|>"])}
    (tmp_path / "encoder.json").write_text(json.dumps(encoder))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = BPETokenizer.load_gpt2(tmp_path)
    # GPT-2's ids: "!" 0, "a" 64, "\n" 198, " " 220; <|endoftext|> is its eos.
    assert tok.encode("!a\n ") == [0, 64, 198, 220]
    assert tok.encode(" the<|endoftext|>") == [258, 259] and tok.eos_id == 259
    text = "the then\n the<|endoftext|>é 😀"
    assert tok.encode(text) == tok.to_tiktoken().encode(text, allowed_special="all")
    assert tok.decode(tok.encode(text)) == text


def test_load_gpt2_rejects_other_layouts(tmp_path):
    strings = gpt2_byte_strings()
    encoder = {s: i for i, s in enumerate(strings + ["he", "Ġt"])}
    (tmp_path / "encoder.json").write_text(json.dumps(encoder))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nh e\n")
    with pytest.raises(ValueError, match="merge 0 'Ġ t' must make id 256, got 257"):
        BPETokenizer.load_gpt2(tmp_path)


# --- the registry -------------------------------------------------------------------------


def test_registry_dispatch(bpe, byte):
    for tok in (bpe, byte):
        again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
        assert type(again) is type(tok) and again.to_dict() == tok.to_dict()
    assert isinstance(build_tokenizer("byte", TRAIN_TEXT), ByteTokenizer)
    assert isinstance(build_tokenizer("char", TRAIN_TEXT), CharTokenizer)
    built = build_tokenizer("bpe", TRAIN_TEXT, vocab_size=300)
    assert built.vocab_size == 300 and built.merges == bpe.merges[:43]
    with pytest.raises(ValueError, match="'char' takes no option 'vocab_size'"):
        build_tokenizer("char", TRAIN_TEXT, vocab_size=300)


def test_bench_tokenizers_runs_on_a_small_text():
    from lm.bench.tokenizer import bench_tokenizers

    r = bench_tokenizers(TRAIN_TEXT, vocab_size=300, readable_mb=0.002)
    assert r["vocab_size"] == 300 and r["readable_equals_tiktoken"]
    assert r["n_tokens"] == len(build_tokenizer("bpe", TRAIN_TEXT, vocab_size=300).encode(TRAIN_TEXT))
