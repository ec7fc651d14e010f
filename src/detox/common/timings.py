"""Wall-clock figures, kept out of DVC's metrics and plots.

They change on every run (the machine is never equally busy), so in ``metrics/*.json`` they
would make ``dvc metrics diff`` noisy and ``dvc.lock`` change for nothing. Each stage writes its
timings to ``logs/timings/<stage>.json`` (ignored by git, not a DVC output) and, where it has an
MLflow run, logs them there too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detox.common.io import write_json

TIMINGS_DIR = Path("logs/timings")


def write_timings(stage: str, timings: dict[str, Any], directory: Path = TIMINGS_DIR) -> Path:
    path = directory / f"{stage}.json"
    write_json(path, timings)
    return path
