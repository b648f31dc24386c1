"""SIGINT and SIGTERM during a fit: told apart from other exits, recorded, resumable.

Lightning turns SIGTERM into ``SIGTERMException`` and a Ctrl-C (``KeyboardInterrupt``)
into ``SystemExit(1)``; ``stopping_signal`` maps what a fit raised back to the signal,
so the run record says ``interrupted`` and the process exits with 128 + signum.
"""

import signal
import threading
from typing import Self

from lightning.pytorch.utilities.exceptions import SIGTERMException


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM; its record says ``interrupted``.

    Attributes:
        signum: the signal; the process should exit with 128 + signum (130, 143).
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class SigintFlag:
    """While a fit runs: notes a SIGINT (Lightning turns the KeyboardInterrupt into
    ``SystemExit(1)``, which alone cannot tell Ctrl-C from other exits), and makes a
    SIGTERM stop the fit at once, inside a step or a validation, not at the next step
    boundary where Lightning checks for it (a step of a model too big for the machine
    can take minutes). Either is raised at the next Python instruction; one long
    native operation still finishes first. The last checkpoint is the resume point.
    A context manager; outside the main thread it installs nothing."""

    def __init__(self) -> None:
        self.received = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._handler),
                              signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_sigterm)}
        return self

    def _handler(self, signum, frame) -> None:
        self.received = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _raise_sigterm(signum, frame) -> None:
    """SIGTERM: Lightning's own exception for it (Lightning calls this handler after
    its own, which only notes the signal)."""
    raise SIGTERMException


def stopping_signal(err: BaseException, sigint: SigintFlag) -> signal.Signals | None:
    """The signal that ``err`` (raised by a fit run under ``sigint``) stands for:
    SIGTERM, SIGINT, or None for an exit no signal caused."""
    if isinstance(err, SIGTERMException):
        return signal.SIGTERM
    if isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and sigint.received):
        return signal.SIGINT
    return None
