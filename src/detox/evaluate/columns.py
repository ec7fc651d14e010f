"""The columns of a scored frame: who scored its toxicity (the reward model, then each judge)."""

from __future__ import annotations

import pandas as pd

REWARD_MODEL = "reward_model"  # the reward model's view, always first and never merged with a judge's


def judge_columns(name: str) -> tuple[str, str]:
    """The columns of a judge's toxicity score and toxic flag in a scored frame."""
    return f"toxicity:{name}", f"toxic:{name}"


def sources(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Who scored the frame's toxicity: the reward model first, then each judge (score, flag columns)."""
    out = {REWARD_MODEL: ("toxicity", "toxic")}
    out.update(
        {
            col.split(":", 1)[1]: judge_columns(col.split(":", 1)[1])
            for col in frame.columns
            if col.startswith("toxicity:")
        }
    )
    return out
