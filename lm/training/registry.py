"""The registry: runs found by config hash, and what a job does with its hash.

The config hash (``lm/training/hashing.py``) names a run by what it computes. The
registry is every run dir under ``tracking.registry_dir`` (and the job's own output
dir), each with its ``run.json`` (``lm/training/record.py``). ``claim`` holds the
hash's lock and decides: a completed run is skipped, a diverged one is not retried,
an interrupted one is resumed in its own dir, and a hash another process is training
is skipped; a run dir is never written by two runs.
"""

import contextlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lm.checkpoint import resume_step
from lm.errors import ConfigError
from lm.training.record import RESUMABLE, read_record, write_json_atomic

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


# --- what a job does with its hash -------------------------------------------------

@dataclass
class Plan:
    """What the registry decided for one job (``claim``): skip it, or train it where.

    Attributes:
        full_hash: the job's config hash.
        job_dir: the job's own output dir (``paths.output_dir``).
        run_dir: where to train: ``job_dir``, or the dir of an interrupted run of the
            hash, resumed in place.
        ckpt_path: the checkpoint to start from (None: from scratch).
        prior: the interrupted run's record ({} for a new run).
        purge_step: a resumed run's first step; TensorBoard hides the events an earlier
            segment wrote from there on (written after its last checkpoint, written
            again now). None for a new run.
        skipped: the record to return instead of training; None: train.
        leader: False on ranks > 0 of a distributed run, which train as rank 0 decided
            and write nothing of the run's (``lm/training/distributed.py``).
    """

    full_hash: str
    job_dir: Path
    run_dir: Path
    ckpt_path: Path | None = None
    prior: dict = field(default_factory=dict)
    purge_step: int | None = None
    skipped: dict | None = None
    leader: bool = True

    def history(self) -> dict:
        """What a resumed run's record keeps of the interrupted one (start time, wall
        time, earlier resumes), with ``resumed_from`` extended; {} for a new run."""
        if not self.prior:
            return {}
        kept = {k: v for k, v in self.prior.items() if k not in ("run_dir", "status")}
        kept["resumed_from"] = [*self.prior.get("resumed_from", []), str(self.ckpt_path or "scratch")]
        return kept

    def done(self, record: dict) -> None:
        """After training: a run resumed in another dir leaves a pointer to it in the
        job's own dir, so a sweep's summary has a row for every job."""
        if self.run_dir.resolve() != self.job_dir.resolve():
            write_pointer(self.job_dir, record, "resumed")


@contextlib.contextmanager
def claim(cfg: DictConfig, full_hash: str) -> Iterator[Plan]:
    """The plan for the job of ``cfg`` (hash ``full_hash``), with the hash's lock held
    until the block ends (while it trains). The registry (run dirs under
    ``tracking.registry_dir``, and the job's own output dir wherever it is) is searched
    by hash: a completed run is skipped (``tracking.skip_completed``) without touching
    its files, a diverged one is not retried (``tracking.retry_diverged``), an
    interrupted one is resumed in its own run dir (``resume=auto``) from its last
    readable checkpoint, and a hash another process is training right now is skipped.
    A skipped job's own dir gets a pointer record (``write_pointer``).

    Raises:
        ConfigError: the registry cannot be written; the job dir holds another run's
            files, or this hash's finished run while training it again.
    """
    job_dir = Path(cfg.paths.output_dir)
    lock = HashLock(cfg.tracking.registry_dir, full_hash)
    try:
        locked = lock.acquire()
    except OSError as err:
        raise ConfigError(f"tracking.registry_dir={cfg.tracking.registry_dir} cannot be written "
                          f"({err.strerror or err}); pick a writable dir") from None
    if not locked:
        yield _busy(full_hash, job_dir)
        return
    try:
        yield _plan(cfg, full_hash, job_dir)
    finally:
        lock.release()


def _busy(full_hash: str, job_dir: Path) -> Plan:
    """Skip: another process holds the hash's lock."""
    print(f"skip {full_hash[:8]}: another process is training this config right now")
    skipped = {"hash": full_hash, "hash8": full_hash[:8], **hydra_job_info()}
    if job_dir.is_dir() and not foreign_files(job_dir, full_hash):
        write_pointer(job_dir, skipped, "skipped", reason="another process was training it")
    return Plan(full_hash, job_dir, job_dir, skipped={**skipped, "status": "skipped"})


def _plan(cfg: DictConfig, full_hash: str, job_dir: Path) -> Plan:
    """``claim``'s decision, with the lock held: skip, resume or start."""
    h8 = full_hash[:8]
    runs = find_runs(cfg.tracking.registry_dir, full_hash, also=(job_dir,))
    mark_dead(runs)
    if problem := foreign_files(job_dir, full_hash):
        raise ConfigError(f"paths.output_dir={job_dir} already holds {problem}; a run dir is "
                          "written by one run only (choose another hydra.run.dir or hydra.sweep.dir)")
    if (done := latest(runs, "completed")) and cfg.tracking.skip_completed:
        print(f"skip {h8}: already completed in {done[0]} "
              "(tracking.skip_completed=false trains it again)")
        return _skip(full_hash, job_dir, done)
    if (bad := latest(runs, "diverged")) and not done and not cfg.tracking.retry_diverged:
        print(f"skip {h8}: diverged in {bad[0]} ({bad[1].get('error')}); it is not resumed "
              "(tracking.retry_diverged=true trains it again from scratch)")
        return _skip(full_hash, job_dir, bad)
    if cfg.resume == "auto" and (interrupted := latest(runs, *RESUMABLE)):
        run_dir, prior = interrupted
        ckpt_path, purge_step = resumable_checkpoint(run_dir)
        print(f"resume {h8}: continuing {run_dir} from "
              f"{ckpt_path or 'scratch (no readable checkpoint)'}")
        return Plan(full_hash, job_dir, run_dir, ckpt_path, prior, purge_step)
    if own := [r for r in runs if r[0] == job_dir.resolve()]:
        raise ConfigError(f"paths.output_dir={job_dir} holds this config's {own[0][1].get('status')} "
                          "run; training it again needs a new run dir (another "
                          "hydra.run.dir or hydra.sweep.dir)")
    ckpt_path = None if cfg.resume in ("auto", "never") else Path(cfg.resume)
    return Plan(full_hash, job_dir, job_dir, ckpt_path)


def _skip(full_hash: str, job_dir: Path, found: tuple[Path, dict]) -> Plan:
    """Skip in favour of the run ``found`` (its dir, its record), leaving a pointer."""
    run_dir, record = found
    write_pointer(job_dir, {**record, "run_dir": str(run_dir)}, "skipped")
    return Plan(full_hash, job_dir, job_dir, skipped={**record, "status": "skipped"})


def resumable_checkpoint(run_dir: Path) -> tuple[Path | None, int]:
    """(the newest checkpoint of an interrupted run that can be resumed: ``last.ckpt``,
    else ``best.ckpt``, else None to start afresh; the first step it trains). One that
    cannot (unreadable, truncated, non-finite weights) is renamed ``<name>.bad`` with one
    warning line."""
    for name in ("last.ckpt", "best.ckpt"):
        path = run_dir / "checkpoints" / name
        if not path.is_file():
            continue
        step, problem = resume_step(path)
        if problem is None:
            return path, step + 1
        aside = path.with_name(f"{name}.bad")
        path.replace(aside)
        print(f"warning: {path} is {problem}; set aside as {aside.name}", file=sys.stderr)
    return None, 0


def hydra_job_info() -> dict:
    """The overrides and group choices of this Hydra job (empty outside ``@hydra.main``)."""
    if not HydraConfig.initialized():
        return {"overrides": [], "choices": {}}
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    return {"overrides": list(hc.overrides.task), "choices": dict(choices)}


def remove_unstarted_run_dir(run_dir: Path) -> None:
    """Remove the dir Hydra made for a run that did not train there: a bad value stopped
    it before it started, or (a single run, not a sweep job) the registry skipped it or
    resumed it in its earlier dir. Nothing in it but Hydra's own ``.hydra/`` and log
    and a pointer ``run.json`` (``same_as``): the registry holds runs only, and one
    line has said where the real run is."""
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", "run.json"}:
        return
    if (run_dir / "run.json").exists() and not (read_record(run_dir) or {}).get("same_as"):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
