"""Run records: the config hash, the code version, ``run.json`` and the registry.

The config hash names a run by what it computes: SHA-256 of the canonical JSON
(sorted keys) of the resolved config, leaving out ``HASH_EXCLUDED_KEYS``, the keys
that cannot change the numbers, and with each key of ``CONTENT_KEYS`` (a path)
replaced by the SHA-256 of what the path holds. Two runs with one hash trained the
same thing; the code version (git commit + dirty flag) is recorded beside the hash,
not in it, so a comparison can flag one hash run on different code.
"""

import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that cannot change the numbers a run produces: where files go, how often
# they are written, what is printed. Everything else (seed, model, data, tokenizer,
# optimizer, schedule, steps, batch size, precision, determinism) is in the hash.
HASH_EXCLUDED_KEYS: tuple[str, ...] = (
    "hydra",
    "paths",
    "logger",
    "sample",
    "tracking",
    "resume",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files a ``data=text_file`` corpus is read from, in reading order: the file
    itself, or a directory's ``*.txt`` files (not recursive) sorted by name."""
    path = Path(path).expanduser()
    if path.is_dir():
        return sorted((p for p in path.glob("*.txt") if p.is_file()), key=lambda p: p.name)
    return [path]


def dir_files(path: str | os.PathLike) -> list[Path]:
    """Every regular file of a directory (not recursive) sorted by name, or the file itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        return sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name)
    return [path]


# Keys whose value is a path: in the hash, the path gives way to the SHA-256 of what it
# holds, so editing a corpus changes the hash and `d`, `d/` and `../x/d` do not. The
# function lists the files read, in order; the digest is of their bytes concatenated
# (for a corpus: of its text as read, the same digest as the token cache's text_sha256).
CONTENT_KEYS: dict[str, Callable[[str], list[Path]]] = {
    "data.path": corpus_files,
    "data.tokenizer.path": dir_files,
    "init_from": dir_files,
}
_digest_cache: dict[tuple, str] = {}


def content_sha256(files: list[Path]) -> str | None:
    """SHA-256 hex digest of the bytes of ``files`` concatenated; None if one cannot be
    read. Cached per (path, size, mtime) within the process, so a big corpus is read once."""
    try:
        key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    except OSError:
        return None
    if key not in _digest_cache:
        digest = hashlib.sha256()
        try:
            for path in files:
                with path.open("rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                        digest.update(chunk)
        except OSError:
            return None
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def content_digests(cfg: DictConfig | dict) -> dict[str, str | None]:
    """``{key: sha256}`` for each ``CONTENT_KEYS`` key set in ``cfg`` (None: unreadable)."""
    plain = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    digests = {}
    for key, files in CONTENT_KEYS.items():
        value = OmegaConf.select(plain, key, default=None)
        if value is not None and str(value) != "":
            digests[key] = content_sha256(files(str(value)))
    return digests


def hashable_config(cfg: DictConfig | dict, digests: dict | None = None) -> dict:
    """The resolved config as plain data, without ``HASH_EXCLUDED_KEYS`` and with each
    ``CONTENT_KEYS`` path replaced by ``{"sha256": <digest of its content>}``.

    ``digests`` (from ``content_digests``, e.g. as recorded in a ``run.json``) saves
    reading the files again, and keeps a record's hash when its files have moved.
    Excluded keys are dropped before resolving, so an excluded key may interpolate
    things that do not exist yet (``${hydra:runtime.output_dir}``).
    """
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    raw = copy.deepcopy(raw)
    for dotted in HASH_EXCLUDED_KEYS:
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    plain = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    digests = content_digests(plain) if digests is None else digests
    for key in CONTENT_KEYS:
        *parents, leaf = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) not in (None, ""):
            node[leaf] = {"sha256": digests.get(key)}
    return plain


def config_hash(cfg: DictConfig | dict, digests: dict | None = None) -> str:
    """SHA-256 hex digest (64 characters) of the canonical JSON of ``hashable_config``."""
    return canonical_sha256(hashable_config(cfg, digests))


def canonical_sha256(data: Any) -> str:
    """SHA-256 hex digest of the canonical JSON (sorted keys, no spaces) of ``data``."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hash8_resolver(*, _root_: DictConfig) -> str:
    return config_hash(_root_)[:8]


def register_resolvers() -> None:
    """Register ``${config_hash:}`` (first 8 hex digits), used in the run dir names."""
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", _hash8_resolver)


def code_version(repo: str | Path | None = None) -> dict[str, Any]:
    """The git commit of ``repo`` (default: this package's checkout) and a dirty flag.

    Returns ``{"commit": None, "dirty": None}`` outside a git checkout.
    """
    repo = Path(repo or Path(__file__).resolve().parents[2])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def strict_json(data: Any, path: str = "") -> tuple[Any, list[str]]:
    """(``data`` with every NaN or infinite float replaced by None, the dotted keys
    replaced), so the result is strict JSON (RFC 8259 has no NaN or Infinity)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [path]
    if isinstance(data, dict):
        pairs = [(k, strict_json(v, f"{path}.{k}" if path else str(k))) for k, v in data.items()]
        return {k: v for k, (v, _) in pairs}, [bad for _, (_, found) in pairs for bad in found]
    if isinstance(data, (list, tuple)):
        items = [strict_json(v, f"{path}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in items], [bad for _, found in items for bad in found]
    return data, []


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write ``data`` as strict JSON so that a reader sees the old file or the new one,
    never half. Non-finite numbers are written as null and their keys listed under
    ``non_finite``. The file gets the umask's permissions (as ``open`` would give).

    Raises:
        OSError: the directory cannot be written.
    """
    data, bad = strict_json(data)
    if bad:
        data["non_finite"] = sorted(set(data.get("non_finite") or []) | set(bad))
    text = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends, it is renamed
    onto ``path`` (with the umask's permissions, as ``open`` would give), or deleted if
    the block raised. A reader sees the old file or the new one, never half.

    Raises:
        OSError: the directory cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_record(run_dir: str | Path) -> dict | None:
    """The ``run.json`` of a run dir as a dict; None if it is missing, unreadable,
    not JSON or not a JSON object."""
    try:
        record = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# What a run.json's status means. A run is ``running`` while its process trains it (or
# until a later run of its hash finds it dead, then ``interrupted``).
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
RESUMABLE = ("running", "failed", "interrupted")


class RunRecord:
    """``run.json`` in a run dir: written at start (status ``running``), at each
    checkpoint (steps and wall time so far) and at the end (one of ``STATUSES``), each
    time atomically.

    ``wall_time_s`` is the sum of the run's segments: a resumed run starts from the
    interrupted record's ``wall_time_s``.

    Args:
        run_dir: the run's output directory.
        **fields: what is known at start (hash, overrides, group choices, code version).
    """

    def __init__(self, run_dir: str | Path, **fields: Any):
        self.path = Path(run_dir) / "run.json"
        self.data: dict[str, Any] = {"status": "running", "run_dir": str(run_dir), **fields}
        self._before = float(self.data.get("wall_time_s") or 0.0)  # earlier segments
        self._started = time.monotonic()

    def start(self) -> None:
        """Write the record with status ``running`` and the start time."""
        self.data.setdefault("started_at", _now())
        self.data["segment_started_at"] = _now()
        for stale in ("ended_at", "error", "non_finite"):
            self.data.pop(stale, None)
        self._started = time.monotonic()
        self.update()

    def update(self, **fields: Any) -> None:
        """Write ``fields`` and the wall time so far (at a checkpoint)."""
        self.data.update(fields)
        self.data["wall_time_s"] = round(self._before + time.monotonic() - self._started, 3)
        write_json_atomic(self.path, self.data)

    def finish(self, status: str, **fields: Any) -> None:
        """Write the final record: ``status`` (one of ``STATUSES``), wall time and ``fields``."""
        assert status in STATUSES, status
        self.data.update(status=status, ended_at=_now())
        self.update(**fields)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the registry: run dirs under outputs/, found by hash --------------------------

def find_runs(registry_dir: str | Path, full_hash: str,
              also: tuple[str | Path, ...] = ()) -> list[tuple[Path, dict]]:
    """Every run dir under ``registry_dir`` or among ``also`` (a job's own output dir,
    which may lie outside the registry) whose ``run.json`` has ``full_hash``, oldest
    first (by ``started_at``). Pointer records (``same_as``) and unreadable ones are left out."""
    paths = {p.parent.resolve() for p in Path(registry_dir).glob("**/run.json")}
    paths |= {Path(d).resolve() for d in also if (Path(d) / "run.json").is_file()}
    found = []
    for run_dir in paths:
        record = read_record(run_dir)
        if record and record.get("hash") == full_hash and not record.get("same_as"):
            found.append((run_dir, record))
    return sorted(found, key=lambda item: item[1].get("started_at", ""))


def latest(runs: list[tuple[Path, dict]], *statuses: str) -> tuple[Path, dict] | None:
    """The latest of ``runs`` whose status is one of ``statuses``, if any."""
    chosen = [run for run in runs if run[1].get("status") in statuses]
    return chosen[-1] if chosen else None


def mark_dead(runs: list[tuple[Path, dict]]) -> None:
    """Rewrite as ``interrupted`` every ``running`` record among ``runs``. Call it with the
    hash's lock held: no live process is training them, so their process was killed."""
    for run_dir, record in runs:
        if record.get("status") == "running":
            record.update(status="interrupted",
                          error="the process ended without a word (killed, e.g. SIGKILL or power loss)")
            write_json_atomic(run_dir / "run.json", record)


# Files Hydra writes into every job dir before the job starts (and the registry's locks,
# when the registry dir is the job dir); anything else is a run's.
HYDRA_FILES = frozenset({".hydra", "train.log", ".locks"})


def foreign_files(job_dir: str | Path, full_hash: str) -> str | None:
    """What in ``job_dir`` belongs to another run than ``full_hash``'s, or None.

    A dir may be written by the run of ``full_hash`` only if it is empty (Hydra's own
    files aside), holds a pointer record, or holds that hash's own record.
    """
    job_dir = Path(job_dir)
    if not job_dir.is_dir():
        return None
    names = {p.name for p in job_dir.iterdir()} - HYDRA_FILES
    if not names:
        return None
    record = read_record(job_dir)
    if "run.json" not in names or record is None:
        return f"files of an unknown run ({', '.join(sorted(names)[:3])})"
    if record.get("same_as") or record.get("hash") == full_hash:
        return None
    return f"the {record.get('status')} run {str(record.get('hash'))[:8]}"


class HashLock:
    """An exclusive, non-blocking lock on one config hash (``<registry>/.locks/<hash>.lock``).

    Held while a run with that hash trains, so two processes starting the same
    config cannot both train it. The OS drops the lock when its process dies, even
    by SIGKILL, so a crash never leaves a stale lock behind.
    """

    def __init__(self, registry_dir: str | Path, full_hash: str):
        self.path = Path(registry_dir) / ".locks" / f"{full_hash}.lock"
        self._file = None

    def acquire(self) -> bool:
        """Take the lock; False (and nothing held) if another process has it.

        Raises:
            OSError: the registry dir cannot be written.
        """
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            self._file = None
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def write_pointer(job_dir: str | Path, record: dict, status: str, **fields: Any) -> None:
    """A ``run.json`` in ``job_dir`` saying this job's hash was ``status`` (skipped or
    resumed) in ``record['run_dir']`` (``same_as``), with that run's metrics, so a sweep's
    summary has a row for every job. Registry searches ignore these records, and a
    pointer never replaces a real record (nor is written where one lives)."""
    assert status in ("skipped", "resumed"), status
    job_dir = Path(job_dir)
    existing = read_record(job_dir)
    if existing and not existing.get("same_as"):
        return  # a real run lives here
    if record.get("run_dir") and Path(record["run_dir"]).resolve() == job_dir.resolve():
        return
    pointer = {k: v for k, v in record.items() if k not in ("status", "run_dir")}
    write_json_atomic(job_dir / "run.json",
                      {**pointer, **fields, "status": status, "same_as": record.get("run_dir"),
                       "run_dir": str(job_dir)})
