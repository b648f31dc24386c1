"""A prepared dataset on disk: token shards + ``manifest.json``, read back as one stream.

``lm prepare`` (``lm/data/prepare.py``) writes a directory:

    manifest.json        what was read and written (``MANIFEST``): source identity,
                         tokenizer digest, split sizes, and each shard's file name, token
                         count and SHA-256; its ``digest`` names the whole dataset
    tokenizer.json       the tokenizer (``Tokenizer.to_dict``)
    train_000000.bin ... raw token ids, uint16 below 65,536 ids else uint32, each
    val_000000.bin ...   shard ``shard_tokens`` tokens long but the last

The shards of a split are one token stream cut into files, as llm.c's and
modded-nanogpt's ``fineweb.py`` write them (each document starts with the end-of-text
token), written by ``write_shards`` from ``lm prepare``'s part files. ``TokenStream``
reads them and answers ``len`` and fancy indexing like one array, so
``lm.data.tokens.get_batch`` draws windows across shards exactly as it does from an
in-memory corpus: a batch stays a pure function of (seed, stream, step, rank), and a
run's memory does not grow with the corpus (windows are read with ``pread``; nothing stays
mapped).
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lm.data.corpus import DataError
from lm.tokenizers import Tokenizer, tokenizer_from_dict

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT = "lm-prepared/1"
SPLITS = ("train", "val")


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the canonical JSON of ``manifest`` without its ``digest`` key: source
    identity, tokenizer digest, settings, split sizes and every shard's SHA-256. Two
    datasets with one digest hold the same tokens; the config hash uses it."""
    body = {key: value for key, value in manifest.items() if key != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_prepared(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a finished prepare (its manifest is written last)."""
    return (Path(directory).expanduser() / MANIFEST).is_file()


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a prepared dataset directory, its digest checked.

    Raises:
        DataError: no manifest (not prepared, or not finished), not lm's format, or a
            digest that does not match its content (edited by hand).
    """
    directory = Path(directory).expanduser()
    path = directory / MANIFEST
    if not path.is_file():
        why = "does not exist" if not directory.exists() else f"has no {MANIFEST}"
        raise DataError(f"data.path={directory} {why}: not a dataset written by lm prepare "
                        "(make one: lm prepare source.path=<corpus> out=<dir>)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} cannot be read as JSON ({err}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not an lm prepare manifest (format {FORMAT!r})")
    if manifest.get("digest") != manifest_digest(manifest):
        raise DataError(f"{path} does not match its own digest (edited after lm prepare wrote "
                        "it); prepare the dataset again")
    return manifest


def prepared_digest(directory: str | os.PathLike) -> str | None:
    """The manifest digest of a prepared dataset (what the config hash holds for its
    ``data.path``); None if there is no readable manifest."""
    try:
        return read_manifest(directory)["digest"]
    except DataError:
        return None


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shards(directory: str | os.PathLike, manifest: dict, full: bool = True) -> None:
    """Check every shard against the manifest: present, of its size, and (``full``) of
    its SHA-256. Reading costs one pass over the tokens (about 1 s per GB here).

    Raises:
        DataError: a shard is missing, of another size, or changed (one line naming it).
    """
    directory = Path(directory).expanduser()
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for shard in manifest["shards"][split]:
            path = directory / shard["file"]
            if not path.is_file():
                raise DataError(f"{path} is listed in {MANIFEST} but missing; prepare the "
                                "dataset again")
            size = path.stat().st_size
            if size != shard["tokens"] * itemsize:
                raise DataError(f"{path} is {size:,} bytes, {MANIFEST} says "
                                f"{shard['tokens'] * itemsize:,}: the shard changed after "
                                "lm prepare wrote it; prepare the dataset again")
            if full and file_sha256(path) != shard["sha256"]:
                raise DataError(f"{path} does not match its SHA-256 in {MANIFEST}: the shard "
                                "changed after lm prepare wrote it; prepare the dataset again")


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer a prepared dataset was encoded with."""
    return tokenizer_from_dict(json.loads((Path(directory).expanduser() / TOKENIZER).read_text()))


class TokenStream:
    """The shards of one split as one read-only token array of length ``N`` (the sum of
    the shards' tokens). ``stream[index]`` takes any integer array ``index`` (values in
    [0, N)) and returns an array of its shape, like an array would, so ``get_batch`` and
    ``windows_at`` draw from it unchanged; their (B, length) index of consecutive tokens
    per row is read by ``windows``, one ``pread`` per window (two where a window spans a
    shard's end).

    Nothing stays mapped into the process: reads go through the OS page cache, which is not
    the process's memory, so a run's resident memory stays flat however large the corpus
    and however long the run. (A long-lived ``np.memmap`` would not: every page its random
    windows touch, and the kernel's read-around of it, stays resident; nanoGPT recreates
    its memmap every batch for this reason.)
    """

    def __init__(self, paths: list[Path], counts: list[int], dtype: str):
        kept = [(Path(p), n) for p, n in zip(paths, counts, strict=True) if n > 0]
        self.paths = [p for p, _ in kept]
        self.starts = np.cumsum([0] + [n for _, n in kept])  # (S + 1,) first index of each
        self.dtype = np.dtype(dtype)
        self._files: dict[int, int] = {}  # shard -> open file descriptor

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __del__(self):
        for fd in self._files.values():
            os.close(fd)

    def _fd(self, shard: int) -> int:
        if shard not in self._files:
            self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return self._files[shard]

    def read(self, start: int, out: np.ndarray) -> None:
        """Fill ``out`` (1-D, of this stream's dtype) with tokens ``start, start + 1, ...``."""
        done, size = 0, self.dtype.itemsize
        while done < len(out):
            at = start + done
            shard = int(np.searchsorted(self.starts, at, side="right")) - 1
            n = min(len(out) - done, int(self.starts[shard + 1]) - at)
            data = os.pread(self._fd(shard), n * size, (at - int(self.starts[shard])) * size)
            out[done:done + n] = np.frombuffer(data, dtype=self.dtype)
            done += n

    def windows(self, offsets, length: int) -> np.ndarray:
        """The B windows of ``length`` consecutive tokens starting at ``offsets`` (B
        integers in [0, N - length]): an array of shape (B, length)."""
        out = np.empty((len(offsets), length), dtype=self.dtype)
        for row, start in enumerate(offsets):
            self.read(int(start), out[row])
        return out

    def __getitem__(self, index):
        index = np.asarray(index)
        if index.dtype.kind not in "iu":
            raise TypeError("a TokenStream takes an integer array index")
        if index.ndim == 2 and index.shape[1] > 0 and (np.diff(index, axis=1) == 1).all():
            return self.windows(index[:, 0], index.shape[1])  # rows of consecutive tokens
        flat = index.reshape(-1)
        out = np.empty(flat.shape, dtype=self.dtype)
        which = np.searchsorted(self.starts, flat, side="right") - 1  # shard of each index
        for shard in np.unique(which):
            mask = which == shard
            mapped = np.memmap(self.paths[shard], dtype=self.dtype, mode="r")  # dropped below
            out[mask] = mapped[flat[mask] - self.starts[shard]]
            del mapped
        return out.reshape(index.shape)


def write_shards(out: Path, parts: Path, split: str, dtype: str, shard_tokens: int,
              progress: bool) -> list[dict]:
    """Cut the part files ``<parts>/*.<split>.bin`` (raw ids of ``dtype``), in name order, into shards of ``shard_tokens`` tokens
    (``<split>_000000.bin``, ...; the last holds the rest), each written to a temporary
    and renamed; return ``[{"file", "tokens", "sha256"}, ...]``."""
    files = sorted(parts.glob(f"*.{split}.bin"))
    shards: list[dict] = []
    writer = None
    for part in tqdm(files, desc=f"shards {split}", unit="part",
                     disable=None if progress else True, mininterval=1.0):
        ids = np.fromfile(part, dtype=dtype)
        start = 0
        while start < len(ids):
            if writer is None:
                writer = ShardWriter(out / f"{split}_{len(shards):06d}.bin")
            take = min(shard_tokens - writer.tokens, len(ids) - start)
            writer.write(ids[start:start + take])
            start += take
            if writer.tokens == shard_tokens:
                shards.append(writer.close())
                writer = None
    if writer is not None:
        shards.append(writer.close())
    return shards


class ShardWriter:
    """One shard file, written to a temporary beside it and hashed as it is written;
    ``close`` renames it into place and returns its manifest entry."""

    def __init__(self, path: Path):
        self.path, self.tokens, self.digest = path, 0, hashlib.sha256()
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file = self.tmp.open("wb")

    def write(self, ids: np.ndarray) -> None:
        data = ids.tobytes()
        self.file.write(data)
        self.digest.update(data)
        self.tokens += len(ids)

    def close(self) -> dict:
        self.file.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "tokens": self.tokens, "sha256": self.digest.hexdigest()}


def open_split(directory: str | os.PathLike, manifest: dict, split: str) -> TokenStream:
    """The ``split`` ("train" or "val") of a prepared dataset as a ``TokenStream``."""
    directory = Path(directory).expanduser()
    shards = manifest["shards"][split]
    return TokenStream([directory / s["file"] for s in shards], [s["tokens"] for s in shards],
                       manifest["dtype"])
