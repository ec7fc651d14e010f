"""The door every stage passes before any work: its inputs exist, its data passed validation, its
outputs can be written and have room.

- A missing input names the stage that makes it, so ``python stages/ppo.py`` in a fresh clone says
  which stage to run first (a missing model folder is never handed to ``from_pretrained``, which
  would take ``models/policy`` for a Hugging Face Hub id and retry the network).
- Stages after ``validate`` run only on data that passed: the validation metrics among their inputs
  must say so.
- Every output location must accept a new file, and its filesystem must have room: about twice what
  the stage's outputs take now (the new outputs are written beside the old ones before these are
  removed, and DVC's cache, or MLflow's artifact store, keeps a copy), plus a reserve for a first run
  and for logs, ``DETOX_MIN_FREE_MB`` (default 100).

Kept apart from :mod:`detox.data.validation` (the Great Expectations suites), so that the stages depend on
this small file and not on the suites' code.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from detox.common.errors import DataValidationError, MissingInputError, OutputLocationError
from detox.common.io import cannot_create_files, nearest_existing

VALIDATION_METRICS = Path("metrics/validation.json")  # the splits
LABELLED_METRICS = Path("metrics/validation_labelled.json")  # the reward stage's labelled data

STAGES = ("fetch", "validate", "sft", "reward", "judges", "baseline", "ppo", "evaluate")  # the order of dvc.yaml
# Which stage writes what (its outputs in dvc.yaml): a missing input is looked up here, longest prefix first.
PRODUCERS = {
    "data/raw": "fetch",
    "data/labelled": "fetch",
    "models/base": "fetch",
    "reports/validation": "validate",
    str(VALIDATION_METRICS): "validate",
    str(LABELLED_METRICS): "validate",
    "models/policy": "sft",
    "models/reward": "reward",
    "models/judges": "judges",
    "data/scored/baseline.parquet": "baseline",
    "metrics/baseline.json": "baseline",
    "models/ppo": "ppo",
    "plots/ppo": "ppo",
}

RESERVE_ENV = "DETOX_MIN_FREE_MB"
DEFAULT_RESERVE_MB = 100.0
MB = 1_000_000


def ready(stage: str, inputs: Sequence[str | Path], outputs: Sequence[str | Path]) -> None:
    """Raise a one-line :class:`~detox.common.errors.DetoxError` unless ``stage`` can start: every input exists,
    the validation metrics among them say the data passed, and every output can be written and has room.

    Failed validation is reported first: it is the cause to fix even when later inputs are missing too."""
    for path in inputs:
        if Path(path) in (VALIDATION_METRICS, LABELLED_METRICS) and Path(path).exists():
            require_validated(path)
    require_inputs(stage, inputs)
    require_writable(stage, outputs)


def producer(path: str | Path) -> str:
    """The stage whose outputs hold ``path`` (a relative path of the project)."""
    parts = Path(path).parts
    for length in range(len(parts), 0, -1):
        found = PRODUCERS.get(Path(*parts[:length]).as_posix())
        if found:
            return found
    raise ValueError(f"{path}: no stage of dvc.yaml writes it (add it to detox.common.gate.PRODUCERS)")


def require_inputs(stage: str, inputs: Iterable[str | Path]) -> None:
    """Raise :class:`MissingInputError` naming every missing input and the stages to run first."""
    missing: dict[str, list[str]] = {}
    for path in inputs:
        if not Path(path).exists():
            missing.setdefault(producer(path), []).append(Path(path).as_posix())
    if not missing:
        return
    first = sorted(missing, key=STAGES.index)
    detail = "; ".join(f"{', '.join(missing[name])} (made by {name})" for name in first)
    raise MissingInputError(
        f"{stage} cannot start, its inputs are missing: {detail}. Run `dvc repro "
        f"{' '.join(first)}` first, or `dvc repro {stage}` to run them and then {stage}"
    )


def require_validated(path: str | Path = VALIDATION_METRICS) -> None:
    """Refuse to go on unless the validate stage passed on the data (its metrics file says so).

    Stages after validate call this first: run directly (``python stages/ppo.py``) on data whose
    validation failed, or was never run, they stop with the failed expectations instead of training on it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(
            f"{path}: not found; this stage runs only on validated data: run "
            "`dvc repro validate` (or `python stages/validate.py`) first"
        )
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


def require_writable(stage: str, outputs: Iterable[str | Path]) -> None:
    """Raise :class:`OutputLocationError` when a folder an output is created in refuses a new file, or
    when a filesystem has less room than :func:`space_needed` asks for."""
    outputs = list(outputs)
    for folder in dict.fromkeys(nearest_existing(Path(output).parent) for output in outputs):
        reason = cannot_create_files(folder)
        if reason:
            raise OutputLocationError(
                f"{folder} cannot be written ({reason}), and {stage} writes its outputs "
                f"there; make it writable (e.g. chmod u+w {folder}) or run as its owner"
            )
    for folder, needed in space_needed(outputs).items():
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise OutputLocationError(
                f"{folder}: {free / MB:.1f} MB free on its filesystem, but {stage} needs about {needed / MB:.1f} MB "
                f"there (twice what its outputs take now, plus a reserve of {reserve_mb():g} MB, {RESERVE_ENV}); "
                f"free some space (`df -h {folder}`), or set {RESERVE_ENV} lower if you know it needs less"
            )


def space_needed(outputs: Iterable[str | Path]) -> dict[Path, int]:
    """Bytes to have free, by filesystem (named by the first folder on it where an output is created): twice
    the size the outputs on that filesystem have now, plus the reserve."""
    needed: dict[int, tuple[Path, int]] = {}
    for output in outputs:
        folder = nearest_existing(Path(output).parent)
        device = folder.stat().st_dev
        first, total = needed.get(device, (folder, 0))
        needed[device] = (first, total + 2 * _size(Path(output)))
    reserve = int(reserve_mb() * MB)
    return {folder: total + reserve for folder, total in needed.values()}


def reserve_mb() -> float:
    value = os.environ.get(RESERVE_ENV, "").strip()
    if not value:
        return DEFAULT_RESERVE_MB
    try:
        reserve = float(value)
    except ValueError:
        reserve = -1.0
    if not reserve >= 0:
        raise OutputLocationError(
            f"{RESERVE_ENV} is {value!r}: set it to the megabytes to keep free beyond "
            f"a stage's outputs (a number >= 0; default {DEFAULT_RESERVE_MB:g})"
        )
    return reserve


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())
    return path.stat().st_size if path.is_file() else 0
