"""What every stage script shares: logging set-up and clean errors.

A :class:`~detox.common.errors.DetoxError` is the user's to fix, so it is printed as its
message alone (no traceback) and the stage exits with status 1. So is a full disk or a
place that refuses writes met during the work (the door, :mod:`detox.common.gate`, checks both
before it, but a disk fills while a stage runs), and an interrupt (Ctrl-C, a scheduler's
SIGTERM), which exits with 128 + the signal's number. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from detox.common.allocator import keep_freed_memory
from detox.common.errors import DetoxError, error_chain

NO_SPACE = ("No space left on device", "database or disk is full", "Disk quota exceeded")  # OS, sqlite
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
REFUSED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class Interrupted(BaseException):
    """Raised by the SIGINT and SIGTERM handlers: unwinds like an exception, which ``except Exception`` in
    libraries does not swallow, so scratch folders are removed and no half-written output is left."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def run_stage(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "great_expectations", "alembic", "mlflow.store", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow prints its own run links, without the parameter that opens its UI on runs; the stages log links
    # that carry it (detox.tracking.store.ui_url). Set for the stage's process only, not by the library.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for signum in (signal.SIGINT, signal.SIGTERM):  # dvc's Ctrl-C, a scheduler's stop
        signal.signal(signum, _interrupt)
    keep_freed_memory()  # glibc keeps what a step frees for the next (detox.common.allocator); values unchanged
    try:
        main()
    except DetoxError as exc:
        _fail(str(exc), 1)
    except Interrupted as exc:
        _fail(
            f"stopped by {signal.Signals(exc.signum).name}; nothing was half-written and the previous outputs "
            "are as they were: run the stage again to finish it",
            128 + exc.signum,
        )
    except Exception as exc:
        message = environment_failure(exc)
        if message is None:
            raise
        _fail(message, 1)


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def environment_failure(exc: BaseException) -> str | None:
    """A one-line message when ``exc`` (or an error it wraps) is a full disk or a refused write; else None."""
    for error in error_chain(exc):
        code = error.errno if isinstance(error, OSError) else None
        filename = getattr(error, "filename", None) if isinstance(error, OSError) else None
        if code in NO_SPACE_ERRNOS or any(text in str(error) for text in NO_SPACE):
            where = f"{filename}'s filesystem" if filename else "a filesystem this stage writes to"
            return (
                f"no space left on {where}; free some space there (`df -h` shows where) and run the stage "
                "again (no output was left half-written)"
            )
        if code in REFUSED_ERRNOS and filename:
            return (
                f"{filename}: {error.strerror}; give this user access to it (e.g. chmod u+rwX "
                f"{Path(str(filename)).parent}) and run the stage again (no output was left half-written)"
            )
    return None
