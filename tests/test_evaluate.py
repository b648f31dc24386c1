"""lm evaluate against the validation a training run logged (run.json)."""

import math

import pytest

from lm.cli import main as lm
from lm.training.run import run


def printed_metrics(out: str) -> dict[str, float]:
    """``key value`` lines of ``val/`` metrics (data preparation may print a note first)."""
    pairs = (line.split() for line in out.splitlines() if line.startswith("val/"))
    return {key: float(value) for key, value in pairs}


@pytest.fixture
def trained(make_cfg):
    """(record of a tiny finished run, its final checkpoint)."""
    record = run(make_cfg())
    assert record["status"] == "completed"
    return record, record["checkpoints"]["last"]


def test_evaluate_reproduces_the_runs_final_val_loss(trained, corpus, capsys):
    record, ckpt = trained
    final = record["metrics"]["final"]
    capsys.readouterr()
    assert lm(["evaluate", f"ckpt={ckpt}"]) == 0
    metrics = printed_metrics(capsys.readouterr().out)
    assert list(metrics) == ["val/loss", "val/ppl", "val/bpb"]
    assert metrics["val/loss"] == pytest.approx(final["val/loss"], abs=2e-6)
    assert metrics["val/bpb"] == pytest.approx(final["val/bpb"], abs=2e-6)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)

    # the same data given explicitly (same batch size and count) gives the same batches
    args = ["evaluate", f"ckpt={ckpt}", "data=text_file", f"data.path={corpus}",
            "data.batch_size=4", "eval_iters=2"]
    assert lm(args) == 0
    again = printed_metrics(capsys.readouterr().out)
    assert again["val/loss"] == pytest.approx(final["val/loss"], abs=2e-6)
    for key in ("eval_iters=3", "batch_size=2"):  # other batches of the run's data, another mean
        assert lm(["evaluate", f"ckpt={ckpt}", key]) == 0
        assert printed_metrics(capsys.readouterr().out)["val/loss"] != pytest.approx(
            final["val/loss"], abs=1e-6)


def test_other_text_is_encoded_with_the_checkpoints_tokenizer(trained, tmp_path, capsys):
    _, ckpt = trained
    other = tmp_path / "other.txt"
    other.write_text("A different text, with characters the run never saw: zebra quokka! " * 30)
    capsys.readouterr()
    assert lm(["evaluate", f"ckpt={ckpt}", "data=text_file", f"data.path={other}"]) == 0
    metrics = printed_metrics(capsys.readouterr().out)
    assert math.isfinite(metrics["val/loss"]) and metrics["val/bpb"] > 0


@pytest.mark.parametrize("argv, message", [
    (["eval_iters=2"], "ckpt is required"),
    (["ckpt=/no/such.ckpt"], "does not exist"),
    (["ckpt=x.ckpt", "colour=red"], "colour is not a config key"),
    (["ckpt=x.ckpt", "+colour=red"], "colour is not a config key"),
    (["ckpt=x.ckpt", "eval_iters=0"], "eval_iters=0 is invalid: must be an integer >= 1"),
    (["ckpt=x.ckpt", "batch_size=0"], "batch_size=0 is invalid: must be an integer >= 1"),
    (["ckpt=x.ckpt", "eval_iters=many"], "eval_iters=many is invalid"),
    (["ckpt=x.ckpt", "data=nosuch"], "data=nosuch is not an option; available: "),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert lm(["evaluate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
