"""Running the suites with Great Expectations: an in-memory context, result JSON and Data Docs per split."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from detox.common.errors import DataValidationError, ParamsError
from detox.common.io import atomic_dir, write_json
from detox.common.params import ValidateParams
from detox.data.reading import SPLITS
from detox.data.validation.failures import EXAMPLES, FailedExpectation, failure_of
from detox.data.validation.inputs import LabelledData, read_splits
from detox.data.validation.suites import distinct, labelled_suite, split_suite, with_toxic_column

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation

DATA_DOCS_DIR = "data_docs"
DATA_DOCS_SITE = "local_site"
LABELLED = "labelled"


@dataclass(frozen=True)
class SplitSummary:
    split: str
    rows: int
    success: bool
    evaluated: int
    successful: int
    failed: int
    failures: list[FailedExpectation]
    result_path: Path


@dataclass(frozen=True)
class ValidationSummary:
    splits: dict[str, SplitSummary]
    data_docs_index: Path

    @property
    def success(self) -> bool:
        return all(split.success for split in self.splits.values())

    @property
    def failures(self) -> list[FailedExpectation]:
        return [failure for split in self.splits.values() for failure in split.failures]

    def metrics(self) -> dict[str, Any]:
        """The numbers the stage writes to ``metrics/validation.json``."""
        return {
            "success": self.success,
            "splits": {
                name: {
                    "rows": split.rows,
                    "evaluated": split.evaluated,
                    "successful": split.successful,
                    "success": split.success,
                }
                for name, split in self.splits.items()
            },
        }


def validate_dir(
    raw_dir: str | Path, cfg: ValidateParams, report_dir: str | Path, labelled: LabelledData | None = None
) -> ValidationSummary:
    """Read ``<raw_dir>/<split>.parquet`` for every split and validate them together (and ``labelled``)."""
    return validate_splits(read_splits(raw_dir), cfg, Path(report_dir), labelled)


def validate_splits(
    splits: Mapping[str, pd.DataFrame],
    cfg: ValidateParams,
    report_dir: str | Path,
    labelled: LabelledData | None = None,
) -> ValidationSummary:
    """Validate every split with its GX suite; write result JSON and Data Docs under ``report_dir``.

    Returns a :class:`ValidationSummary`; it does not raise on failed expectations
    (the caller decides), only on a configuration it cannot use.
    """
    try:
        re.compile(cfg.turn_pattern)
    except re.error as exc:
        raise ParamsError(f"validation.turn_pattern: not a valid regular expression: {exc}") from None

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    names = _ordered(splits)

    with atomic_dir(report_dir / DATA_DOCS_DIR) as docs_dir:
        context = _ephemeral_context(docs_dir)
        source = context.data_sources.add_pandas("raw")
        results: dict[str, SplitSummary] = {}
        for position, name in enumerate(names):
            frame = splits[name]
            later = {other: splits[other] for other in names[position + 1 :]}
            expectations = split_suite(name, frame, later, cfg)
            results[name] = _run_suite(context, source, name, frame, expectations, report_dir)
        if labelled is not None:
            test = splits.get("test")
            summaries = distinct(test["summary"]) if test is not None and "summary" in test.columns else []
            frame = with_toxic_column(labelled)
            results[LABELLED] = _run_suite(
                context, source, LABELLED, frame, labelled_suite(frame, summaries, labelled), report_dir
            )
        context.build_data_docs(site_names=[DATA_DOCS_SITE])
    index = report_dir / DATA_DOCS_DIR / "index.html"
    if not index.is_file():  # pragma: no cover - GX always writes it
        raise DataValidationError(f"{index}: Great Expectations did not build the Data Docs site")
    return ValidationSummary(splits=results, data_docs_index=index)


def _ordered(splits: Mapping[str, pd.DataFrame]) -> list[str]:
    known = [name for name in SPLITS if name in splits]
    return known + sorted(name for name in splits if name not in SPLITS)


def _ephemeral_context(docs_dir: Path) -> AbstractDataContext:
    """An in-memory GX context whose only Data Docs site is a folder on disk."""
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            DATA_DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _quiet_gx() -> None:
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET or gx_logger.level < logging.WARNING:
        gx_logger.setLevel(logging.WARNING)


def _run_suite(
    context: AbstractDataContext,
    source: Any,
    split: str,
    frame: pd.DataFrame,
    expectations: list[Expectation],
    report_dir: Path,
) -> SplitSummary:
    import great_expectations as gx

    asset = source.add_dataframe_asset(name=split)
    batch = asset.add_batch_definition_whole_dataframe(name=split)
    suite = context.suites.add(gx.ExpectationSuite(name=split, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=split, data=batch, suite=suite))
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
    id_column = "id" if "id" in frame.columns else "row" if "row" in frame.columns else None
    if id_column:
        result_format["unexpected_index_column_names"] = [id_column]
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)

    result_path = report_dir / f"{split}.json"
    write_json(result_path, result.to_json_dict())

    order = {expectation.id: position for position, expectation in enumerate(suite.expectations)}
    outcomes = sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    failures = [failure_of(split, outcome, frame, id_column or "id") for outcome in outcomes if not outcome.success]
    stats = result.statistics
    return SplitSummary(
        split=split,
        rows=len(frame),
        success=bool(result.success),
        evaluated=int(stats["evaluated_expectations"]),
        successful=int(stats["successful_expectations"]),
        failed=int(stats["unsuccessful_expectations"]),
        failures=failures,
        result_path=result_path,
    )
