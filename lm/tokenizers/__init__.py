"""Tokenizers: text <-> token ids, behind one interface.

    base.py        `Tokenizer`, the Protocol every tokenizer implements (callers are typed
                   against it), `lookup_ids`, the id check every `decode` starts with, and
                   `token_label(s)`, a token as figures and tables show it
    char.py        `CharTokenizer`: one token per character (nanoGPT's shakespeare_char)
    byte.py        the byte-level rules (specials, U+FFFD, the one byte-level `decode`)
                   and `ByteTokenizer`: one token per UTF-8 byte
    bpe.py         BPE training and `BPETokenizer` (GPT-2-style, checked against tiktoken)
    gpt2_files.py  GPT-2's `encoder.json` + `vocab.bpe` (Hugging Face: `vocab.json` +
                   `merges.txt`), the `data.tokenizer.path` option

This module is the registry: `TOKENIZERS` maps the name a config uses
(`data.tokenizer.name`) and a stored dict carries (`type`) to the class. It lives here,
not in base.py, because every tokenizer module imports base.py and the registry
imports every tokenizer module: the package is the one place that sees them all.
"""

import inspect
from collections.abc import Callable

import numpy as np

from lm.tokenizers.base import Tokenizer, token_label, token_labels
from lm.tokenizers.bpe import BPETokenizer
from lm.tokenizers.byte import ByteTokenizer, to_valid_unicode
from lm.tokenizers.char import CharTokenizer

__all__ = [
    "TOKENIZERS", "BPETokenizer", "ByteTokenizer", "CharTokenizer", "Tokenizer",
    "build_tokenizer", "ordinary_encoder", "token_label", "token_labels", "tokenizer_from_dict",
    "tokenizer_spec",
]

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer,
}


def build_tokenizer(name: str, text: str, **options) -> Tokenizer:
    """Train tokenizer `name` (a key of `TOKENIZERS`) on `text`.

    `options` go to its `from_text`, e.g. `build_tokenizer("bpe", text, vocab_size=512)`.

    Raises:
        ValueError: `name` is not registered (one line naming the allowed ones), or
            an option is not one that tokenizer takes.
    """
    if name not in TOKENIZERS:
        raise ValueError(f"data.tokenizer={name!r} is not one of: {', '.join(TOKENIZERS)}")
    from_text = TOKENIZERS[name].from_text
    allowed = list(inspect.signature(from_text).parameters)[1:]  # after `text`
    unknown = [key for key in options if key not in allowed]
    if unknown:
        raise ValueError(
            f"data.tokenizer={name!r} takes no option {unknown[0]!r}; it takes: {allowed or 'none'}"
        )
    return from_text(text, **options)


def tokenizer_spec(tokenizer: str | dict) -> dict:
    """``"char"`` or ``{"name": "bpe", "vocab_size": 2048}`` (a ``data.tokenizer`` node) ->
    a dict with ``name`` and only the options that are set (None means "the tokenizer's
    default")."""
    spec = {"name": tokenizer} if isinstance(tokenizer, str) else dict(tokenizer)
    return {key: value for key, value in spec.items() if value is not None}


def ordinary_encoder(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    """``text -> token ids`` (an integer array of shape (n_tokens,)) with no special-token
    parsing: text that spells ``<eos>`` is ordinary text, as in GPT-2's training data and
    tiktoken's ``encode_ordinary``. BPE encodes through its ``tiktoken.Encoding`` (the same
    ids as ``encode``: tested), bytes are their own ids, characters have no special syntax.
    """
    if isinstance(tokenizer, BPETokenizer):
        encoding = tokenizer.to_tiktoken()
        return lambda text: encoding.encode_to_numpy(text, disallowed_special=())
    if isinstance(tokenizer, ByteTokenizer):
        return lambda text: np.frombuffer(_utf8(text), dtype=np.uint8)
    return tokenizer.encode_array


def _utf8(text: str) -> bytes:
    """UTF-8 of ``text``, a lone surrogate as U+FFFD (``to_valid_unicode``)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return to_valid_unicode(text).encode("utf-8")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()` (e.g. from a checkpoint or token cache).

    Raises:
        ValueError: `d["type"]` is missing or not registered.
    """
    kind = d.get("type")
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer type={kind!r} is not one of: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_dict(d)
