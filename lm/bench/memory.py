"""Peak memory of a command's whole process tree (the command and every process it starts,
a pool's workers included), sampled from ``/proc``: what ``lm bench prepare`` and ``lm
bench train compare=data`` report.

RSS counts a page shared by k processes k times (forked workers, a child forked for a
moment); PSS counts it 1/k in each, so their sum over a tree is the tree's own memory.
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` would give only the largest single process.
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_S = 0.1  # seconds between samples of the process tree's memory


def _children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/<pid>/stat``'s parent id."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        parent = int(stat.rpartition(")")[2].split()[1])  # the name may hold spaces
        children.setdefault(parent, []).append(int(entry.name))
    return children


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of process ``pid`` in bytes (0, 0 if it has ended)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0]) * 1024  # kB
    except (OSError, ValueError):
        return 0, 0
    return values.get("Rss", 0), values.get("Pss", 0)


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over process ``pid`` and its descendants."""
    children, tree, todo = _children(), [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], ()))
    rss, pss = zip(*(_memory(p) for p in tree), strict=True)
    return sum(rss), sum(pss)


@dataclass
class Measured:
    """A finished child process: wall seconds, and the peak sums of RSS and PSS over its
    process tree in bytes (None where ``/proc`` cannot tell)."""

    seconds: float
    peak_rss: int | None
    peak_pss: int | None


def run_measured(command: list[str], log: Path) -> Measured:
    """Run ``command`` (its output into ``log``), sampling its process tree's memory every
    ``SAMPLE_S`` seconds.

    Raises:
        RuntimeError: the command failed (its last output line).
    """
    sampled = Path("/proc/self/smaps_rollup").is_file()
    peak_rss = peak_pss = 0
    with log.open("w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
        while True:
            if sampled:
                rss, pss = tree_memory(process.pid)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            try:
                process.wait(timeout=SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        seconds = time.perf_counter() - start
    if process.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed (exit {process.returncode}): "
                           f"{lines[-1] if lines else 'no output'} (log: {log})")
    return Measured(seconds, peak_rss if sampled else None, peak_pss if sampled else None)
