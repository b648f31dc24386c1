"""Character-level tokenizer, as nanoGPT's shakespeare_char: one token per character.

Specials `<pad>` = 0, `<unk>` = 1, `<eos>` = 2 come first, then the characters of
the training text. Implements `lm.tokenizers.base.Tokenizer`.
"""

from collections.abc import Iterable, Sequence

import numpy as np

from lm.tokenizers.base import lookup_ids

SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


class CharTokenizer:
    """One token per character, as in nanoGPT's shakespeare_char `prepare.py`.

    The vocabulary is the special tokens, then the distinct characters of the
    training text in sorted (code point) order. Characters not in the vocabulary
    encode to `<unk>`; `decode` maps `<pad>` to "" and the other specials to their
    token strings.

    Raises:
        ValueError: `chars` holds a string that is not one character, or a repeat.
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer chars must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer chars must be distinct")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars, start=len(SPECIAL_TOKENS))}
        self._itos = ["", *SPECIAL_TOKENS[1:], *chars]  # <pad> decodes to ""
        self._lut: np.ndarray | None = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the distinct characters of `text` (the training split), sorted."""
        return cls(sorted(set(text)))

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        """Inverse of `to_dict`. Raises ValueError if the special tokens differ."""
        if list(d.get("special_tokens", [])) != list(SPECIAL_TOKENS):
            raise ValueError(
                f"tokenizer special_tokens={d.get('special_tokens')!r} must be "
                f"{list(SPECIAL_TOKENS)!r}"
            )
        return cls(d["chars"])

    def to_dict(self) -> dict:
        """JSON-able description: `{"type": "char", "chars": [...], "special_tokens": [...]}`."""
        return {"type": "char", "chars": list(self.chars), "special_tokens": list(SPECIAL_TOKENS)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    @property
    def special_tokens(self) -> dict[str, int]:
        """`{"<pad>": 0, "<unk>": 1, "<eos>": 2}`."""
        return {s: i for i, s in enumerate(SPECIAL_TOKENS)}

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, one per character; unseen characters -> `unk_id`."""
        return [self._stoi.get(c, UNK_ID) for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as an int64 array of shape (len(text),), vectorised.

        The text becomes an array of code points (UTF-32) that indexes a lookup
        table over code points; code points past the table's end are `<unk>`.
        A 5 MB corpus encodes in tens of milliseconds.
        """
        lut = self._lookup_table()
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.full(codes.shape, UNK_ID, dtype=np.int64)
        known = codes < len(lut)
        ids[known] = lut[codes[known]]
        return ids

    def _lookup_table(self) -> np.ndarray:
        if self._lut is None:
            size = max((ord(c) for c in self.chars), default=-1) + 1
            lut = np.full(size, UNK_ID, dtype=np.int64)
            for c, i in self._stoi.items():
                lut[ord(c)] = i
            self._lut = lut
        return self._lut

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (list, 1-D array or tensor). Raises ValueError for an id
        outside [0, vocab_size)."""
        return "".join(lookup_ids(ids, self._itos))

