"""lm/analysis/sweep_summary.py: summary.csv and summary.md of a fabricated multirun dir."""

import csv

import pytest
from omegaconf import OmegaConf

from lm.analysis.sweep_summary import SweepSummary, split_overrides, write_summary
from lm.training.registry import config_hash
from tests.test_compare import make_config, make_run


@pytest.fixture
def sweep(tmp_path):
    """Jobs 0, 2 and 10 (lr 1e-3, 3e-4, 1e-4), made out of order; job 2 failed."""
    for job, lr, status in [(10, 1e-4, "completed"), (0, 1e-3, "completed"), (2, 3e-4, "failed")]:
        changes = {"optimizer.lr": lr}
        make_run(tmp_path, f"{job}-{config_hash(make_config(changes))[:8]}", changes,
                 status=status, val_loss=2.0 + job / 100)
    return tmp_path


def test_write_summary_rows_in_job_order_with_run_json_values(sweep):
    csv_path, md_path = write_summary(sweep)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["job"] for r in rows] == ["0", "2", "10"]  # numeric order, not 0, 10, 2
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert [r["overrides"] for r in rows] == [
        "optimizer.lr=0.001", "optimizer.lr=0.0003", "optimizer.lr=0.0001"]
    assert [r["final_val_loss"] for r in rows] == ["2.0", "", "2.1"]
    assert rows[2]["best_val_loss"] == "2.1" and rows[2]["steps"] == "30"
    assert rows[0]["hash8"] == config_hash(make_config({"optimizer.lr": 1e-3}))[:8]
    assert rows[0]["wall_time_s"] == "1.5"
    table = md_path.read_text()
    assert table.index("| 0 |") < table.index("| 2 |") < table.index("| 10 |")
    assert "| failed | `optimizer.lr=0.0003` | - | - |" in table


def test_callback_writes_into_the_sweep_dir(sweep):
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "summary.csv").exists() and (sweep / "summary.md").exists()


def test_split_overrides_separates_what_the_sweep_varied():
    rows = [{"overrides": ["model=tiny", "optimizer.lr=0.001", "sample.prompt=ROMEO: "]},
            {"overrides": ["model=tiny", "optimizer.lr=0.003", "sample.prompt=ROMEO: "]}]
    common, varied = split_overrides(rows)
    assert common == ["model=tiny", "sample.prompt=ROMEO: "]
    assert varied == ["optimizer.lr=0.001", "optimizer.lr=0.003"]


def test_an_unreadable_run_json_is_a_row_not_a_crash(sweep):
    job = next(p for p in sweep.iterdir() if p.name.startswith("2-"))
    (job / "run.json").write_text("{not json")
    csv_path, _ = write_summary(sweep)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["status"] for r in rows] == ["completed", "unreadable", "completed"]
