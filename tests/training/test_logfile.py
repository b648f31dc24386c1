"""train.log (lm/training/logfile.py): what a run prints, minus progress bars."""

import logging
import sys

import lightning.pytorch  # noqa: F401 - sets its loggers up as in a run

from lm.training.logfile import tee_output


def test_printed_lines_and_lightning_records_reach_the_log_without_progress_bars(tmp_path, capsys,
                                                                               monkeypatch):
    # A handler an earlier test left on a closed stream must not print its error here.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    log = tmp_path / "train.log"
    handlers = list(logging.getLogger("lightning.pytorch").handlers)
    with tee_output(log):
        print("tokenizing 5,057,198 characters")
        sys.stderr.write("\rEpoch 0:  10%|#         | 1/10 [00:00<00:01, 8.1it/s]")
        sys.stderr.write("\rEpoch 0: 100%|##########| 10/10 [00:01<00:00, 8.1it/s]\n")
        print("warning: something", file=sys.stderr)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("`Trainer.fit` stopped")
        print("no newline at the end", end="")
    assert log.read_text().splitlines() == [
        "tokenizing 5,057,198 characters", "warning: something", "`Trainer.fit` stopped",
        "no newline at the end"]
    out, err = capsys.readouterr()  # the terminal still sees everything, bars included
    assert out == "tokenizing 5,057,198 characters\nno newline at the end"
    assert "10/10" in err and "warning: something" in err
    assert logging.getLogger("lightning.pytorch").handlers == handlers  # its handler removed


def test_an_unwritable_log_leaves_output_alone(tmp_path, capsys):
    with tee_output(tmp_path / "missing" / "train.log"):
        print("still printed")
    assert capsys.readouterr().out == "still printed\n"
