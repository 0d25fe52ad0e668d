"""The one exception type that reaches the user as a single line.

Everything the user can get wrong (a file, a field, a name, a value) raises ``StudyInputError`` with a
message that names the file, line, field and what was expected. The command line prints the message
alone (no traceback) and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StudyInputError(ValueError):
    """Bad input from the user: a one-line message that says what was expected."""


class Unavailable(StudyInputError):
    """What this machine or command lacks for a real run (CUDA, a data folder), not a wrong value: a
    dry run reports it as a need instead of failing."""


class DataError(StudyInputError):
    """A data file that is missing or malformed (message names file, line and field)."""


def one_of(kind: str, value: object, valid) -> StudyInputError:
    """``unknown <kind> 'value'; valid: a, b, c`` as an error to raise."""
    return StudyInputError(f"unknown {kind} {value!r}; valid: {', '.join(sorted(map(str, valid)))}")


class StudyFault(RuntimeError):
    """The environment failed under a running study (disk full, a store that became read-only or
    unreachable, a trial that failed for a reason other than a diverging loss): one line for the user,
    after the study's and the trial's MLflow runs were ended FAILED with the reason."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by Slurm, Kubernetes, ``timeout`` and ``kill``): handled exactly like Ctrl-C (a
    ``KeyboardInterrupt``), so a run has one way to end when it is stopped from outside."""


def interrupt_reason(error: BaseException) -> str:
    """What stopped a run, for its MLflow status reason and the user's message."""
    return "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted (Ctrl-C)"


def interrupt_exit_code(error: BaseException) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 143 if isinstance(error, Terminated) else 130


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread (wherever it is, as
    Ctrl-C raises ``KeyboardInterrupt``); a second SIGTERM during the clean-up that follows is ignored, so
    the runs can be ended (SIGKILL still stops the process). Outside the main thread: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _HELD["depth"]:  # inside a store write (sigterm_held): raised when it is done
            _HELD["pending"] = True
            return
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    _HELD["pending"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_HELD = {"depth": 0, "pending": False}


@contextlib.contextmanager
def sigterm_held():
    """A SIGTERM that :func:`sigterm_as_interrupt` turns into :class:`Terminated` waits until the block is
    done, then is raised. For writes to a store: one cut in the middle of a commit leaves SQLite's write lock
    with the interrupted connection, and the clean-up that ends the runs then finds the database locked
    (seen when torchrun's SIGTERM hit a failed trial's last metrics). Outside the main thread: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _HELD["depth"] += 1
    try:
        yield
    finally:
        _HELD["depth"] -= 1
        if not _HELD["depth"] and _HELD["pending"]:
            _HELD["pending"] = False
            raise Terminated("terminated (SIGTERM)")
