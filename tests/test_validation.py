"""The validate stage: a Great Expectations suite per split, its reports and its failures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from conftest import HANG_S
from detox.common.errors import DataValidationError
from detox.common.params import Bounds, ValidateParams
from detox.data.validation.failures import FailedExpectation, format_failures
from detox.data.validation.run import ValidationSummary, validate_dir, validate_splits

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "stages" / "validate.py"

CFG = ValidateParams(
    min_rows={"train": 5, "validation": 2, "test": 2},
    dialogue_chars=Bounds(min=20, max=400),
    summary_chars=Bounds(min=5, max=200),
)
SIZES = {"train": 30, "validation": 10, "test": 10}
PREFIX = {"train": "tr", "validation": "va", "test": "te"}


def make_split(split: str, rows: int) -> pd.DataFrame:
    prefix = PREFIX[split]
    return pd.DataFrame(
        {
            "id": [f"{prefix}-{i}" for i in range(rows)],
            "dialogue": [
                f"#Person1#: Hello, this is {split} dialogue {i}.\n#Person2#: Hi, nice to meet you."
                for i in range(rows)
            ],
            "summary": [f"Two people greet each other ({split} {i})." for i in range(rows)],
            "topic": ["greeting" if i % 2 else "small talk" for i in range(rows)],
        }
    )


def good_splits() -> dict[str, pd.DataFrame]:
    return {split: make_split(split, rows) for split, rows in SIZES.items()}


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ValidationSummary, Path]:
    report_dir = tmp_path_factory.mktemp("valid") / "reports" / "validation"
    return validate_splits(good_splits(), CFG, report_dir), report_dir


@pytest.fixture
def run_bad(tmp_path: Path) -> Callable[[Callable[[dict[str, pd.DataFrame]], None]], ValidationSummary]:
    """Validate the good splits after ``spoil`` changed them in place."""

    def run(spoil: Callable[[dict[str, pd.DataFrame]], None]) -> ValidationSummary:
        splits = good_splits()
        spoil(splits)
        return validate_splits(splits, CFG, tmp_path / "reports" / "validation")

    return run


def failed(summary: ValidationSummary) -> set[tuple[str, str, str | None]]:
    return {(f.split, f.expectation, f.column) for f in summary.failures}


def only_failure(summary: ValidationSummary, split: str, expectation: str, column: str | None) -> FailedExpectation:
    assert not summary.success
    assert failed(summary) == {(split, expectation, column)}, format_failures(summary)
    (failure,) = summary.failures
    assert failure.error is None, failure.error
    assert summary.splits[split].success is False
    assert all(s.success for name, s in summary.splits.items() if name != split)
    return failure


# --- the good case --------------------------------------------------------------------


def test_valid_splits_pass_and_write_reports(valid_run: tuple[ValidationSummary, Path]) -> None:
    summary, report_dir = valid_run
    assert summary.success, format_failures(summary)
    assert summary.failures == []
    assert format_failures(summary) == "all expectations passed"
    assert list(summary.splits) == ["train", "validation", "test"]
    for split, rows in SIZES.items():
        result = summary.splits[split]
        assert result.rows == rows
        assert result.evaluated >= 15  # existence, types, nulls, lengths, unique, regex, leaks, rows
        assert result.successful == result.evaluated and result.failed == 0
        payload = json.loads((report_dir / f"{split}.json").read_text())
        assert payload["success"] is True
        assert payload["suite_name"] == split
        assert payload["statistics"]["evaluated_expectations"] == result.evaluated
        kinds = {r["expectation_config"]["type"] for r in payload["results"]}
        assert {
            "expect_table_row_count_to_be_between",
            "expect_column_to_exist",
            "expect_column_values_to_be_of_type",
            "expect_column_values_to_not_be_null",
            "expect_column_value_lengths_to_be_between",
            "expect_column_values_to_be_unique",
            "expect_column_values_to_match_regex",
        } <= kinds
    # Cross-split checks run once per pair, on the earlier split of the pair.
    train = json.loads((report_dir / "train.json").read_text())
    leaks = {
        (r["expectation_config"]["kwargs"]["column"], r["expectation_config"]["meta"]["other_split"])
        for r in train["results"]
        if r["expectation_config"]["type"] == "expect_column_values_to_not_be_in_set"
    }
    assert leaks == {("id", "validation"), ("id", "test"), ("dialogue", "validation"), ("dialogue", "test")}

    docs = report_dir / "data_docs"
    assert summary.data_docs_index == docs / "index.html"
    index = (docs / "index.html").read_text()
    assert "Great Expectations" in index or "great_expectations" in index.lower()
    for split in SIZES:
        assert (docs / "expectations" / f"{split}.html").is_file()
        assert f"validations/{split}/" in index
    assert len(list((docs / "validations").rglob("*.html"))) == 3


def test_metrics_payload(valid_run: tuple[ValidationSummary, Path]) -> None:
    summary, _ = valid_run
    metrics = summary.metrics()
    assert metrics["success"] is True
    assert set(metrics["splits"]) == set(SIZES)
    assert metrics["splits"]["train"]["rows"] == 30
    assert set(metrics["splits"]["test"]) == {"rows", "evaluated", "successful", "success"}
    json.dumps(metrics)


# --- one crafted fault per test -------------------------------------------------------


def test_null_dialogue(run_bad) -> None:
    def spoil(s):
        s["validation"].loc[3, "dialogue"] = None

    failure = only_failure(run_bad(spoil), "validation", "expect_column_values_to_not_be_null", "dialogue")
    assert failure.unexpected_count == 1
    assert failure.element_count == 10
    assert failure.example_ids == ["va-3"]
    assert "validation: expect_column_values_to_not_be_null(dialogue) failed: 1 unexpected of 10 rows" in (
        failure.describe()
    )
    assert "va-3" in failure.describe()


def test_empty_summary(run_bad) -> None:
    def spoil(s):
        s["test"].loc[5, "summary"] = ""

    summary = run_bad(spoil)
    failure = only_failure(summary, "test", "expect_column_value_lengths_to_be_between", "summary")
    assert failure.examples == [""]
    assert failure.example_ids == ["te-5"]
    assert "test: expect_column_value_lengths_to_be_between(summary) failed: 1 unexpected of 10 rows" in (
        format_failures(summary)
    )


def test_duplicate_id(run_bad) -> None:
    def spoil(s):
        s["train"].loc[5, "id"] = "tr-4"

    summary = run_bad(spoil)
    failure = only_failure(summary, "train", "expect_column_values_to_be_unique", "id")
    assert failure.unexpected_count == 2
    assert failure.examples == ["tr-4", "tr-4"]
    assert (
        "train: expect_column_values_to_be_unique(id) failed: 2 unexpected of 30 rows, e.g. ['tr-4', 'tr-4']"
        in format_failures(summary)
    )


def test_id_leaked_across_splits(run_bad) -> None:
    def spoil(s):
        s["test"].loc[2, "id"] = "tr-7"

    summary = run_bad(spoil)
    failure = only_failure(summary, "train", "expect_column_values_to_not_be_in_set", "id")
    assert failure.examples == ["tr-7"]
    assert "shared with the test split" in failure.describe()


def test_dialogue_leaked_across_splits(run_bad) -> None:
    leaked = make_split("train", 30).loc[9, "dialogue"]

    def spoil(s):
        s["validation"].loc[1, "dialogue"] = leaked

    summary = run_bad(spoil)
    failure = only_failure(summary, "train", "expect_column_values_to_not_be_in_set", "dialogue")
    assert failure.example_ids == ["tr-9"]
    (example,) = failure.examples
    assert example.endswith("…") and leaked.startswith(example[:-1])  # long values are cut short
    assert "shared with the validation split" in failure.describe()


def test_empty_split(run_bad) -> None:
    def spoil(s):
        s["test"] = s["test"].iloc[0:0]

    summary = run_bad(spoil)
    failure = only_failure(summary, "test", "expect_table_row_count_to_be_between", None)
    assert failure.observed == 0
    assert summary.splits["test"].rows == 0
    assert "test: expect_table_row_count_to_be_between failed: 0 rows; expected at least 2 rows" in (
        format_failures(summary)
    )


def test_missing_column_is_named_and_other_checks_still_run(run_bad) -> None:
    def spoil(s):
        s["validation"] = s["validation"].drop(columns=["summary"])
        s["validation"].loc[4, "id"] = "va-3"  # a second fault, found despite the missing column

    summary = run_bad(spoil)
    assert failed(summary) == {
        ("validation", "expect_column_to_exist", "summary"),
        ("validation", "expect_column_values_to_be_unique", "id"),
    }, format_failures(summary)
    assert all(f.error is None for f in summary.failures)
    text = format_failures(summary)
    assert "validation: expect_column_to_exist(summary) failed: column 'summary' is missing" in text
    assert summary.splits["validation"].successful >= 10


def test_dialogue_not_in_turn_format(run_bad) -> None:
    def spoil(s):
        s["train"].loc[3, "dialogue"] = "Person1: Hello there.\nPerson2: Hi, how are you?"

    failure = only_failure(run_bad(spoil), "train", "expect_column_values_to_match_regex", "dialogue")
    assert failure.example_ids == ["tr-3"]
    assert failure.examples == ["Person1: Hello there.\nPerson2: Hi, how are you?"]
    assert f'expected values matching the regex "{CFG.turn_pattern}"' in failure.describe()


def test_dialogue_too_long(run_bad) -> None:
    long = "#Person1#: " + "blah " * 200  # 1011 chars > 400

    def spoil(s):
        s["test"].loc[0, "dialogue"] = long

    failure = only_failure(run_bad(spoil), "test", "expect_column_value_lengths_to_be_between", "dialogue")
    assert failure.example_ids == ["te-0"]
    (example,) = failure.examples
    assert long.startswith(example.rstrip("…")) and len(example) <= 60  # cut short for the message
    assert "length 20..400 chars" in failure.describe()


def test_missing_split_file_names_it(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    make_split("train", 5).to_parquet(raw / "train.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"validation\.parquet: split file not found"):
        validate_dir(raw, CFG, tmp_path / "reports")


# --- the stage script -----------------------------------------------------------------


def _project(tmp_path: Path, splits: dict[str, pd.DataFrame]) -> Path:
    (tmp_path / "params.yaml").write_text(
        "validation:\n  min_rows: {train: 5, validation: 2, test: 2}\n  labelled: {min_rows: 10}\n",
        encoding="utf-8",
    )
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    for split, frame in splits.items():
        frame.to_parquet(raw / f"{split}.parquet", index=False)
    labelled = tmp_path / "data" / "labelled"
    labelled.mkdir()
    pd.DataFrame({"text": [f"sentence number {i}" for i in range(20)], "label": ["hate", "nothate"] * 10}).to_parquet(
        labelled / "labelled.parquet", index=False
    )
    reward = tmp_path / "models" / "base" / "reward"
    reward.mkdir(parents=True)
    (reward / "config.json").write_text(json.dumps({"id2label": {"0": "nothate", "1": "hate"}}), encoding="utf-8")
    return tmp_path


def test_stage_main_passes_on_good_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    project = _project(tmp_path, good_splits())
    monkeypatch.chdir(project)
    spec = importlib.util.spec_from_file_location("validate_stage", STAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["success"] is True
    assert metrics["splits"]["validation"]["rows"] == 10
    assert (project / "reports" / "validation" / "data_docs" / "index.html").is_file()
    out = capsys.readouterr().out
    assert "train: 30 rows" in out and "labelled: 20 rows, 11/11 expectations passed: ok" in out
    assert json.loads((project / "metrics" / "validation_labelled.json").read_text())["success"] is True
    assert not (project / "gx").exists()


def test_stage_script_fails_cleanly_on_bad_data(tmp_path: Path) -> None:
    splits = good_splits()
    splits["test"].loc[1, "id"] = "te-0"
    splits["validation"].loc[2, "dialogue"] = "no speaker tags in this dialogue at all"
    project = _project(tmp_path, splits)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(STAGE)], cwd=project, env=env, capture_output=True, text=True, timeout=HANG_S
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: data validation failed (2 failed expectation(s))" in proc.stderr
    assert "test: expect_column_values_to_be_unique(id) failed: 2 unexpected of 10 rows" in proc.stderr
    assert "validation: expect_column_values_to_match_regex(dialogue) failed: 1 unexpected of 10 rows" in proc.stderr
    metrics = json.loads((project / "metrics" / "validation.json").read_text())
    assert metrics["success"] is False
    assert metrics["splits"]["test"]["success"] is False and metrics["splits"]["train"]["success"] is True
    assert (project / "reports" / "validation" / "test.json").is_file()
    assert (project / "reports" / "validation" / "data_docs" / "index.html").is_file()
    assert not (project / "gx").exists()
