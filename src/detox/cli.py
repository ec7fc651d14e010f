"""What every stage script shares: logging set-up and clean errors.

A :class:`~detox.errors.DetoxError` is the user's to fix, so it is printed as its
message alone (no traceback) and the stage exits with status 1; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

from detox.errors import DetoxError


def run_stage(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "great_expectations", "alembic", "mlflow.store", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A killed stage (dvc's Ctrl-C, a scheduler's SIGTERM) unwinds like an exception, so
    # scratch folders are removed and no half-written output is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        main()
    except DetoxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
