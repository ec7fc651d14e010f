"""Reading the dialogue data: local files, and the split files the fetch stage writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from detox.errors import SourceError

SPLITS = ("train", "validation", "test")
COLUMNS = ("id", "dialogue", "summary", "topic")
SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    raise SourceError(f"{path}: unsupported file type {suffix!r}; use one of {list(SUFFIXES)}")


def read_local_splits(path: str | Path) -> dict[str, pd.DataFrame]:
    """Splits from a folder of ``{train,validation,test}.<suffix>`` files, or one file with a ``split`` column."""
    root = Path(path)
    if root.is_dir():
        splits = {}
        for split in SPLITS:
            found = [root / f"{split}{s}" for s in SUFFIXES if (root / f"{split}{s}").is_file()]
            if not found:
                raise SourceError(
                    f"data.local.path: {root} has no {split} file; expected one of "
                    f"{[f'{split}{s}' for s in SUFFIXES]}"
                )
            splits[split] = read_table(found[0])
        return splits
    if root.is_file():
        table = read_table(root)
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
