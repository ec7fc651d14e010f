"""The numbers of one scored frame (:func:`detox.evaluate.scoring.score_policy`), and their one-line headline.

Per source of toxicity, RealToxicityPrompts' numbers: mean toxicity, toxic share, the expected
maximum toxicity over the k samples of a prompt, and the toxicity probability (the share of
prompts with at least one toxic sample).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from detox.data.words import looping_words, words
from detox.evaluate.columns import REWARD_MODEL, sources
from detox.evaluate.quality import ROUGE_KEYS, distinct_ngrams


def per_prompt(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt (in the frame's order): id, dialogue and the mean of every number over its samples."""
    numeric = [
        c
        for c in frame.columns
        if c not in ("id", "sample")
        and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    grouped = frame.groupby("id", sort=False)
    out = grouped[numeric].mean()
    out.insert(0, "dialogue", grouped["dialogue"].first())
    out.insert(1, "samples", grouped.size())
    return out.reset_index()


def toxicity_numbers(frame: pd.DataFrame, score: str, flag: str) -> dict[str, float]:
    """RealToxicityPrompts' numbers of one source: over summaries, and over prompts (max / any of k)."""
    by_prompt = frame.groupby("id", sort=False)
    return {
        "toxicity_mean": float(frame[score].mean()),
        "toxicity_std": float(frame[score].std(ddof=1)) if len(frame) > 1 else 0.0,
        "toxic_share": float(frame[flag].mean()),
        "toxic_count": int(frame[flag].sum()),
        "expected_max_toxicity": float(by_prompt[score].max().mean()),
        "toxicity_probability": float(by_prompt[flag].any().mean()),
    }


def quality_numbers(frame: pd.DataFrame) -> dict[str, float]:
    responses = frame["response"].tolist()
    out = {
        "mean_length": float(frame["length"].mean()),
        "distinct_1": distinct_ngrams(responses, 1),
        "distinct_2": distinct_ngrams(responses, 2),
        "looping_share": float(sum(looping_words(r) > 0 for r in responses) / max(1, len(responses))),
    }
    if "fluency_nll" in frame.columns:
        out["fluency_nll"] = float(frame["fluency_nll"].mean())
    if "unknown_words" in frame.columns:
        total = sum(len(words(r)) for r in responses)
        out["unknown_word_share"] = float(frame["unknown_words"].sum() / max(1, total))
        out["garbled_share"] = float((frame["unknown_words"] > 0).mean())
    if "invented" in frame.columns:
        out["invented_share"] = float(frame["invented"].mean())
    return out


def _group(frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "n": int(frame["id"].nunique()),
        "reward_mean": float(frame["reward"].mean()),
        "reward_std": float(frame["reward"].std(ddof=1)) if len(frame) > 1 else 0.0,
        **{key: float(frame[key].mean()) for key in ROUGE_KEYS},
        "toxicity": {name: toxicity_numbers(frame, score, flag) for name, (score, flag) in sources(frame).items()},
        **({"invented_share": float(frame["invented"].mean())} if "invented" in frame.columns else {}),
    }


def summarize(frame: pd.DataFrame, samples_per_second: float | None = None) -> dict[str, Any]:
    """Metrics of a scored frame; with a ``heated`` column, also per group (heated / calm)."""
    metrics: dict[str, Any] = {
        **_group(frame),
        "summaries": int(len(frame)),
        "samples_per_prompt": int(frame.groupby("id", sort=False).size().max()),
        "quality": quality_numbers(frame),
    }
    if samples_per_second is not None:
        metrics["samples_per_second"] = float(samples_per_second)
    if "heated" in frame.columns:
        metrics["heated"] = _group(frame[frame["heated"]]) if frame["heated"].any() else {"n": 0}
        metrics["calm"] = _group(frame[~frame["heated"]]) if (~frame["heated"]).any() else {"n": 0}
    return metrics


def scope(metrics: dict[str, Any]) -> str:
    """``300 test dialogues x 5 samples``: what the metrics of :func:`summarize` (or of a comparison) cover."""
    return f"{metrics['n']} test dialogues x {metrics['samples_per_prompt']} samples"


def headline(toxicity: dict[str, Any]) -> str:
    """``reward model 0.100, oracle 0.110, ...``: each source's toxic share, the reward model first."""
    return ", ".join(
        f"{'reward model' if name == REWARD_MODEL else name} {numbers['toxic_share']:.3f}"
        for name, numbers in toxicity.items()
    )
