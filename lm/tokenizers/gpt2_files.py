"""GPT-2's tokenizer files: `encoder.json` (token string -> id) and `vocab.bpe` (merges).

Hugging Face ships the same two files as `vocab.json` and `merges.txt`. Tokens are
written over `bytes_to_unicode()`'s alphabet of printable characters; `vocab.bpe`
is a `#version: 0.2` header, then one "left right" merge per line in rank order.
Source: openai/gpt-2 `src/encoder.py` and `download_model.py`.

This module reads and writes the files as plain data (merges, special tokens, byte
order); `BPETokenizer.load_gpt2` / `save_gpt2` (`bpe.py`) build on it, and the
`data.tokenizer.path` option (`conf/data/tokenizer/gpt2_files.yaml`) reaches it
through `BPETokenizer.from_text`.
"""

import json
from pathlib import Path
from typing import NamedTuple

from lm.tokenizers.byte import N_BYTES

FILE_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))  # GPT-2's, HF's


class Gpt2Files(NamedTuple):
    """What the two files hold, in `BPETokenizer`'s terms."""

    merges: list[tuple[int, int]]  # (left id, right id); merge k makes id 256 + k
    special_tokens: list[str]  # in id order, after the merges
    byte_order: list[int]  # the byte value of each of ids 0-255


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the other 68 (control characters,
    space, ...) map to U+0100 onwards, so the space byte 32 becomes "Ġ". GPT-2's
    `encoder.json` and `vocab.bpe` store tokens as strings over this alphabet.
    Source: `bytes_to_unicode` in openai/gpt-2 `src/encoder.py`.
    """
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(N_BYTES) if b not in table)
    for n, b in enumerate(shifted):
        table[b] = chr(N_BYTES + n)
    return dict(sorted(table.items()))


def read_gpt2_files(directory: str | Path) -> Gpt2Files:
    """Read `encoder.json` + `vocab.bpe` (or `vocab.json` + `merges.txt`) from `directory`.

    Needs GPT-2's id layout: the 256 byte tokens have ids 0-255, merge k (line
    k after the header) makes id 256 + k, and the remaining entries (e.g.
    "<|endoftext|>") are special tokens with the ids after those.

    Raises:
        FileNotFoundError: neither pair of files is there.
        ValueError: the files do not follow that layout.
    """
    encoder, merge_lines = _read_files(Path(directory))
    byte_order = _byte_order(encoder)
    merges = [_merge(encoder, line, k) for k, line in enumerate(merge_lines)]
    n_ordinary = N_BYTES + len(merges)
    specials = sorted((i, s) for s, i in encoder.items() if i >= n_ordinary)
    if [i for i, _ in specials] != list(range(n_ordinary, len(encoder))):
        raise ValueError(f"encoder ids must be 0..{len(encoder) - 1} with specials last")
    return Gpt2Files(merges, [s for _, s in specials], byte_order)


def write_gpt2_files(
    directory: str | Path,
    vocab: list[bytes],
    merges: list[tuple[int, int]],
    special_tokens: dict[str, int],
) -> None:
    """Write `encoder.json` and `vocab.bpe` into `directory` (created if missing).

    Args:
        vocab: id -> token bytes of the ordinary tokens (bytes, then merges).
        merges: (left id, right id) in rank order.
        special_tokens: string -> id; written into `encoder.json` under their own strings.
    Raises:
        ValueError: a special token's string equals an ordinary token's.
    """
    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    encoder = {to_str(tok): i for i, tok in enumerate(vocab)}
    encoder.update(special_tokens)
    if len(encoder) != len(vocab) + len(special_tokens):
        raise ValueError("a special token has the same string as an ordinary token")
    lines = [f"{to_str(vocab[a])} {to_str(vocab[b])}\n" for a, b in merges]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.json").write_text(json.dumps(encoder))
    (out / "vocab.bpe").write_text("#version: 0.2\n" + "".join(lines), encoding="utf-8")


def _read_files(directory: Path) -> tuple[dict[str, int], list[str]]:
    for vocab_name, merges_name in FILE_NAMES:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            encoder = json.loads((directory / vocab_name).read_text(encoding="utf-8"))
            lines = (directory / merges_name).read_text(encoding="utf-8").splitlines()
            if lines and lines[0].startswith("#version"):
                lines = lines[1:]
            return encoder, [line for line in lines if line]
    raise FileNotFoundError(
        f"{directory} has neither encoder.json + vocab.bpe nor vocab.json + merges.txt"
    )


def _byte_order(encoder: dict[str, int]) -> list[int]:
    """The byte value of each of ids 0-255, from the single-character entries."""
    order = [-1] * N_BYTES
    for b, ch in bytes_to_unicode().items():
        i = encoder.get(ch, -1)
        if not 0 <= i < N_BYTES:
            raise ValueError(f"byte {b} ({ch!r}) must have an id in 0..255, got {i}")
        order[i] = b
    return order


def _merge(encoder: dict[str, int], line: str, k: int) -> tuple[int, int]:
    """The (left id, right id) of merge line `k`, checking it makes id 256 + k."""
    left, right = line.split(" ")  # GPT-2 token strings never hold a space (it is "Ġ")
    if encoder.get(left + right) != N_BYTES + k:
        raise ValueError(
            f"merge {k} {line!r} must make id {N_BYTES + k}, got {encoder.get(left + right)}"
        )
    return encoder[left], encoder[right]
