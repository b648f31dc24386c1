"""Byte-level tokenization: the rules byte and BPE tokenizers share, and `ByteTokenizer`.

A byte-level tokenizer works on the UTF-8 bytes of the text, so any string can be
encoded and nothing is unknown: every ordinary token is a byte string (ids 0-255
the 256 single bytes), and special tokens (`<eos>`, ...) come after the vocabulary.
`ByteLevel` holds what they share; `ByteTokenizer` (here) and `BPETokenizer`
(`bpe.py`) build on it.

Rules shared by both:
- Special tokens written literally in the text (e.g. "<eos>") encode to their
  special ids, as tiktoken's `encode(text, allowed_special="all")` does; the
  longest special wins where two start at the same place. Decoding a special id
  gives its literal string back, so `decode(encode(s)) == s` for every string.
- `decode` joins the tokens' bytes and decodes them as UTF-8 with
  `errors="replace"`: a sequence of ids that cuts a character in half (e.g. one
  sampled from a model) gives U+FFFD, never an exception.
- Lone surrogates (in a str, but not valid Unicode, so not encodable as UTF-8)
  are encoded as U+FFFD, as tiktoken does; see `to_valid_unicode`.
"""

import re
from collections.abc import Iterable, Sequence

import numpy as np

from lm.tokenizers.base import lookup_ids

EOS_NAMES = ("<eos>", "<|endoftext|>")  # a special token with one of these names is eos_id
N_BYTES = 256
_SURROGATE = re.compile("[\ud800-\udfff]")


def to_valid_unicode(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (a surrogate pair written
    as two code points becomes its character), as tiktoken's `encode` does; valid
    text comes back unchanged."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """`special_tokens` as a list. Raises ValueError unless they are distinct non-empty str."""
    specials = list(special_tokens)
    if not all(isinstance(s, str) and s for s in specials):
        raise ValueError(f"special_tokens={specials!r} must be non-empty strings")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens={specials!r} must be distinct")
    return specials


def split_on_specials(text: str, specials: Iterable[str]) -> list[str]:
    """`text` cut around literal special tokens: even indices are ordinary text
    (possibly ""), odd indices are special tokens. With no specials: `[text]`."""
    specials = sorted(specials, key=len, reverse=True)  # longest first: "<eos>" before "<e"
    if not specials:
        return [text]
    return re.split("(" + "|".join(map(re.escape, specials)) + ")", text)


class ByteLevel:
    """What byte-level tokenizers share: from ``_id_to_bytes`` (id -> bytes, specials
    last) and ``special_tokens`` (string -> id) come the vocabulary size, the special
    ids and the one byte-level `decode`."""

    _id_to_bytes: list[bytes]
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    @property
    def eos_id(self) -> int | None:
        return next((self.special_tokens[s] for s in EOS_NAMES if s in self.special_tokens), None)

    @property
    def pad_id(self) -> int | None:
        return self.special_tokens.get("<pad>")

    @property
    def unk_id(self) -> int | None:
        return self.special_tokens.get("<unk>")  # never produced by encode: bytes cover all text

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (list, 1-D array or tensor): their bytes joined, decoded as
        UTF-8 with U+FFFD for invalid sequences.

        Raises:
            ValueError: an id outside [0, vocab_size).
        """
        return b"".join(lookup_ids(ids, self._id_to_bytes)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (not always whole UTF-8: a BPE token may end inside a
        character). Raises ValueError for an id outside [0, vocab_size)."""
        return lookup_ids([token_id], self._id_to_bytes)[0]


class ByteTokenizer(ByteLevel):
    """One token per UTF-8 byte: ids 0-255 are the bytes, specials follow.

    With the default specials `<eos>` = 256 and `<pad>` = 257 (vocab_size 258).
    Nothing is learned: `from_text` ignores its text. `unk_id` is None unless
    `<unk>` is one of the specials. Special tokens and decoding follow the
    module's rules.

    Raises:
        ValueError: `special_tokens` are not distinct non-empty strings.
    """

    def __init__(self, special_tokens: Sequence[str] = ("<eos>", "<pad>")):
        specials = check_special_tokens(special_tokens)
        self.special_tokens = {s: N_BYTES + k for k, s in enumerate(specials)}
        self._id_to_bytes = [bytes([b]) for b in range(N_BYTES)]
        self._id_to_bytes += [s.encode("utf-8") for s in specials]

    @classmethod
    def from_text(cls, text: str) -> "ByteTokenizer":
        """The byte tokenizer with the default specials; `text` is not needed."""
        return cls()

    @classmethod
    def from_dict(cls, d: dict) -> "ByteTokenizer":
        """Inverse of `to_dict`."""
        return cls(d["special_tokens"])

    def to_dict(self) -> dict:
        """JSON-able description: `{"type": "byte", "special_tokens": [...]}`."""
        return {"type": "byte", "special_tokens": list(self.special_tokens)}

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of `text` as ids, with literal special tokens as their ids."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as an int64 array of shape (n_tokens,), vectorised."""
        pieces = []
        text = to_valid_unicode(text)
        for k, piece in enumerate(split_on_specials(text, self.special_tokens)):
            if k % 2:
                pieces.append(np.array([self.special_tokens[piece]], dtype=np.int64))
            else:
                pieces.append(np.frombuffer(piece.encode("utf-8"), dtype=np.uint8))
        return np.concatenate(pieces).astype(np.int64)
