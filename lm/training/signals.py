"""SIGINT and SIGTERM during a fit: told apart from other exits, recorded, resumable.

Lightning turns SIGTERM into ``SIGTERMException`` and a Ctrl-C (``KeyboardInterrupt``)
into ``SystemExit(1)``; ``stopping_signal`` maps what a fit raised back to the signal,
so the run record says ``interrupted`` and the process exits with 128 + signum.
"""

import contextlib
import os
import signal
import threading
from collections.abc import Callable
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
    A context manager; outside the main thread it installs nothing.

    One long native operation (a step of a model far too big for the machine) would
    keep the signal from being handled for minutes, so a watchdog thread hears each
    signal at once (``signal.set_wakeup_fd``) and, if the fit has not ended
    ``grace_s`` seconds later, calls ``on_stuck(signum)`` (the run records itself
    interrupted) and ends the process with 128 + signum; its last checkpoint resumes.
    """

    def __init__(self, on_stuck: Callable[[signal.Signals], None] | None = None,
                 grace_s: float = 10.0) -> None:
        self.received = False
        self._previous: dict[int, object] = {}
        self.on_stuck, self.grace_s = on_stuck, grace_s
        self._ended = threading.Event()
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._handler),
                              signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_sigterm)}
            read, write = self._pipe = os.pipe()
            os.set_blocking(write, False)
            self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(read,), daemon=True).start()
        return self

    def _watch(self, read: int) -> None:
        """Wait for a SIGINT or SIGTERM; if the fit is still running ``grace_s`` later,
        record it (``on_stuck``) and end the process."""
        with open(read, "rb", buffering=0) as pipe:  # closed when the fit ends
            while not self._ended.is_set():
                data = pipe.read(1)
                if not data or self._ended.is_set():
                    return
                if data[0] not in (signal.SIGINT, signal.SIGTERM):
                    continue
                if self._ended.wait(self.grace_s):
                    return
                signum = signal.Signals(data[0])
                if self.on_stuck is not None:
                    self.on_stuck(signum)
                os._exit(128 + signum)

    def _handler(self, signum, frame) -> None:
        self.received = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        self._ended.set()
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            with contextlib.suppress(OSError):  # the watchdog may have gone already
                os.write(self._pipe[1], b"\0")  # wakes it: it sees the fit ended
            os.close(self._pipe[1])
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
