"""stopping: the process's request to stop, set by SIGTERM or SIGINT, honoured by long jobs at safe points.

Contract: `install()` (only `deeplog-siem run` calls it) makes the first SIGTERM or SIGINT set the process's
stop flag, which it returns; a second signal logs that the process exits at once and ends it with exit code
128 + the signal number, without waiting for the running job (what a supervisor's SIGKILL would do, minus
the wait). `check(what)` raises `JobStopped` once the flag is set: training calls it between epochs and
before it publishes, fine-tuning between steps, so a stopped job publishes nothing and `runs.recorded`
records it `stopped`. Without `install()` the flag is never set and `check` does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from .errors import JobStopped

log = logging.getLogger(__name__)

_requested = threading.Event()


def requested() -> bool:
    """Whether a stop was requested."""
    return _requested.is_set()


def check(what: str) -> None:
    """Raise `JobStopped` (naming `what` was stopped) once a stop was requested; a safe point of a long job."""
    if _requested.is_set():
        raise JobStopped(f"{what} stopped: the process was asked to stop")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if not _requested.is_set():
        # Set before logging: a second signal can arrive while the line is written (the handler runs again
        # inside this one), and must find the first one counted.
        _requested.set()
        log.info(
            "received %s: stopping once the running job reaches a safe point (again to exit at once)", name
        )
        return
    log.critical("received %s again: exiting at once, without waiting for the running job", name)
    for h in logging.getLogger().handlers:
        h.flush()
    # Not sys.exit: that would wait for the job's thread, which is what the second signal refuses.
    os._exit(128 + signum)


def install() -> threading.Event:
    """Handle SIGTERM and SIGINT as the contract says (main thread only) -> the stop flag they set."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _on_signal)
    return _requested
