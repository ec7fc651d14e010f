"""Stage ``validate``: check data/raw/*.parquet with a Great Expectations suite per split.

Writes ``reports/validation/<split>.json`` (GX validation results),
``reports/validation/data_docs/index.html`` (GX Data Docs) and
``metrics/validation.json``; exits with status 1 and the list of failed
expectations if any split fails. Run from the project root.
"""

from __future__ import annotations

from pathlib import Path

from detox.cli import run_stage
from detox.errors import DataValidationError
from detox.io import write_json
from detox.params import load_params
from detox.validation import format_failures, validate_dir

RAW_DIR = Path("data/raw")
REPORT_DIR = Path("reports/validation")
METRICS = Path("metrics/validation.json")


def main() -> None:
    params = load_params("params.yaml")
    summary = validate_dir(RAW_DIR, params.validation, REPORT_DIR)
    write_json(METRICS, summary.metrics())
    for name, split in summary.splits.items():
        status = "ok" if split.success else f"FAILED ({split.failed} failed)"
        print(f"{name}: {split.rows} rows, {split.successful}/{split.evaluated} expectations passed: {status}")
    print(f"Data Docs: {summary.data_docs_index}")
    if not summary.success:
        raise DataValidationError(format_failures(summary))


if __name__ == "__main__":
    run_stage(main)
