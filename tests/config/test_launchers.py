"""Sweeps through Hydra's launchers and sweepers, end to end (slow: several processes)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def multirun(tmp_path, *overrides):
    """Run ``python lm/train.py -m`` on a tiny local corpus; return the sweep dir."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: to be or not to be, that is the question.\n"
                              for i in range(100)))
    sweep = tmp_path / "sweep"
    subprocess.run(
        [sys.executable, "lm/train.py", "-m", "model=tiny", "data=text_file",
         f"data.path={corpus}", f"paths.data_dir={tmp_path / 'data'}", "data.batch_size=4",
         "data.eval_iters=2", "trainer.max_steps=4", "trainer.enable_progress_bar=false",
         "sample.max_new_tokens=0", f"hydra.sweep.dir={sweep}",
         f"tracking.registry_dir={tmp_path}", *overrides],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=600,
    )
    return sweep


def statuses(sweep):
    return sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/run.json"))


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    sweep = multirun(tmp_path, "hydra/launcher=submitit_local", "optimizer.lr=1e-3,3e-3")
    assert statuses(sweep) == ["completed", "completed"]
    assert (sweep / "summary.md").is_file()


@pytest.mark.slow
def test_joblib_launcher(tmp_path):
    sweep = multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "optimizer.lr=1e-3,3e-3")
    assert statuses(sweep) == ["completed", "completed"]


@pytest.mark.slow
def test_optuna_sweeper(tmp_path):
    sweep = multirun(tmp_path, "hparams_search=optuna_lr", "hydra.sweeper.n_trials=3")
    assert statuses(sweep) == ["completed"] * 3
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
