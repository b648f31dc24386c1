"""GPT-2's tokenizer files: `encoder.json` (token string -> id) and `vocab.bpe` (merges).

Hugging Face ships the same two files as `vocab.json` and `merges.txt`. Tokens are
written over `bytes_to_unicode()`'s alphabet of printable characters; `vocab.bpe`
is a `#version: 0.2` header, then one "left right" merge per line in rank order.
Source: openai/gpt-2 `src/encoder.py` and `download_model.py`.

This module reads and writes the files as plain data (merges, special tokens, byte
order); `BPETokenizer.load_gpt2` / `save_gpt2` (`bpe.py`) build on it, and the
`data.tokenizer.path` option (`conf/data/tokenizer/gpt2_files.yaml`) reaches it
through `BPETokenizer.from_text`. A damaged file (empty, not UTF-8, not JSON, a vocab
that is not token -> integer id, a merges line that is not two tokens, ids out of
GPT-2's layout) is one `FileContentError` (a `ConfigError`) line naming the file and
what it should hold; `read_text` and `read_json_object` give the same lines for the
other JSON files of a Hugging Face directory (`lm/interop/hf.py`).
"""

import json
from pathlib import Path
from typing import NamedTuple

from lm.errors import ConfigError
from lm.tokenizers.byte import N_BYTES

FILE_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))  # GPT-2's, HF's
# what each file holds, for the error lines
VOCAB_HOLDS = "GPT-2's vocab object (token string -> integer id)"
MERGES_HOLDS = "GPT-2's merges (a #version line, then one 'left right' token pair per line)"
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
              float: "number", type(None): "null"}  # the JSON name of a parsed value's type


class FileContentError(ConfigError):
    """A file whose content is not the form it should hold (empty, not UTF-8, not JSON,
    JSON of another type); the message is one line naming the file and that form.

    A ``ConfigError`` (so a ``ValueError``): the file is one a setting named
    (``data.tokenizer.path``, ``hf_dir``), and every command, ``lm train`` included,
    prints it as one ``error:`` line with exit code 2.
    """


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
        FileContentError: one line naming the file: as `read_vocab` and `read_merges`, or
            the two files do not follow that layout.
        OSError: a file cannot be read.
    """
    vocab_path, merges_path = _file_pair(Path(directory))
    encoder, merge_lines = read_vocab(vocab_path), read_merges(merges_path)
    try:
        return _layout(encoder, merge_lines, vocab_path.name)
    except ValueError as err:
        raise FileContentError(f"{vocab_path} + {merges_path.name} are not GPT-2's "
                               f"tokenizer: {err}") from None


def _layout(encoder: dict[str, int], merge_lines: list[str], vocab_name: str) -> Gpt2Files:
    """The merges, specials and byte order of GPT-2's id layout (`read_gpt2_files`)."""
    byte_order = _byte_order(encoder)
    merges = [_merge(encoder, line, k, vocab_name) for k, line in enumerate(merge_lines)]
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


def _file_pair(directory: Path) -> tuple[Path, Path]:
    """The (vocab, merges) files of `directory`: GPT-2's names first, then HF's."""
    for vocab_name, merges_name in FILE_NAMES:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return directory / vocab_name, directory / merges_name
    raise FileNotFoundError(
        f"{directory} has neither encoder.json + vocab.bpe nor vocab.json + merges.txt"
    )


def read_vocab(path: Path) -> dict[str, int]:
    """The token string -> id map of an `encoder.json` / `vocab.json`.

    Raises:
        FileContentError: one line naming `path`: as `read_json_object`, or an id that is not
            an integer (``vocab.json maps 'a' to "b": expected GPT-2's vocab object ...``).
        OSError: it cannot be read.
    """
    vocab = read_json_object(path, VOCAB_HOLDS)
    for token, i in vocab.items():
        if not is_json_type(i, int):
            raise FileContentError(f"{path} maps {token!r} to {json.dumps(i)}: "
                                   f"expected {VOCAB_HOLDS}")
    return vocab


def read_merges(path: Path) -> list[str]:
    """The merge lines of a `vocab.bpe` / `merges.txt` in rank order, without the
    `#version` header and blank lines.

    Raises:
        FileContentError: one line naming `path`: as `read_text`, or a line that is not two
            tokens separated by one space (GPT-2's token strings hold no space: it is "Ġ").
        OSError: it cannot be read.
    """
    lines = read_text(path, MERGES_HOLDS).splitlines()  # read_text: at least one line
    first = 1 if lines[0].startswith("#version") else 0
    for n, line in enumerate(lines[first:], start=first + 1):
        if line and len(line.split(" ")) != 2:
            raise FileContentError(f"{path} line {n} {line[:40]!r} is not two tokens "
                                   f"separated by one space: expected {MERGES_HOLDS}")
    return [line for line in lines[first:] if line]


def read_text(path: Path, holds: str) -> str:
    """The UTF-8 text of `path`, a file that should hold `holds` (for the error line).

    Raises:
        FileContentError: one line naming `path`: empty (or only whitespace), or not UTF-8.
        OSError: it cannot be read.
    """
    data = path.read_bytes()
    if not data.strip():
        what = "holds only whitespace" if data else "is empty (0 bytes)"
        raise FileContentError(f"{path} {what}: expected {holds}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileContentError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at "
                               f"offset {err.start}): expected {holds}") from None


def read_json_object(path: Path, holds: str) -> dict:
    """The JSON object in `path`, a file that should hold `holds` (for the error line).

    Raises:
        FileContentError: one line naming `path`: as `read_text`, not JSON, or JSON of another
            type (``config.json holds a JSON array, not a GPT-2 config object``).
        OSError: it cannot be read.
    """
    try:
        value = json.loads(read_text(path, holds))
    except json.JSONDecodeError as err:
        raise FileContentError(f"{path} is not valid JSON ({err}): expected {holds}") from None
    if not isinstance(value, dict):
        raise FileContentError(f"{path} holds {json_type(value)}, not {holds}")
    return value


def json_type(value: object) -> str:
    """What JSON value `value` was parsed from: `a JSON array`, `JSON null`."""
    return "JSON null" if value is None else f"a JSON {JSON_TYPES[type(value)]}"


def is_json_type(value: object, kind: type) -> bool:
    """Whether `value` is JSON's `kind`: a bool is no integer, an integer is a number."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _byte_order(encoder: dict[str, int]) -> list[int]:
    """The byte value of each of ids 0-255, from the single-character entries."""
    order = [-1] * N_BYTES
    for b, ch in bytes_to_unicode().items():
        i = encoder.get(ch, -1)
        if not 0 <= i < N_BYTES:
            raise ValueError(f"byte {b} ({ch!r}) must have an id in 0..255, got {i}")
        order[i] = b
    return order


def _merge(encoder: dict[str, int], line: str, k: int, vocab_name: str) -> tuple[int, int]:
    """The (left id, right id) of merge line `k`, checking it makes id 256 + k."""
    left, right = line.split(" ")  # two tokens: read_merges checked
    if encoder.get(left + right) != N_BYTES + k:
        raise ValueError(
            f"merge {k} {line!r} must make id {N_BYTES + k}, got {encoder.get(left + right)}"
        )
    for token in (left, right):
        if token not in encoder:
            raise ValueError(f"a merge names the token {token!r}, which {vocab_name} lacks")
    return encoder[left], encoder[right]
