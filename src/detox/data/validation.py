"""The ``validate`` stage's library: a Great Expectations suite per data split.

Each split (``train``, ``validation``, ``test``) is checked by a GX 1.x expectation
suite built from :class:`~detox.common.params.ValidateParams`:

* the required columns exist (``id``, ``dialogue``, ``summary``, ``topic``);
* their values are strings; ``id``, ``dialogue`` and ``summary`` are non-null and
  non-empty; ids are unique;
* no id and no dialogue is shared with another split;
* dialogue and summary lengths lie within ``dialogue_chars`` / ``summary_chars``;
* every dialogue matches ``turn_pattern`` (the speaker-turn format);
* the split has at least ``min_rows[split]`` rows.

The reward stage's labelled data (``text,label``) gets a suite of its own, ``labelled``:

* at least ``labelled.min_rows`` rows; ``text`` and ``label`` exist and are non-null;
* texts are strings of ``labelled.text_chars`` characters, not blank, and none equals a
  summary of the test split (the reward model must not train on what it is judged on);
* labels are in the reward model's set (its ``id2label`` names, or their ids);
* class balance: the share of rows with the toxic label (a derived ``toxic`` column, 0/1)
  lies within ``[min_class_share, 1 - min_class_share]``.

The GX context is ephemeral (in memory), so no ``gx/`` folder is created. Under the
report folder the stage leaves one GX validation-result JSON per split
(``<split>.json``) and a GX Data Docs site (``data_docs/index.html``).

Cross-split checks are made once per pair of splits, on the split that comes first
in ``train, validation, test`` order, against the values of the later split; the
larger split thus carries the (smaller) other split's values, which keeps the result
JSON small, and the failure says which split the value is shared with.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from detox.data.reading import COLUMNS, SPLITS
from detox.common.errors import DataValidationError, ParamsError
from detox.common.io import atomic_dir, write_json
from detox.common.params import LabelledChecks, ValidateParams

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = COLUMNS
NON_EMPTY_COLUMNS: tuple[str, ...] = ("id", "dialogue", "summary")
LEAK_COLUMNS: tuple[str, ...] = ("id", "dialogue")
DATA_DOCS_DIR = "data_docs"
DATA_DOCS_SITE = "local_site"
EXAMPLES = 5  # unexpected values kept per failed expectation
EXAMPLE_CHARS = 60  # long values (dialogues) are cut to this length in the summary
LABELLED = "labelled"


@dataclass(frozen=True)
class LabelledData:
    """The labelled data to validate, with what the reward model allows."""

    frame: pd.DataFrame
    labels: tuple[str, ...]  # allowed label values (names and ids, as text)
    toxic: tuple[str, ...]  # the values that mean the toxic label
    checks: LabelledChecks


@dataclass(frozen=True)
class FailedExpectation:
    """One failed (or unevaluable) expectation, in terms a person can act on."""

    split: str
    expectation: str  # GX expectation type, e.g. expect_column_values_to_be_unique
    column: str | None  # None for table-level expectations
    expected: str  # what was required, e.g. "length 20..20000 chars"
    unexpected_count: int | None = None  # column-map expectations only
    element_count: int | None = None  # rows the expectation looked at
    examples: list[Any] = field(default_factory=list)  # a few unexpected values (cut short)
    example_ids: list[Any] = field(default_factory=list)  # the ids of those rows, when known
    id_column: str = "id"  # what example_ids are: ids, or ("row") row numbers of the labelled file
    observed: Any = None  # aggregate expectations: GX's observed value; column_to_exist: the columns present
    error: str | None = None  # set when GX could not evaluate the expectation

    def describe(self) -> str:
        name = f"{self.expectation}({self.column})" if self.column else self.expectation
        head = f"{self.split}: {name}"
        if self.error:
            return f"{head} could not be evaluated: {self.error}"
        if self.unexpected_count is not None:
            text = f"{head} failed: {self.unexpected_count} unexpected of {self.element_count} rows"
            values_known = any(value is not None for value in self.examples)
            if self.example_ids and self.column != self.id_column:
                ids = "ids" if self.id_column == "id" else f"{self.id_column}s"
                if values_known:
                    text += f", e.g. {self.examples!r} ({ids} {self.example_ids!r})"
                else:
                    text += f", e.g. {ids} {self.example_ids!r}"
            elif self.examples:
                text += f", e.g. {self.examples!r}"
            return f"{text}; expected {self.expected}"
        if self.expectation == "expect_column_to_exist":
            present = ", ".join(map(str, self.observed or [])) or "none"
            return f"{head} failed: column {self.column!r} is missing (columns present: {present})"
        if self.expectation == "expect_table_row_count_to_be_between":
            return f"{head} failed: {self.observed} rows; expected {self.expected}"
        return f"{head} failed: observed {self.observed!r}; expected {self.expected}"


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


def format_failures(summary: ValidationSummary) -> str:
    """One line per failed expectation, e.g.

    ``test: expect_column_values_to_be_unique(id) failed: 2 unexpected of 300 rows, e.g. ['d-12', 'd-12']; expected unique values``
    """
    failures = summary.failures
    if not failures:
        return "all expectations passed"
    lines = [f"data validation failed ({len(failures)} failed expectation(s)):"]
    lines += [f"  - {failure.describe()}" for failure in failures]
    lines.append(f"Data Docs: {summary.data_docs_index}")
    return "\n".join(lines)


def read_labelled(path: str | Path, reward_dir: str | Path, toxic_label: str, checks: LabelledChecks) -> LabelledData:
    """The labelled file and the label set of the reward model folder ``reward_dir`` (its config.json)."""
    import json

    path, config_path = Path(path), Path(reward_dir) / "config.json"
    for needed in (path, config_path):
        if not needed.is_file():
            raise DataValidationError(f"{needed}: not found; the fetch stage writes it (run: dvc repro fetch)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataValidationError(f"{path}: cannot be read as parquet: {exc}") from None
    id2label = json.loads(config_path.read_text(encoding="utf-8")).get("id2label") or {}
    labels = tuple(sorted({str(name) for name in id2label.values()} | {str(i) for i in id2label}))
    toxic = tuple(sorted({str(name) for name in id2label.values() if str(name).lower() == toxic_label.lower()}
                         | {str(i) for i, name in id2label.items() if str(name).lower() == toxic_label.lower()}))
    if not toxic:
        raise DataValidationError(f"{config_path}: the reward model has no label {toxic_label!r} (reward.toxic_label); "
                                  f"its labels are {sorted(str(v) for v in id2label.values())}")
    return LabelledData(frame=frame, labels=labels, toxic=toxic, checks=checks)


def validate_dir(raw_dir: str | Path, cfg: ValidateParams, report_dir: str | Path,
                 labelled: LabelledData | None = None) -> ValidationSummary:
    """Read ``<raw_dir>/<split>.parquet`` for every split and validate them together (and ``labelled``)."""
    raw_dir = Path(raw_dir)
    splits: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = raw_dir / f"{split}.parquet"
        if not path.is_file():
            raise DataValidationError(
                f"{path}: split file not found; the fetch stage must write "
                f"{', '.join(f'{s}.parquet' for s in SPLITS)} to {raw_dir} (run: dvc repro fetch)"
            )
        try:
            splits[split] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataValidationError(f"{path}: cannot be read as parquet: {exc}") from None
    return validate_splits(splits, cfg, Path(report_dir), labelled)


def validate_splits(
    splits: Mapping[str, pd.DataFrame], cfg: ValidateParams, report_dir: str | Path,
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
            expectations = _expectations(name, frame, later, cfg)
            results[name] = _run_suite(context, source, name, frame, expectations, report_dir)
        if labelled is not None:
            test = splits.get("test")
            summaries = _distinct(test["summary"]) if test is not None and "summary" in test.columns else []
            frame = _with_toxic_column(labelled)
            results[LABELLED] = _run_suite(context, source, LABELLED, frame,
                                           _labelled_expectations(frame, summaries, labelled), report_dir)
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


def _expectations(
    split: str, frame: pd.DataFrame, later: Mapping[str, pd.DataFrame], cfg: ValidateParams
) -> list[Expectation]:
    """The suite for one split. Column checks are added only for columns that exist, so a
    missing column fails once (``expect_column_to_exist``) and everything else still runs."""
    import great_expectations.expectations as gxe

    columns = set(frame.columns)
    lengths = {
        "id": (1, None),
        "dialogue": (max(1, cfg.dialogue_chars.min), cfg.dialogue_chars.max),
        "summary": (max(1, cfg.summary_chars.min), cfg.summary_chars.max),
    }
    suite: list[Expectation] = [gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows.get(split, 1))]
    suite += [gxe.ExpectColumnToExist(column=column) for column in REQUIRED_COLUMNS]
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            continue
        suite.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"))
        if column in NON_EMPTY_COLUMNS:
            suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
            low, high = lengths[column]
            suite.append(gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=low, max_value=high))
        if column == "id":
            suite.append(gxe.ExpectColumnValuesToBeUnique(column="id"))
        if column == "dialogue":
            suite.append(gxe.ExpectColumnValuesToMatchRegex(column="dialogue", regex=cfg.turn_pattern))
        if column in LEAK_COLUMNS:
            for other, other_frame in later.items():
                if column not in other_frame.columns:
                    continue  # reported by that split's expect_column_to_exist
                values = _distinct(other_frame[column])
                suite.append(
                    gxe.ExpectColumnValuesToNotBeInSet(
                        column=column,
                        value_set=values,
                        meta={"other_split": other},
                        # Data Docs render this instead of listing every value of the set.
                        description=f"{column} values must not also occur in the {other} split "
                        f"({len(values)} distinct values there)",
                    )
                )
    return suite


def _with_toxic_column(labelled: LabelledData) -> pd.DataFrame:
    frame = labelled.frame.copy()
    frame["row"] = range(len(frame))  # failures name the rows of data/labelled/labelled.parquet (from 0)
    if "label" in frame.columns:
        frame["toxic"] = frame["label"].map(lambda value: int(str(value) in labelled.toxic))
    return frame


def _labelled_expectations(frame: pd.DataFrame, test_summaries: list[Any], labelled: LabelledData) -> list[Expectation]:
    import great_expectations.expectations as gxe

    checks = labelled.checks
    suite: list[Expectation] = [gxe.ExpectTableRowCountToBeBetween(min_value=checks.min_rows)]
    suite += [gxe.ExpectColumnToExist(column=column) for column in ("text", "label")]
    if "text" in frame.columns:
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValuesToBeOfType(column="text", type_="str"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=max(1, checks.text_chars.min),
                                                    max_value=checks.text_chars.max),
            gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
            gxe.ExpectColumnValuesToNotBeInSet(
                column="text", value_set=test_summaries, meta={"other_split": "test", "what": "summaries"},
                description=f"texts must not equal a summary of the test split ({len(test_summaries)} summaries)",
            ),
        ]
    if "label" in frame.columns:
        share = checks.min_class_share
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(labelled.labels)),
            gxe.ExpectColumnMeanToBeBetween(
                column="toxic", min_value=share, max_value=1 - share, meta={"toxic": list(labelled.toxic)},
                description=f"the share of toxic labels ({', '.join(labelled.toxic)}) must lie in "
                f"[{share:g}, {1 - share:g}]",
            ),
        ]
    return suite


def _distinct(series: pd.Series) -> list[Any]:
    """The other split's distinct non-null values, sorted so the suite is deterministic.

    Unhashable values (lists, dicts) are left out: their split's type check reports them."""
    values = set()
    for value in series.dropna().tolist():
        value = _plain(value)
        try:
            values.add(value)
        except TypeError:
            continue
    return sorted(values, key=lambda value: (type(value).__name__, str(value)))


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
    failures = [_failure(split, outcome, frame, id_column or "id") for outcome in outcomes if not outcome.success]
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


def _failure(split: str, outcome: Any, frame: pd.DataFrame, id_column: str = "id") -> FailedExpectation:
    config = outcome.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    info = outcome.exception_info or {}
    if "raised_exception" not in info:  # keyed by metric when several metrics failed
        info = next((value for value in info.values() if isinstance(value, dict)), {})
    error = info.get("exception_message") if info.get("raised_exception") else None
    result = outcome.result or {}
    examples = [_example(value) for value in result.get("partial_unexpected_list") or []]
    ids = [_example(row.get(id_column)) for row in result.get("partial_unexpected_index_list") or []
           if isinstance(row, dict)]
    observed = _plain(result.get("observed_value"))
    if config.type == "expect_column_to_exist":
        observed = [str(name) for name in frame.columns]  # GX reports no observed value here
    return FailedExpectation(
        split=split,
        expectation=config.type,
        column=column,
        expected=_expected(config.type, kwargs, config.meta or {}),
        unexpected_count=result.get("unexpected_count"),
        element_count=result.get("element_count"),
        examples=examples,
        example_ids=ids,
        id_column=id_column,
        observed=observed,
        error=error,
    )


def _expected(kind: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    if kind == "expect_table_row_count_to_be_between":
        return f"at least {kwargs.get('min_value')} rows"
    if kind == "expect_column_to_exist":
        return "the column to exist"
    if kind == "expect_column_values_to_be_of_type":
        return f"values of type {kwargs.get('type_')}"
    if kind == "expect_column_values_to_not_be_null":
        return "no null values"
    if kind == "expect_column_value_lengths_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        return f"length {low}..{high if high is not None else ''} chars"
    if kind == "expect_column_values_to_be_unique":
        return "unique values"
    if kind == "expect_column_values_to_match_regex":
        return f'values matching the regex "{kwargs.get("regex")}"'
    if kind == "expect_column_values_to_not_be_in_set":
        if meta.get("what"):
            return f"no value equal to one of the {meta.get('other_split')} split's {meta['what']}"
        return f"no value shared with the {meta.get('other_split', 'other')} split"
    if kind == "expect_column_values_to_not_match_regex":
        return f'no value matching the regex "{kwargs.get("regex")}" (blank text)'
    if kind == "expect_column_values_to_be_in_set":
        return f"values in {kwargs.get('value_set')}"
    if kind == "expect_column_mean_to_be_between":
        toxic = ", ".join(meta.get("toxic", []))
        return (f"a toxic share ({toxic}) between {kwargs.get('min_value'):g} and {kwargs.get('max_value'):g}"
                " (class balance)")
    return kind


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (AttributeError, ValueError):
            pass
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _example(value: Any) -> Any:
    value = _plain(value)
    if value is not None and not isinstance(value, (str, int, float, bool)):
        value = repr(value)  # lists, dicts, bytes...: shown as text
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return value[: EXAMPLE_CHARS - 1] + "…"
    return value
