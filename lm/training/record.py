"""``run.json``: the record of one run, written atomically as strict JSON.

A run dir's ``run.json`` holds the config hash, the overrides and group choices, the
code version, the status (``STATUSES``), steps, tokens, wall time, final and best
metrics and the checkpoints. ``RunRecord`` writes it; ``read_record`` reads it back
for the registry (``lm/training/registry.py``), ``lm compare`` and the sweep summary.
Kept apart from the registry, which decides what to train: this module only reads and
writes the file, and imports nothing of Lightning.
"""

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

from lm.atomic import atomic_file

# What a run.json's status means. A run is ``running`` while its process trains it (or
# until a later run of its hash finds it dead, then ``interrupted``).
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
RESUMABLE = ("running", "failed", "interrupted")


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


def load_record(run_dir: str | Path) -> Any:
    """The parsed ``run.json`` of a run dir, whatever JSON value it holds.

    Raises:
        OSError: the file cannot be read. ValueError: it is not UTF-8 JSON
            (``UnicodeDecodeError``, ``json.JSONDecodeError``).
    """
    return json.loads((Path(run_dir) / "run.json").read_text())


def read_record(run_dir: str | Path) -> dict | None:
    """The ``run.json`` of a run dir as a dict; None if it is missing, unreadable,
    not JSON or not a JSON object."""
    try:
        record = load_record(run_dir)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


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
