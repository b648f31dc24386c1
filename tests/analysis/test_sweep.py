"""lm/analysis/sweep_summary.py: summary.csv and summary.md of a fabricated multirun dir."""

import csv

import pytest
from omegaconf import OmegaConf

from lm.analysis.sweep_summary import (
    SweepSummary,
    record_problem,
    split_overrides,
    write_summary,
)
from lm.training.hashing import config_hash
from tests.analysis.conftest import make_config, make_run


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


def test_a_run_json_that_is_not_a_run_record_is_an_unreadable_row(sweep):
    jobs = sorted(sweep.iterdir(), key=lambda p: int(p.name.split("-")[0]))
    (jobs[1] / "run.json").write_text('{"foo": 1}')
    (jobs[2] / "run.json").write_text('{"status": "completed", "hash": "ab", "overrides": [1]}')
    csv_path, md_path = write_summary(sweep)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["status"] for r in rows] == ["completed", "unreadable", "unreadable"]
    assert rows[1]["overrides"] == "" and rows[1]["final_val_loss"] == ""
    assert "| 2 | - | unreadable | - | - | - | - | - |" in md_path.read_text()


GOOD = {"status": "completed", "hash": "ab" * 32, "overrides": ["seed=1"], "code": {"commit": None},
        "metrics": {"final": {"val/loss": 2.0, "val/ppl": None}, "initial": None}}


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"status": None}, "it has no status (lm train writes both)"),
    ({"status": "", "hash": None}, "it has no status and no hash (lm train writes both)"),
    ({"status": 5}, "status is a JSON number, expected a string"),
    ({"hash": ["ab"]}, "hash is a JSON array, expected a string"),
    ({"overrides": "seed=1"}, "overrides is a JSON string, expected an array"),
    ({"overrides": ["seed=1", 2]}, "overrides[1] is a JSON number, expected a string"),
    ({"code": {"commit": 5}}, "code.commit is a JSON number, expected a string"),
    ({"metrics": [2.0]}, "metrics is a JSON array, expected an object"),
    ({"metrics": {"final": 2.0}}, "metrics.final is a JSON number, expected an object"),
    ({"metrics": {"final": {"val/loss": "2.0"}}},
     "metrics.final.val/loss is a JSON string, expected a number"),
    ({"metrics": {"best": {"val/loss": True}}},
     "metrics.best.val/loss is a JSON boolean, expected a number"),
    ({"same_as": 3}, "same_as is a JSON number, expected a string"),
], ids=["good", "no-status", "neither", "status", "hash", "overrides", "override", "commit",
        "metrics", "metrics-kind", "metric-string", "metric-bool", "same_as"])
def test_record_problem_names_the_field_and_the_type_lm_train_writes(changes, problem):
    record = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    assert record_problem(record) == (problem and f"not a run record: {problem}")
