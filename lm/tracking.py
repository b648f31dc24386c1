"""Run records: the config hash, the code version and ``run.json``.

The config hash names a run by what it computes: SHA-256 of the canonical JSON
(sorted keys) of the resolved config, leaving out ``HASH_EXCLUDED_KEYS``, the keys
that cannot change the numbers. Two runs with one hash trained the same thing; the
code version (git commit + dirty flag) is recorded beside the hash, not in it, so a
comparison can flag one hash run on different code.
"""

import copy
import datetime as dt
import hashlib
import json
import os
import subprocess
import tempfile
import time
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


def hashable_config(cfg: DictConfig | dict) -> dict:
    """The resolved config as plain data, without ``HASH_EXCLUDED_KEYS``.

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
    return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)


def config_hash(cfg: DictConfig | dict) -> str:
    """SHA-256 hex digest (64 characters) of the canonical JSON of ``hashable_config``."""
    canonical = json.dumps(hashable_config(cfg), sort_keys=True, separators=(",", ":"))
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
    repo = Path(repo or Path(__file__).resolve().parent.parent)

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


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write ``data`` as JSON so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_run(run_dir: str | Path) -> dict:
    """The ``run.json`` of a run dir (raises FileNotFoundError if there is none)."""
    return json.loads((Path(run_dir) / "run.json").read_text())


class RunRecord:
    """``run.json`` in a run dir: written at start (status ``running``) and at the end
    (``completed`` or ``failed``), each time atomically.

    Args:
        run_dir: the run's output directory.
        **fields: what is known at start (hash, overrides, group choices, code version).
    """

    def __init__(self, run_dir: str | Path, **fields: Any):
        self.path = Path(run_dir) / "run.json"
        self.data: dict[str, Any] = {"status": "running", "run_dir": str(run_dir), **fields}

    def start(self) -> None:
        """Write the record with status ``running`` and the start time."""
        self.data["started_at"] = _now()
        self._started = time.monotonic()
        write_json_atomic(self.path, self.data)

    def finish(self, status: str, **fields: Any) -> None:
        """Write the final record: ``status`` (completed | failed), wall time and ``fields``."""
        assert status in ("completed", "failed"), status
        self.data.update(fields, status=status, ended_at=_now())
        self.data["wall_time_s"] = round(time.monotonic() - self._started, 3)
        write_json_atomic(self.path, self.data)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the registry: run dirs under outputs/, found by hash --------------------------

def find_runs(registry_dir: str | Path, full_hash: str) -> list[tuple[Path, dict]]:
    """Every run dir under ``registry_dir`` whose ``run.json`` has ``full_hash``,
    oldest first (by ``started_at``). Unreadable records are ignored."""
    found = []
    for path in Path(registry_dir).glob("**/run.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("hash") == full_hash:
            found.append((path.parent, record))
    return sorted(found, key=lambda item: item[1].get("started_at", ""))


def completed_run(runs: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    """The latest completed run among ``runs``, if any."""
    done = [run for run in runs if run[1].get("status") == "completed"]
    return done[-1] if done else None


def resumable_run(runs: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    """The latest interrupted run (status ``running`` or ``failed``) with a last checkpoint."""
    interrupted = [
        run for run in runs
        if run[1].get("status") in ("running", "failed")
        and (run[0] / "checkpoints" / "last.ckpt").is_file()
    ]
    return interrupted[-1] if interrupted else None


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
        """Take the lock; False (and nothing held) if another process has it."""
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


def write_pointer(job_dir: str | Path, record: dict, status: str) -> None:
    """A ``run.json`` in ``job_dir`` saying this job's hash was ``status`` (skipped or
    resumed) in ``record['run_dir']`` (``same_as``), with that run's metrics, so a sweep's
    summary has a row for every job. Registry searches ignore these records."""
    assert status in ("skipped", "resumed"), status
    pointer = {k: v for k, v in record.items() if k not in ("status", "run_dir")}
    write_json_atomic(Path(job_dir) / "run.json",
                      {**pointer, "status": status, "same_as": record["run_dir"],
                       "run_dir": str(job_dir)})
