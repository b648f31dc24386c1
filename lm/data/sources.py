"""Where ``lm prepare`` reads documents: local files, or a Hugging Face dataset.

One document is one record (a ``.jsonl`` line, a ``.parquet`` row, a dataset row: its
``text_field``) or one ``.txt`` file. ``Source.documents()`` yields them in a fixed order
and never holds more than one record in memory, so a 40 GB corpus streams through:

- ``path``: a file, a directory (its supported files, recursively, sorted by path) or a
  glob of ``.txt``, ``.jsonl``, ``.jsonl.gz`` and ``.parquet`` files (pyarrow reads parquet
  in batches of rows);
- ``dataset``: a dataset name on the Hugging Face hub (``roneneldan/TinyStories``) with
  ``subset``, ``split`` and ``revision``, or a local directory in the hub's layout, read by
  ``datasets.load_dataset(..., streaming=True)``, which downloads as it goes.

Bytes that are not UTF-8 are decoded with U+FFFD in their place (as ``bytes.decode(...,
errors="replace")``) and the documents so mended are counted (``Source.replaced``), not
refused: web corpora hold a few, and one bad record should not stop a 10B-token job.
"""

import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lm.data.corpus import DataError
from lm.errors import first_line

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
PARQUET_BATCH = 1024  # rows pyarrow reads at a time
MB = 10**6  # max_document_mb is in MB of 10^6 bytes, as every size of lm prepare


def suffix_of(path: Path) -> str | None:
    """The supported suffix ``path`` ends with (``.jsonl.gz`` before ``.jsonl``), or None."""
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def input_files(path: str) -> list[Path]:
    """The files of ``path`` (a file, a directory, searched recursively, or a glob), sorted.

    Raises:
        DataError: nothing there, no supported file, or a file of another type.
    """
    expanded = os.path.expanduser(path)
    if any(c in expanded for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        where = f"the glob {path}"
    elif Path(expanded).is_dir():
        files = sorted(p for p in Path(expanded).rglob("*") if p.is_file() and suffix_of(p))
        where = f"the directory {path}"
    elif Path(expanded).is_file():
        files, where = [Path(expanded)], path
    else:
        raise DataError(f"source path={path} does not exist")
    if not files:
        raise DataError(f"{where} holds no {', '.join(SUFFIXES)} files; the source is empty")
    if odd := [f.name for f in files if suffix_of(f) is None]:
        raise DataError(f"path={path}: {odd[0]} is not one of {', '.join(SUFFIXES)}")
    return files


def dataset_files(directory: str) -> list[Path]:
    """The files of a local hub-layout dataset directory, sorted, except hidden ones (the
    ``.cache/`` that ``huggingface-cli download --local-dir`` leaves, ``.git/``)."""
    root = Path(directory).expanduser()
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def file_identity(path: Path) -> dict:
    """``{"name", "bytes", "sha256"}`` of an input file: what a prepare read."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


@dataclass
class Source:
    """The documents of a prepare. Exactly one of ``path`` (local files) or ``dataset``
    (``datasets.load_dataset`` name or hub-layout directory) is set.

    ``max_document_bytes``: a document of more UTF-8 bytes is refused (``DataError``),
    a ``.txt`` file or ``.jsonl`` line before it is read whole, so a mistaken 40 GB
    single-line file fails in one line, not by memory. After ``documents()`` has run:
    ``replaced``, the documents with bytes that were not UTF-8.

    Raises:
        DataError: both or neither of ``path`` and ``dataset``, ``max_document_bytes``
            below 1, or ``path`` naming no supported file (``input_files``).
    """

    path: str | None = None
    dataset: str | None = None
    subset: str | None = None
    split: str = "train"
    revision: str | None = None
    text_field: str = "text"
    max_document_bytes: int = 256 * MB
    replaced: int = field(default=0, init=False)

    def __post_init__(self):
        # `source.path=` on the command line is "", which Path reads as "." (the cwd)
        self.path, self.dataset = self.path or None, self.dataset or None
        if (self.path is None) == (self.dataset is None):
            raise DataError("set exactly one of source.path=<file, directory or glob> or "
                            "source.dataset=<Hugging Face dataset name>")
        if self.max_document_bytes < 1:
            raise DataError(f"max_document_mb={self.max_document_bytes / MB:g} must be > 0 "
                            f"(a limit of {self.max_document_bytes} bytes)")
        self._files = input_files(self.path) if self.path is not None else None

    @property
    def input_bytes(self) -> int | None:
        """Bytes of the input files (for the progress bar's ETA); None for a dataset."""
        return None if self._files is None else sum(f.stat().st_size for f in self._files)

    def identity(self) -> dict:
        """What was read, for the manifest: each file's name, size and SHA-256, or the
        dataset's name, subset, split and revision (its content is pinned by the shards'
        SHA-256s; a moving revision such as ``main`` is recorded as given), and for a
        local hub-layout directory its files as well, so that a rerun after they changed
        neither resumes nor returns the old shards."""
        if self._files is not None:
            return {"files": [file_identity(f) for f in self._files],
                    "text_field": self.text_field}
        identity = {"dataset": self.dataset, "subset": self.subset, "split": self.split,
                    "revision": self.revision, "text_field": self.text_field}
        if Path(self.dataset).expanduser().is_dir():
            identity["files"] = [file_identity(f) for f in dataset_files(self.dataset)]
        return identity

    def describe(self) -> str:
        """What is read, for messages: ``corpus.jsonl``, ``12 files at texts/``, ``dataset
        roneneldan/TinyStories split train``."""
        if self._files is not None:
            if len(self._files) == 1 and Path(self.path).expanduser() == self._files[0]:
                return str(self.path)
            return f"{len(self._files)} file(s) at {self.path}"
        return f"dataset {self.dataset}" + (f"/{self.subset}" if self.subset else "") + \
            f" split {self.split}"

    def documents(self) -> Iterator[str]:
        """Each document's text, in order.

        Raises:
            DataError: a record without ``text_field`` (or not an object), a document
                above ``max_document_bytes``, a file that cannot be read, or a dataset that
                cannot be loaded (unknown, or the hub unreachable).
        """
        self.replaced = 0
        if self._files is None:
            yield from self._dataset_documents()
            return
        for path in self._files:
            try:
                yield from self._file_documents(path)
            except (OSError, EOFError) as err:  # unreadable, a truncated or corrupt .gz
                raise DataError(f"{path} cannot be read ({first_line(err)})") from None

    def _file_documents(self, path: Path) -> Iterator[str]:
        kind = suffix_of(path)
        if kind == ".txt":
            yield self._txt(path)
        elif kind == ".parquet":
            yield from self._parquet(path)
        else:
            opener = gzip.open if kind == ".jsonl.gz" else open
            with opener(path, "rb") as f:
                yield from self._jsonl(path, f)

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.replaced += 1
            return data.decode("utf-8", errors="replace")

    def _too_big(self, what: str, size: int | None = None) -> DataError:
        """``size``: the document's bytes; None: more than the limit, not read to its end."""
        limit = self.max_document_bytes
        how = f"is {size:,} bytes" if size is not None else f"is more than {limit:,} bytes"
        return DataError(f"{what} {how}, above max_document_mb={limit / MB:g} ({limit:,} "
                         "bytes): split it into smaller documents or raise the limit")

    def _check_size(self, text: str, what: str) -> None:
        """Refuse ``text`` above ``max_document_bytes`` UTF-8 bytes (1 to 4 per character)."""
        if len(text) > self.max_document_bytes // 4:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.max_document_bytes:
                raise self._too_big(what, size)

    def _txt(self, path: Path) -> str:
        size = path.stat().st_size
        if size > self.max_document_bytes:
            raise self._too_big(f"{path} (one .txt file is one document)", size)
        return self._decode(path.read_bytes())

    def _text_of(self, record, where: str) -> str:
        if not isinstance(record, dict) or self.text_field not in record:
            fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{where} has no field {self.text_field!r} (it has: {fields}); "
                            "set source.text_field=<the field holding the text>")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {self.text_field!r} is "
                            f"{type(text).__name__}, not text")
        return text

    def _jsonl(self, path: Path, f) -> Iterator[str]:
        limit = self.max_document_bytes
        number = 0
        while line := f.readline(limit + 1):
            number += 1
            if len(line) > limit and not line.endswith(b"\n"):
                raise self._too_big(f"line {number} of {path}")
            if not line.strip():
                continue
            try:
                record = json.loads(self._decode(line))
            except ValueError as err:
                raise DataError(f"line {number} of {path} is not JSON ({err})") from None
            yield self._text_of(record, f"line {number} of {path}")

    def _parquet(self, path: Path) -> Iterator[str]:
        """The rows' ``text_field``, read as bytes (a string column is cast, unchecked and
        uncopied) so that bytes that are not UTF-8 are replaced as in the other formats."""
        import pyarrow as pa

        table, as_bytes = self._parquet_column(path)
        number = 0
        try:
            for batch in table.iter_batches(batch_size=PARQUET_BATCH, columns=[self.text_field]):
                for data in batch.column(0).cast(as_bytes).to_pylist():
                    if data is None:
                        raise DataError(f"row {number} of {path}: column {self.text_field!r} "
                                        "is null, not text")
                    if len(data) > self.max_document_bytes:
                        raise self._too_big(f"row {number} of {path}", len(data))
                    number += 1
                    yield self._decode(data)
        except pa.ArrowException as err:  # a corrupt page, found as the batches are read
            raise DataError(f"{path} cannot be read as parquet ({first_line(err)})") from None

    def _parquet_column(self, path: Path):
        """(the open ``pyarrow.parquet.ParquetFile``, the binary type its text column casts to).

        Raises:
            DataError: not parquet, no ``text_field`` column, or one that does not hold text.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path} cannot be read as parquet ({first_line(err)})") from None
        schema = table.schema_arrow
        if self.text_field not in schema.names:
            raise DataError(f"{path} has no column {self.text_field!r} (it has: "
                            f"{', '.join(schema.names)}); set source.text_field=<the text column>")
        kind = schema.field(self.text_field).type
        as_bytes = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary(),
                    pa.binary(): pa.binary(), pa.large_binary(): pa.large_binary()}.get(kind)
        if as_bytes is None:
            raise DataError(f"{path}: column {self.text_field!r} is {kind}, not text")
        return table, as_bytes

    def _dataset_documents(self) -> Iterator[str]:
        rows = iter(load_hub_dataset(self.dataset, self.subset, self.split, self.revision))
        number = 0
        while True:
            try:  # rows are fetched (and parsed) as iterated: the network may fail here
                record = next(rows)
            except StopIteration:
                return
            except (OSError, ValueError) as err:  # ConnectionError, a corrupt file
                raise DataError(f"source.dataset={self.dataset}: reading row {number} failed "
                                f"({first_line(err)})") from None
            where = f"row {number} of {self.dataset}"
            text = self._text_of(record, where)
            self._check_size(text, where)
            number += 1
            yield text


def load_hub_dataset(name: str, subset: str | None, split: str, revision: str | None):
    """``datasets.load_dataset(name, subset, split=split, revision=revision,
    streaming=True)``: an iterable of dict rows, fetched as iterated.

    Raises:
        DataError: the dataset, subset or split is unknown, or the hub cannot be reached
            (one line saying which).
    """
    import datasets
    from huggingface_hub.utils import logging as hub_logging

    # CRITICAL: what it logs as an error ("Failed to read file ...") it also raises, and
    # that is the one line the DataError below says
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    hub_logging.set_verbosity_error()  # its "Retrying in 1s [Retry 1/5]" lines, offline
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, subset, split=split, revision=revision,
                                     streaming=True)
    except (ConnectionError, OSError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if _offline(err):
            raise DataError(f"source.dataset={name}: the Hugging Face hub cannot be reached "
                            f"({text}); prepare from local files with source.path=...") from None
        raise DataError(f"source.dataset={name} cannot be loaded: {text}") from None
    except (ValueError, datasets.exceptions.DatasetNotFoundError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"source.dataset={name} (subset={subset}, split={split}): {text}") \
            from None


def _offline(err: BaseException) -> bool:
    """Whether ``err`` says the hub was not reached (no network, or HF_HUB_OFFLINE=1)."""
    words = f"{type(err).__name__} {err}".lower()
    return any(w in words for w in ("offline", "connection", "resolve", "network",
                                    "couldn't reach", "max retries", "timed out"))
