"""The tokenizer interface: what every tokenizer implements and every caller relies on.

`Tokenizer` is a `typing.Protocol` (structural: a tokenizer need not inherit from
it), like minbpe's `Tokenizer` base class written as an interface. The data module,
the LightningModule, the checkpoint loader, the GPT-2 converter and the commands are
typed against it; `tests/test_tokenizer.py` checks that every registered tokenizer
satisfies it.

This module imports nothing of lm, so every tokenizer module can import it; the
name -> class registry is in `lm/tokenizers/__init__.py`, the one module that
imports them all.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, Self, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, with special tokens and a JSON-able description.

    Ids are ints in [0, vocab_size). `decode(encode(s)) == s` for every string the
    tokenizer can represent (all strings for byte-level ones; for `char`, strings
    over its characters). `to_dict()` holds a `type` key naming the tokenizer in the
    registry, so `lm.tokenizers.tokenizer_from_dict(t.to_dict())` rebuilds it: this
    dict is what checkpoints and token caches store.
    """

    @classmethod
    def from_text(cls, text: str) -> Self:
        """Build (train, where there is something to learn) on `text`, the training
        split. Classes may take keyword options: the `data.tokenizer` keys they accept."""

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """Inverse of `to_dict`. Raises ValueError for a dict it cannot rebuild from."""

    def to_dict(self) -> dict:
        """JSON-able description, `{"type": <registry name>, ...}`."""

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's V)."""

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Special token string -> id, e.g. `{"<eos>": 256, "<pad>": 257}`."""

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id (`<eos>` or `<|endoftext|>`), None if there is none."""

    @property
    def pad_id(self) -> int | None:
        """`<pad>`'s id, None if there is none."""

    @property
    def unk_id(self) -> int | None:
        """`<unk>`'s id (what unknown text encodes to), None if there is none."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; literal special-token strings encode to their ids
        (byte-level tokenizers) or character by character (`char`)."""

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as an int64 array of shape (n_tokens,), fast enough for corpora."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (list, 1-D array or tensor). Raises ValueError for an id
        outside [0, vocab_size)."""


def lookup_ids(ids: Iterable[int], table: Sequence[T]) -> list[T]:
    """`[table[i] for i in ids]`, each id read as an int (list, 1-D array or tensor).

    The first step of every `decode`: `table` maps id -> token (str or bytes).

    Raises:
        ValueError: an id outside [0, len(table)) (a negative id never wraps around).
    """
    out = []
    for i in ids:
        i = int(i)
        if not 0 <= i < len(table):
            raise ValueError(f"token id {i} is outside [0, {len(table)})")
        out.append(table[i])
    return out


VISIBLE = {" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"}  # how a label shows them


def token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """One token as a figure or table shows it: a space is `␣`, a newline `\\n`, a tab
    `\\t`; a special token is its name (`<eos>`); a byte-level token that is not whole
    UTF-8 (part of a multi-byte character) is its bytes escaped (`\\xe2`), read with the
    tokenizer's `token_bytes` where it has one.

    Raises:
        ValueError: `token_id` is outside [0, vocab_size).
    """
    specials = {i: name for name, i in tokenizer.special_tokens.items()}
    if token_id in specials:
        return specials[token_id]
    text = tokenizer.decode([token_id])
    if "\ufffd" in text and hasattr(tokenizer, "token_bytes"):
        text = tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
    return "".join(VISIBLE.get(c, c) for c in text)


def token_labels(tokenizer: Tokenizer, ids: Iterable[int]) -> list[str]:
    """`token_label` of each id (list, 1-D array or tensor), in order."""
    return [token_label(tokenizer, int(i)) for i in ids]

