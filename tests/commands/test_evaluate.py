"""lm evaluate against the validation a training run logged (run.json)."""

import math
import re

import pytest
import torch

from lm.cli import main as lm
from lm.data.tokens import VAL_STREAM, get_batch
from lm.training.run import run
from tests.conftest import hand_whole_split_loss, validation_ids


def printed_metrics(out: str) -> dict[str, float]:
    """``key value`` lines of ``val/`` metrics (data preparation may print a note first)."""
    pairs = (line.split() for line in out.splitlines() if line.startswith("val/"))
    return {key: float(value) for key, value in pairs}


@pytest.fixture
def trained(tiny_trained):
    """(record of a tiny finished run, its final checkpoint): the session's one."""
    return tiny_trained.record, tiny_trained.ckpt


@pytest.fixture
def corpus(tiny_trained):
    """The corpus the tiny run trained on (this module's tests evaluate on its text)."""
    return tiny_trained.corpus


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
    (["ckpt=x.ckpt", "full=true", "eval_iters=2"], "eval_iters=2 does not apply with full=true"),
    (["ckpt=x.ckpt", "data=nosuch"], "data=nosuch is not an option; available: "),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert lm(["evaluate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1




def test_full_is_the_mean_cross_entropy_over_every_validation_token(trained, corpus, capsys):
    _, ckpt = trained
    model, ids, val_text, _ = validation_ids(ckpt, corpus)
    reference, count, windows = hand_whole_split_loss(model, ids)
    assert count == len(ids) - 1 and count % model.config.block_size != 0  # a partial window
    capsys.readouterr()
    for batch in ("batch_size=3", "batch_size=64"):  # batches of 3 windows; all in one batch
        assert lm(["evaluate", f"ckpt={ckpt}", "full=true", batch]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"^# whole validation split: {count:,} tokens in {windows} windows",
                         out, re.MULTILINE), out
        metrics = printed_metrics(out)
        assert metrics["val/loss"] == pytest.approx(reference, abs=2e-6)
        assert metrics["val/ppl"] == pytest.approx(math.exp(reference), rel=1e-5)
        bpb = reference / math.log(2) * len(ids) / len(val_text.encode())
        assert metrics["val/bpb"] == pytest.approx(bpb, abs=2e-6)


def test_batch_size_sets_the_validation_batch_size_of_the_run_config(make_cfg, corpus, capsys):
    record = run(make_cfg("data.eval_batch_size=2"))  # training batches of 4, validation of 2
    ckpt, final = record["checkpoints"]["last"], record["metrics"]["final"]["val/loss"]
    model, ids, _, seed = validation_ids(ckpt, corpus)
    T = model.config.block_size
    with torch.no_grad():  # eval_iters=2 batches of 3 windows from the validation stream
        reference = sum(model(*get_batch(ids.numpy(), T, 3, seed, i, VAL_STREAM))[1].item()
                        for i in range(2)) / 2
    capsys.readouterr()
    assert lm(["evaluate", f"ckpt={ckpt}"]) == 0  # the run's own validation batches
    assert printed_metrics(capsys.readouterr().out)["val/loss"] == pytest.approx(final, abs=2e-6)
    assert lm(["evaluate", f"ckpt={ckpt}", "batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert "# sampled validation batches: 2 batches of 3 windows" in out
    assert printed_metrics(out)["val/loss"] == pytest.approx(reference, abs=2e-6)
    assert reference != pytest.approx(final, abs=1e-4)  # the override did change the batches
