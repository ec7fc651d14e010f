"""The gate every stage after ``validate`` passes first: it runs only on data that passed validation.

Kept apart from :mod:`detox.validation` (the Great Expectations suites), so that the training stages
depend on this small file and not on the suites' code.
"""

from __future__ import annotations

import json
from pathlib import Path

from detox.errors import DataValidationError

VALIDATION_METRICS = Path("metrics/validation.json")  # the splits
LABELLED_METRICS = Path("metrics/validation_labelled.json")  # the reward stage's labelled data


def require_validated(path: str | Path = VALIDATION_METRICS) -> None:
    """Refuse to go on unless the validate stage passed on the data (its metrics file says so).

    Stages after validate call this first: run directly (``python stages/ppo.py``) on data whose
    validation failed, or was never run, they stop with the failed expectations instead of training on it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: not found; this stage runs only on validated data: run "
                                  "`dvc repro validate` (or `python stages/validate.py`) first")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataValidationError(f"{path}: not valid JSON ({exc}); run `dvc repro validate` again") from None
    if record.get("success") is True:
        return
    failures = record.get("failures") or ["(no details recorded)"]
    raise DataValidationError(
        f"{path} says the data failed validation, so this stage does not run on it:\n  - "
        + "\n  - ".join(failures)
        + "\nFix the data (Data Docs: reports/validation/data_docs/index.html), then run `dvc repro`."
    )


