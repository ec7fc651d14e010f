"""Before vs after: the paired statistics of the baseline and the PPO policy.

Both frames come from :func:`detox.evaluate.scoring.score_policy` on the same test rows,
prompts, seeds, reward model and judges, so row i of one and row i of the other are a
pair. Paired statistics are over prompts (the unit that is paired), each the mean of its
samples; every source of toxicity (the reward model and each judge) gets its own numbers.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from detox.common.errors import DetoxError
from detox.common.params import PromotionParams
from detox.evaluate.columns import REWARD_MODEL, judge_columns, sources
from detox.evaluate.quality import ROUGE_KEYS
from detox.evaluate.scoring import check_paired
from detox.evaluate.summary import per_prompt, summarize

# Scoring the same text in another batch (other padding) moves a float32 logit by ~1e-5:
# smaller diffs count as unchanged in the shares of pairs that rose or fell.
CHANGE_TOLERANCE = 1e-3


def improvement_pct(before: float, after: float) -> float | None:
    """The original project's formula, ``(before - after) / before`` in percent; None when before is 0."""
    if before == 0:
        return None
    return float((before - after) / before * 100.0)


# Hand-written, not scipy.stats.bootstrap: its percentile CI differs from this one in the last digits (its
# mean and quantile arithmetic), and the CIs in metrics/evaluate.json must stay as they are.
def bootstrap_ci(diffs: np.ndarray, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired diffs: whole pairs are resampled with replacement."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        raise ValueError("bootstrap_ci needs at least one diff")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // diffs.size)  # bounds memory for large test sets
    for lo in range(0, samples, chunk):
        hi = min(samples, lo + chunk)
        means[lo:hi] = diffs[rng.integers(0, diffs.size, size=(hi - lo, diffs.size))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def paired_tests(before: np.ndarray, after: np.ndarray) -> dict[str, float | None]:
    """Two-sided p-values of Wilcoxon's signed-rank test and the paired t-test (None below two pairs)."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    diffs = after - before
    if diffs.size < 2:
        return {"wilcoxon_p": None, "ttest_p": None}
    if np.all(diffs == 0):
        return {"wilcoxon_p": 1.0, "ttest_p": 1.0}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        wilcoxon = stats.wilcoxon(after, before).pvalue
        ttest = stats.ttest_rel(after, before).pvalue
    return {"wilcoxon_p": _finite(wilcoxon), "ttest_p": _finite(ttest)}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def paired_diff(before: np.ndarray, after: np.ndarray, cfg: PromotionParams, seed: int) -> dict[str, Any]:
    """Mean of ``after - before`` with its bootstrap CI, both p-values and the shares of pairs that rose and fell."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    diffs = after - before
    low, high = bootstrap_ci(diffs, cfg.bootstrap_samples, cfg.confidence, seed)
    return {
        "mean": float(diffs.mean()),
        "ci_low": low,
        "ci_high": high,
        **paired_tests(before, after),
        "increased_share": float((diffs > CHANGE_TOLERANCE).mean()),
        "decreased_share": float((diffs < -CHANGE_TOLERANCE).mean()),
    }


def compare(before: pd.DataFrame, after: pd.DataFrame, cfg: PromotionParams, seed: int) -> dict[str, Any]:
    """The evaluate stage's metrics: both policies' numbers, per source of toxicity, and paired statistics.

    Paired statistics are over prompts (the unit that is paired), each the mean of its samples.
    Every source (the reward model and each judge) gets its own numbers; none is merged.
    """
    check_paired(before, after)
    missing = set(sources(before)) ^ set(sources(after))
    if missing:
        raise DetoxError(
            f"the baseline and the evaluated policy were not scored by the same judges "
            f"(only one has {sorted(missing)}); run `dvc repro baseline` with the current eval.judges"
        )
    stats_before, stats_after = summarize(before), summarize(after)
    prompts_before, prompts_after = per_prompt(before), per_prompt(after)
    quality_before, quality_after = stats_before["quality"], stats_after["quality"]
    return {
        "n": int(len(prompts_after)),
        "samples_per_prompt": stats_after["samples_per_prompt"],
        "before": stats_before,
        "after": stats_after,
        "improvement_pct": {
            name: {
                key: improvement_pct(stats_before["toxicity"][name][key], stats_after["toxicity"][name][key])
                for key in (
                    "toxicity_mean",
                    "toxicity_std",
                    "toxic_share",
                    "expected_max_toxicity",
                    "toxicity_probability",
                )
            }
            for name in sources(before)
        },
        "rouge_drop": {key: stats_before[key] - stats_after[key] for key in ROUGE_KEYS},
        "quality_change": {
            key: quality_after[key] - quality_before[key] for key in quality_after if key in quality_before
        },
        "reward_diff": paired_diff(prompts_before["reward"].to_numpy(), prompts_after["reward"].to_numpy(), cfg, seed),
        "toxicity_diff": {
            name: paired_diff(
                prompts_before[score].to_numpy(dtype=np.float64),
                prompts_after[score].to_numpy(dtype=np.float64),
                cfg,
                seed,
            )
            for name, (score, _) in sources(before).items()
        },
        **(
            {
                "invented_diff": paired_diff(
                    prompts_before["invented"].to_numpy(dtype=np.float64),
                    prompts_after["invented"].to_numpy(dtype=np.float64),
                    cfg,
                    seed,
                )
            }
            if "invented" in prompts_before.columns and "invented" in prompts_after.columns
            else {}
        ),
        "agreement": {
            name: {"before": agreement(before, name), "after": agreement(after, name)}
            for name in sources(before)
            if name != REWARD_MODEL
        },
        "bootstrap": {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": seed},
    }


def agreement(frame: pd.DataFrame, judge: str) -> dict[str, float]:
    """How the reward model's toxic flags and a judge's agree, summary by summary (confusion counts)."""
    model = frame["toxic"].to_numpy(dtype=bool)
    judged = frame[judge_columns(judge)[1]].to_numpy(dtype=bool)
    counts = {
        "both_toxic": int((model & judged).sum()),
        "judge_only": int((~model & judged).sum()),  # toxic to the judge, clean to the reward model: missed
        "reward_model_only": int((model & ~judged).sum()),
        "both_clean": int((~model & ~judged).sum()),
    }
    return {**counts, "agreement": float((model == judged).mean()) if len(frame) else 1.0}
