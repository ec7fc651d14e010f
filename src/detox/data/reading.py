"""Reading the dialogue data: local files, and the split files the fetch stage writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from detox.common.errors import SourceError

SPLITS = ("train", "validation", "test")
COLUMNS = ("id", "dialogue", "summary", "topic")
TEXT_COLUMNS = ("dialogue", "summary")  # what every row must hold: the policy learns from them
SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


BOOLEAN_COLUMNS = ("heated", "hard")  # the builtin world's flags: a csv export of them reads back as booleans
BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def read_table(path: Path) -> pd.DataFrame:
    """A data file with its declared types: text columns as strings, the boolean flags as booleans.

    A file that is not UTF-8 fails with the file, the line (and for a csv the row) of the first bad byte."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl", dtype=False, encoding="utf-8")
        else:
            raise SourceError(f"{path}: unsupported file type {suffix!r}; use one of {list(SUFFIXES)}")
    except UnicodeDecodeError as exc:
        raise SourceError(_encoding_error(path, exc)) from None
    for column in BOOLEAN_COLUMNS:
        if column in frame.columns and not pd.api.types.is_bool_dtype(frame[column]):
            frame[column] = _booleans(frame[column], path, column)
    return frame


def _booleans(values: pd.Series, path: Path, column: str) -> pd.Series:
    out = []
    for row, value in enumerate(values):
        key = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
        if key not in BOOLEANS:
            raise SourceError(
                f"{path}: column {column!r}, row {row + 1}: {value!r} is not a boolean; use one of {sorted(BOOLEANS)}"
            )
        out.append(BOOLEANS[key])
    return pd.Series(out, index=values.index, dtype=bool)


def _encoding_error(path: Path, exc: UnicodeDecodeError) -> str:
    import csv
    import io

    raw = path.read_bytes()
    try:  # the reader's position is within its buffer: find the byte in the whole file
        raw.decode("utf-8")
        start = exc.start
    except UnicodeDecodeError as whole:
        start = whole.start
    prefix = raw[:start].decode("utf-8")
    where = f"line {prefix.count(chr(10)) + 1}"
    if path.suffix.lower() == ".csv":  # dialogues span lines: count the csv records before the bad byte
        where += f", data row {max(1, len(list(csv.reader(io.StringIO(prefix)))) - 1)}"
    return (
        f"{path}: not UTF-8 text: byte 0x{raw[start]:02x} at {where}; save the file as UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`)"
    )


def check_dialogues(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """``frame`` when it has DialogSum's columns and every dialogue and summary holds text; else a
    :class:`SourceError` naming ``origin`` (a file, or a Hub dataset and split) and the first bad rows.

    Checked as the data comes in: the builtin tokenizer trains on these texts, and the labelled data is
    matched against the test summaries, before the validate stage sees them."""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise SourceError(
            f"{origin}: no column(s) {missing}; it has {list(frame.columns)}. Dialogue data needs "
            f"the columns {', '.join(COLUMNS)} (DialogSum's)"
        )
    for column in TEXT_COLUMNS:
        blank = [row + 1 for row, value in enumerate(frame[column]) if not (isinstance(value, str) and value.strip())]
        if blank:
            shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
            raise SourceError(
                f"{origin}: {len(blank)} row(s) without a {column} (data row(s) {shown}: empty, blank "
                f"or not text); every row needs a dialogue and a summary: fill them in or drop the rows"
            )
    return frame


def read_local_splits(path: str | Path) -> dict[str, pd.DataFrame]:
    """Splits from a folder of ``{train,validation,test}.<suffix>`` files, or one file with a ``split`` column."""
    root = Path(path)
    if root.is_dir():
        splits = {}
        for split in SPLITS:
            found = [root / f"{split}{s}" for s in SUFFIXES if (root / f"{split}{s}").is_file()]
            if not found:
                raise SourceError(
                    f"data.local.path: {root} has no {split} file; expected one of {[f'{split}{s}' for s in SUFFIXES]}"
                )
            splits[split] = check_dialogues(read_table(found[0]), str(found[0]))
        return splits
    if root.is_file():
        table = check_dialogues(read_table(root), str(root))  # row numbers as in the file, before it is split
        if "split" not in table.columns:
            raise SourceError(
                f"data.local.path: {root} is one file, so it needs a 'split' column with values {list(SPLITS)}; "
                "or give a folder holding train/validation/test files"
            )
        return {s: table[table["split"] == s].drop(columns="split").reset_index(drop=True) for s in SPLITS}
    raise SourceError(f"data.local.path: {root} does not exist; give a data file or a folder of split files")


def load_split(raw_dir: str | Path, split: str) -> pd.DataFrame:
    path = Path(raw_dir) / f"{split}.parquet"
    if not path.is_file():
        raise SourceError(f"{path}: not found; run `dvc repro fetch` first")
    return pd.read_parquet(path)
