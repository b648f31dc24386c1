"""Issue 14's acceptance: SIGKILL at random moments, then a re-run, gives the numbers and
curves of an uninterrupted run (slow: about 20 process starts)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, curves


def train(tmp_path: Path, registry: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "lm" / "train.py"), "model=tiny", "data=text_file",
               f"data.path={tmp_path / 'corpus.txt'}", f"paths.data_dir={tmp_path / 'data'}",
               "data.batch_size=4", "data.eval_iters=2", "trainer.max_steps=1000",
               "trainer.val_check_interval=100", "model.dropout=0.1",
               "tracking.checkpoint_every_n_steps=1", "trainer.enable_progress_bar=false",
               "trainer.enable_model_summary=false", "sample.max_new_tokens=0",
               f"tracking.registry_dir={tmp_path / registry}",
               f"hydra.run.dir={tmp_path / registry / 'runs' / '${now:%H-%M-%S-%f}'}", *extra]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


def the_run(registry: Path) -> tuple[Path, dict]:
    records = [(p.parent, json.loads(p.read_text())) for p in registry.glob("runs/*/run.json")]
    real = [(d, r) for d, r in records if not r.get("same_as")]
    assert len(real) == 1, real  # one run dir for the hash, however often it was killed
    return real[0]


@pytest.mark.slow
def test_twenty_kills_then_a_rerun_equal_an_uninterrupted_run(tmp_path, corpus):
    (tmp_path / "corpus.txt").write_text(corpus.read_text())
    assert train(tmp_path, "whole").wait(timeout=300) == 0
    whole_dir, whole = the_run(tmp_path / "whole")
    rng = random.Random(0)
    for _ in range(20):  # each time: once this segment has started training, a random moment
        started = time.time()
        proc = train(tmp_path, "killed")
        while not segment_started(tmp_path / "killed", started):
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert train(tmp_path, "killed").wait(timeout=300) == 0
    killed_dir, killed = the_run(tmp_path / "killed")
    assert killed["status"] == "completed" and killed["steps"] == 1000
    assert len(killed["resumed_from"]) == 20  # every kill landed while it trained
    assert killed["metrics"] == whole["metrics"]
    assert curves(killed_dir) == curves(whole_dir)
    assert sorted(curves(killed_dir)["val/loss"]) == list(range(100, 1001, 100))


def segment_started(registry: Path, since: float) -> bool:
    """Whether a run.json under ``registry`` was written after ``since`` (a segment's start)."""
    return any(p.stat().st_mtime > since for p in registry.glob("runs/*/run.json"))
