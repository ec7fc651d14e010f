"""The GX expectation suites: one per data split, one for the labelled data (see :mod:`detox.data.validation`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from detox.common.params import ValidateParams
from detox.data.reading import COLUMNS
from detox.data.validation.failures import plain
from detox.data.validation.inputs import LabelledData

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations.expectations import Expectation

REQUIRED_COLUMNS = COLUMNS
NON_EMPTY_COLUMNS: tuple[str, ...] = ("id", "dialogue", "summary")
LEAK_COLUMNS: tuple[str, ...] = ("id", "dialogue")


def split_suite(
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
                values = distinct(other_frame[column])
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


def with_toxic_column(labelled: LabelledData) -> pd.DataFrame:
    frame = labelled.frame.copy()
    frame["row"] = range(len(frame))  # failures name the rows of data/labelled/labelled.parquet (from 0)
    if "label" in frame.columns:
        frame["toxic"] = frame["label"].map(lambda value: int(str(value) in labelled.toxic))
    return frame


def labelled_suite(frame: pd.DataFrame, test_summaries: list[Any], labelled: LabelledData) -> list[Expectation]:
    import great_expectations.expectations as gxe

    checks = labelled.checks
    suite: list[Expectation] = [gxe.ExpectTableRowCountToBeBetween(min_value=checks.min_rows)]
    suite += [gxe.ExpectColumnToExist(column=column) for column in ("text", "label")]
    if "text" in frame.columns:
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column="text"),
            gxe.ExpectColumnValuesToBeOfType(column="text", type_="str"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=max(1, checks.text_chars.min), max_value=checks.text_chars.max
            ),
            gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
            gxe.ExpectColumnValuesToNotBeInSet(
                column="text",
                value_set=test_summaries,
                meta={"other_split": "test", "what": "summaries"},
                description=f"texts must not equal a summary of the test split ({len(test_summaries)} summaries)",
            ),
        ]
    if "label" in frame.columns:
        share = checks.min_class_share
        suite += [
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(labelled.labels)),
            gxe.ExpectColumnMeanToBeBetween(
                column="toxic",
                min_value=share,
                max_value=1 - share,
                meta={"toxic": list(labelled.toxic)},
                description=f"the share of toxic labels ({', '.join(labelled.toxic)}) must lie in "
                f"[{share:g}, {1 - share:g}]",
            ),
        ]
    return suite


def distinct(series: pd.Series) -> list[Any]:
    """The other split's distinct non-null values, sorted so the suite is deterministic.

    Unhashable values (lists, dicts) are left out: their split's type check reports them."""
    values = set()
    for value in series.dropna().tolist():
        value = plain(value)
        try:
            values.add(value)
        except TypeError:
            continue
    return sorted(values, key=lambda value: (type(value).__name__, str(value)))
