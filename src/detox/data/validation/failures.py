"""What failed, in terms a person can act on: GX's results turned into one line per failed expectation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from detox.data.validation.run import ValidationSummary

EXAMPLES = 5  # unexpected values kept per failed expectation
EXAMPLE_CHARS = 60  # long values (dialogues) are cut to this length in the summary


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


def format_failures(summary: ValidationSummary) -> str:
    """One line per failed expectation, e.g.

    ``test: expect_column_values_to_be_unique(id) failed: 2 unexpected of 300 rows, e.g. ['d-12', 'd-12'];
    expected unique values``
    """
    failures = summary.failures
    if not failures:
        return "all expectations passed"
    lines = [f"data validation failed ({len(failures)} failed expectation(s)):"]
    lines += [f"  - {failure.describe()}" for failure in failures]
    lines.append(f"Data Docs: {summary.data_docs_index}")
    return "\n".join(lines)


def failure_of(split: str, outcome: Any, frame: pd.DataFrame, id_column: str = "id") -> FailedExpectation:
    config = outcome.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    info = outcome.exception_info or {}
    if "raised_exception" not in info:  # keyed by metric when several metrics failed
        info = next((value for value in info.values() if isinstance(value, dict)), {})
    error = info.get("exception_message") if info.get("raised_exception") else None
    result = outcome.result or {}
    examples = [example(value) for value in result.get("partial_unexpected_list") or []]
    ids = [
        example(row.get(id_column))
        for row in result.get("partial_unexpected_index_list") or []
        if isinstance(row, dict)
    ]
    observed = plain(result.get("observed_value"))
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
        return (
            f"a toxic share ({toxic}) between {kwargs.get('min_value'):g} and {kwargs.get('max_value'):g}"
            " (class balance)"
        )
    return kind


def plain(value: Any) -> Any:
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


def example(value: Any) -> Any:
    value = plain(value)
    if value is not None and not isinstance(value, (str, int, float, bool)):
        value = repr(value)  # lists, dicts, bytes...: shown as text
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return value[: EXAMPLE_CHARS - 1] + "…"
    return value
