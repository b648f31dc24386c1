"""A run's ``train.log``: what the run printed, minus progress bars.

Hydra gives each job a ``train.log`` for Python's ``logging``, but a run prints its
lines (``skip ...``, ``tokenizing ...``, ``target reached ...``, errors) and Lightning
logs through handlers of its own, so that file stayed empty. ``tee_output`` copies
standard output, standard error and Lightning's log records into it while a run goes,
leaving out what tqdm redraws in place (progress bars) and terminal control codes.
"""

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# A tqdm bar ("Epoch 0:  45%|####5     | 9/20 [00:01<00:01, 8.1it/s]"), a line tqdm
# redraws, or an ANSI cursor move: none belongs in a log file.
_PROGRESS = re.compile(r"\d+%\||\d+it \[|it/s\]|s/it\]|\x1b\[")
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


class _Tee:
    """A text stream writing to ``stream`` as it is, and to ``log`` line by line without
    progress bars (a line redrawn with ``\\r`` keeps its last drawing)."""

    def __init__(self, stream: TextIO, log: TextIO):
        self.stream, self.log, self._line = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *done, rest = (self._line + text).split("\n")
        self._line = rest.rsplit("\r", 1)[-1]  # a bar redrawn in place: its last drawing
        for line in done:
            self._log(line)
        return len(text)

    def _log(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1]
        if line.strip() and not _PROGRESS.search(line):
            self.log.write(line + "\n")
            self.log.flush()

    def flush(self) -> None:
        self.stream.flush()

    def close_line(self) -> None:
        """Log a last line that ended without a newline."""
        self._log(self._line)
        self._line = ""

    def __getattr__(self, name: str):  # isatty, fileno, encoding: the terminal's
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path: Path) -> Iterator[None]:
    """While the block runs, append what is printed (stdout, stderr) and what Lightning
    logs to ``path``, progress bars left out; the terminal sees everything as before.
    A ``path`` whose dir cannot be written leaves output untouched."""
    try:
        log = path.open("a", encoding="utf-8")
    except OSError:
        yield
        return
    out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    handler = logging.StreamHandler(log)  # Lightning prints them itself
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in _LIGHTNING_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        sys.stdout, sys.stderr = saved
        out.close_line()
        err.close_line()
        log.close()
