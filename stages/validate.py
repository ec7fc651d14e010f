"""Stage ``validate``: check data/raw/*.parquet with a Great Expectations suite per split, and the
reward stage's labelled data (data/labelled/labelled.parquet) with a suite of its own.

Writes ``reports/validation/<split>.json`` and ``labelled.json`` (GX validation results),
``reports/validation/data_docs/index.html`` (GX Data Docs) and ``metrics/validation.json`` (the splits)
and ``metrics/validation_labelled.json``; exits with status 1 and the list of failed expectations if any
split fails. Run from the project root.
"""

from __future__ import annotations

from pathlib import Path

from detox.common.cli import run_stage
from detox.common.errors import DataValidationError
from detox.common.gate import LABELLED_METRICS as LABELLED_METRICS_PATH
from detox.common.gate import VALIDATION_METRICS, ready
from detox.common.io import write_json
from detox.common.params import load_params
from detox.data.reading import SPLITS
from detox.data.validation.failures import format_failures
from detox.data.validation.inputs import read_labelled
from detox.data.validation.run import LABELLED as LABELLED_NAME
from detox.data.validation.run import validate_dir

RAW_DIR = Path("data/raw")
LABELLED = Path("data/labelled/labelled.parquet")
REWARD_BASE = Path("models/base/reward")
REPORT_DIR = Path("reports/validation")
METRICS = VALIDATION_METRICS  # the splits: what sft, baseline, ppo and evaluate depend on
LABELLED_METRICS = LABELLED_METRICS_PATH  # the labelled data: what reward depends on
INPUTS = (*(RAW_DIR / f"{split}.parquet" for split in SPLITS), LABELLED, REWARD_BASE / "config.json")
OUTPUTS = (REPORT_DIR, METRICS, LABELLED_METRICS)


def main() -> None:
    params = load_params("params.yaml")
    ready("validate", INPUTS, OUTPUTS)
    labelled = read_labelled(LABELLED, REWARD_BASE, params.reward.toxic_label, params.validation.labelled)
    summary = validate_dir(RAW_DIR, params.validation, REPORT_DIR, labelled)
    metrics = summary.metrics()
    labelled_split = metrics["splits"].pop(LABELLED_NAME)
    metrics["success"] = all(split["success"] for split in metrics["splits"].values())
    # The failures, for the stages after validate: they refuse to run on failed data and say why.
    metrics["failures"] = [f.describe() for f in summary.failures if f.split != LABELLED_NAME]
    labelled_split["failures"] = [f.describe() for f in summary.failures if f.split == LABELLED_NAME]
    write_json(METRICS, metrics)
    write_json(LABELLED_METRICS, labelled_split)
    for name, split in summary.splits.items():
        status = "ok" if split.success else f"FAILED ({split.failed} failed)"
        print(f"{name}: {split.rows} rows, {split.successful}/{split.evaluated} expectations passed: {status}")
    print(f"Data Docs: {summary.data_docs_index}")
    if not summary.success:
        raise DataValidationError(format_failures(summary))


if __name__ == "__main__":
    run_stage(main)
