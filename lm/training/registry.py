"""The registry: runs found by config hash, and what a job does with its hash.

The config hash names a run by what it computes: SHA-256 of the canonical JSON
(sorted keys) of the resolved config, leaving out ``HASH_EXCLUDED_KEYS``, the keys
that cannot change the numbers, and with each key of ``CONTENT_KEYS`` (a path)
replaced by the SHA-256 of what the path holds. Two runs with one hash trained the
same thing; the code version (git commit + dirty flag) is recorded beside the hash,
not in it, so a comparison can flag one hash run on different code.

The registry is every run dir under ``tracking.registry_dir`` (and the job's own
output dir), each with its ``run.json`` (``lm/training/record.py``). ``claim`` holds
the hash's lock and decides: a completed run is skipped, a diverged one is not
retried, an interrupted one is resumed in its own dir, and a hash another process is
training is skipped; a run dir is never written by two runs.
"""

import contextlib
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lm.checkpoint import checkpoint_weights_sha256, resume_step
from lm.data.corpus import corpus_files  # the reader's own rule: the hash describes the text read
from lm.errors import ConfigError
from lm.training.record import RESUMABLE, read_record, write_json_atomic

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
    "trainer.peak_tflops",  # the device's peak, for wallclock/mfu: a measure, not the numbers
    # The default callbacks (conf/callbacks/default.yaml) write checkpoints, keep the RNG
    # state for an exact resume and draw the progress bar: an uninterrupted run computes
    # the same numbers with or without them. Listed by name, not the whole node, so a
    # callback that does change the numbers (early stopping, weight averaging) added
    # beside them is in the hash; a node left empty is dropped, so configs without a
    # callbacks node (older runs) hash as before.
    "callbacks.best_checkpoint",
    "callbacks.last_checkpoint",
    "callbacks.rng_state",
    "callbacks.progress_bar",
    "data.max_unk_fraction",  # whether a run starts, not what it computes once it does
)

# Keys added after runs were recorded, with the value that reproduces the code before
# them: at that value a key is left out of the hash, so adding an option (a new model
# key, a trainer switch) keeps every existing run's hash and the registry still finds
# it. Any other value is hashed like every other key.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "model.norm": "layernorm",
    "model.norm_position": "pre",
    "model.qk_norm": False,
    "model.rope_base": 10000.0,
    "model.zero_init_proj": False,
    "model.logit_softcap": None,
    "data.eval_batch_size": None,
    "trainer.compile": False,
    "trainer.strategy": "auto",
    "trainer.num_nodes": 1,
    **{f"adapter.{key}": None for key in ("r", "alpha", "dropout", "targets", "quantize",
                                          "block_size", "double_quant")},
    "adapter.name": "none",
}


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
# An init_from checkpoint file is digested by its weights alone (``content_digest``).
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
    except (OSError, RuntimeError):  # RuntimeError: a link loop, from resolve() on Python < 3.13
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
            digests[key] = content_digest(key, str(value), files)
    return digests


def content_digest(key: str, value: str, files: Callable[[str], list[Path]]) -> str | None:
    """The SHA-256 standing for path ``value`` of ``CONTENT_KEYS`` key ``key``: of the
    bytes of its files, or for an ``init_from`` checkpoint file, of its weights (so a
    checkpoint re-saved with another optimizer state or step fine-tunes the same run)."""
    if key == "init_from" and Path(value).expanduser().is_file():
        return checkpoint_weights_sha256(value)
    return content_sha256(files(value))


def hashable_config(cfg: DictConfig | dict, digests: dict | None = None) -> dict:
    """The resolved config as plain data, without ``HASH_EXCLUDED_KEYS`` (nor a
    ``HASH_NEUTRAL_DEFAULTS`` key at its neutral value), and with each
    ``CONTENT_KEYS`` path replaced by ``{"sha256": <digest of its content>}``.

    ``digests`` (from ``content_digests``, e.g. as recorded in a ``run.json``) saves
    reading the files again, and keeps a record's hash when its files have moved.
    Excluded keys are dropped before resolving, so an excluded key may interpolate
    things that do not exist yet (``${hydra:runtime.output_dir}``).
    """
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    raw = copy.deepcopy(raw)
    min_val_points = (raw.get("tracking") or {}).get("min_val_points")
    for dotted in HASH_EXCLUDED_KEYS:
        _drop(raw, dotted)
    plain = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    if isinstance(plain.get("trainer"), dict) and "val_check_interval" in plain["trainer"]:
        # The cadence the run validates at (best.ckpt and the curve follow it).
        plain["trainer"]["val_check_interval"] = val_check_interval(plain["trainer"], min_val_points)
    for dotted, neutral in neutral_values(plain).items():
        if _get(plain, dotted) == neutral:
            _drop(plain, dotted)
    digests = content_digests(plain) if digests is None else digests
    for key in CONTENT_KEYS:
        *parents, leaf = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) not in (None, ""):
            node[leaf] = {"sha256": digests.get(key)}
    return plain


# Keys that took their value from another key before they existed: at that key's value
# they are left out of the hash (the validation batches came from ``seed`` before
# ``data.eval_seed``), so a run that matches an older one keeps its hash.
HASH_NEUTRAL_SAME_AS: dict[str, str] = {"data.eval_seed": "seed"}

_ABSENT = object()


def neutral_values(plain: dict) -> dict[str, Any]:
    """The value of each key that reproduces the code before it (``HASH_NEUTRAL_DEFAULTS``,
    and ``HASH_NEUTRAL_SAME_AS`` read from ``plain``, a resolved config)."""
    same = {dotted: _get(plain, other) for dotted, other in HASH_NEUTRAL_SAME_AS.items()}
    return {**HASH_NEUTRAL_DEFAULTS, **{k: v for k, v in same.items() if v is not _ABSENT}}


def _get(tree: dict, dotted: str) -> Any:
    """The value at key ``dotted`` of nested dicts ``tree``; ``_ABSENT`` if there is none."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _drop(tree: dict, dotted: str) -> None:
    """Remove the key ``dotted`` from ``tree``, and every node on its path that this
    leaves empty."""
    head, _, rest = dotted.partition(".")
    if not rest:
        tree.pop(head, None)
        return
    child = tree.get(head)
    if isinstance(child, dict):
        _drop(child, rest)
        if not child:
            del tree[head]


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
    """Register ``${config_hash:}`` (first 8 hex digits), used in the run dir names with
    ``${run_label:}`` (``lm/training/naming.py``) (idempotent; ``compose_config`` and
    ``lm train`` call it, importing does not)."""
    if not OmegaConf.has_resolver("config_hash"):
        OmegaConf.register_new_resolver("config_hash", _hash8_resolver)


def val_check_interval(trainer: dict, min_val_points: int | None) -> int:
    """The steps between validations a run uses: ``trainer.val_check_interval``, or
    fewer, so that a run of ``trainer.max_steps`` validates at least ``min_val_points``
    times (``tracking.min_val_points``; None: no floor, as runs recorded before it).
    ``make train`` (2000 steps, every 250) is unchanged; 300 steps validate every 60."""
    interval, max_steps = int(trainer["val_check_interval"]), int(trainer["max_steps"])
    if not min_val_points:
        return interval
    return min(interval, max(1, max_steps // int(min_val_points)))


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
