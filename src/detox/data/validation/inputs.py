"""The validate stage's inputs: the split files and the labelled data with the reward model's label set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from detox.common.errors import DataValidationError
from detox.common.params import LabelledChecks
from detox.data.reading import SPLITS


@dataclass(frozen=True)
class LabelledData:
    """The labelled data to validate, with what the reward model allows."""

    frame: pd.DataFrame
    labels: tuple[str, ...]  # allowed label values (names and ids, as text)
    toxic: tuple[str, ...]  # the values that mean the toxic label
    checks: LabelledChecks


def read_labelled(path: str | Path, reward_dir: str | Path, toxic_label: str, checks: LabelledChecks) -> LabelledData:
    """The labelled file and the label set of the reward model folder ``reward_dir`` (its config.json)."""
    path, config_path = Path(path), Path(reward_dir) / "config.json"
    for needed in (path, config_path):
        if not needed.is_file():
            raise DataValidationError(f"{needed}: not found; the fetch stage writes it (run: dvc repro fetch)")
    frame = _read_parquet(path)
    id2label = json.loads(config_path.read_text(encoding="utf-8")).get("id2label") or {}
    labels = tuple(sorted({str(name) for name in id2label.values()} | {str(i) for i in id2label}))
    toxic = tuple(
        sorted(
            {str(name) for name in id2label.values() if str(name).lower() == toxic_label.lower()}
            | {str(i) for i, name in id2label.items() if str(name).lower() == toxic_label.lower()}
        )
    )
    if not toxic:
        raise DataValidationError(
            f"{config_path}: the reward model has no label {toxic_label!r} (reward.toxic_label); "
            f"its labels are {sorted(str(v) for v in id2label.values())}"
        )
    return LabelledData(frame=frame, labels=labels, toxic=toxic, checks=checks)


def read_splits(raw_dir: str | Path) -> dict[str, pd.DataFrame]:
    """``<raw_dir>/<split>.parquet`` for every split."""
    raw_dir = Path(raw_dir)
    splits: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        path = raw_dir / f"{split}.parquet"
        if not path.is_file():
            raise DataValidationError(
                f"{path}: split file not found; the fetch stage must write "
                f"{', '.join(f'{s}.parquet' for s in SPLITS)} to {raw_dir} (run: dvc repro fetch)"
            )
        splits[split] = _read_parquet(path)
    return splits


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataValidationError(f"{path}: cannot be read as parquet: {exc}") from None
