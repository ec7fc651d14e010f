"""Before vs after: the paired comparison of the baseline and the PPO policy.

Both frames come from :func:`detox.evaluation.score_policy` on the same test rows,
prompts, seed and scorer, so row i of one and row i of the other are a pair. This
module holds the numbers the evaluate stage reports and the gate that decides
whether a policy is promoted; it does no I/O.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from detox.errors import DetoxError
from detox.evaluation import ROUGE_KEYS, summarize
from detox.params import PromotionParams

# Scoring the same text in another batch (other padding) moves a float32 logit by ~1e-5:
# smaller diffs count as unchanged in the shares of pairs that rose or fell.
CHANGE_TOLERANCE = 1e-3
TABLE_COLUMNS = ["dialogue", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"]


def check_paired(before: pd.DataFrame, after: pd.DataFrame, before_name: str = "the baseline") -> None:
    """Raise unless both frames hold the same samples (ids and dialogues) in the same order."""
    if len(before) != len(after):
        raise DetoxError(
            f"{before_name} has {len(before)} scored rows but {len(after)} test rows are evaluated: it was "
            "made with other data or another eval.num_samples; run `dvc repro baseline` to rescore it"
        )
    ids_differ = before["id"].astype(str).to_numpy() != after["id"].astype(str).to_numpy()
    text_differ = before["dialogue"].to_numpy() != after["dialogue"].to_numpy()
    mismatched = np.flatnonzero(ids_differ | text_differ)
    if mismatched.size:
        i = int(mismatched[0])
        raise DetoxError(
            f"{before_name} is stale: {mismatched.size} of {len(after)} rows differ from the test rows "
            f"evaluated now (first at row {i}: id {before['id'].iloc[i]!r} vs {after['id'].iloc[i]!r}); "
            "run `dvc repro baseline` to rescore it on the current data"
        )


def improvement_pct(before: float, after: float) -> float | None:
    """The original project's formula, ``(before - after) / before`` in percent; None when before is 0."""
    if before == 0:
        return None
    return float((before - after) / before * 100.0)


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
    """The evaluate stage's metrics: both policies' summaries, improvements and paired statistics."""
    check_paired(before, after)
    stats_before = _stats(before)
    stats_after = _stats(after)
    return {
        "n": int(len(after)),
        "before": stats_before,
        "after": stats_after,
        "improvement_pct": {
            "toxicity_mean": improvement_pct(stats_before["toxicity_mean"], stats_after["toxicity_mean"]),
            "toxicity_std": improvement_pct(stats_before["toxicity_std"], stats_after["toxicity_std"]),
        },
        "rouge_drop": {key: stats_before[key] - stats_after[key] for key in ROUGE_KEYS},
        "reward_diff": paired_diff(before["reward"].to_numpy(), after["reward"].to_numpy(), cfg, seed),
        "toxicity_diff": paired_diff(before["toxicity"].to_numpy(), after["toxicity"].to_numpy(), cfg, seed),
        "bootstrap": {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": seed},
    }


def _stats(frame: pd.DataFrame) -> dict[str, Any]:
    """The shared summary of a scored frame, without the throughput (a property of the run, not the policy)."""
    metrics = summarize(frame, samples_per_second=0.0)
    metrics.pop("samples_per_second")
    metrics.pop("n")
    return metrics


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the evaluated policy becomes ``champion``, and the check behind each reason."""

    checks: list[Check] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def decision(self) -> str:
        return "promoted" if self.promoted else "rejected"

    @property
    def reasons(self) -> list[str]:
        """The failed checks when rejected; every check when promoted."""
        failed = [c for c in self.checks if not c.passed]
        return [f"{'pass' if c.passed else 'fail'}: {c.detail}" for c in (failed or self.checks)]

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "promoted": self.promoted, "reasons": self.reasons,
                "checks": {c.name: {"passed": c.passed, "detail": c.detail} for c in self.checks}}


def decide(metrics: dict[str, Any], cfg: PromotionParams) -> PromotionDecision:
    """The promotion gate on the metrics of :func:`compare`."""
    improvement = metrics["improvement_pct"]["toxicity_mean"]
    checks = [
        Check(
            "toxicity_improvement",
            improvement is not None and improvement >= cfg.min_toxicity_improvement_pct,
            (f"mean toxicity fell by {improvement:.1f}% (at least {cfg.min_toxicity_improvement_pct:g}% required)"
             if improvement is not None else
             "the baseline's mean toxicity is 0, so there is no toxicity to improve on"),
        ),
        Check(
            "rougeL_drop",
            metrics["rouge_drop"]["rougeL"] <= cfg.max_rougeL_drop,
            f"ROUGE-L {metrics['before']['rougeL']:.4f} -> {metrics['after']['rougeL']:.4f} "
            f"(change {-metrics['rouge_drop']['rougeL']:+.4f}; a drop of at most {cfg.max_rougeL_drop:g} allowed)",
        ),
    ]
    if cfg.require_significant:
        diff = metrics["reward_diff"]
        level = f"{metrics['bootstrap']['confidence']:.0%}"
        checks.append(Check(
            "reward_significant",
            diff["ci_low"] > 0,
            f"mean reward diff {diff['mean']:+.4f}, {level} CI [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] "
            f"({'lies above 0' if diff['ci_low'] > 0 else 'does not lie above 0'})",
        ))
    return PromotionDecision(checks)


def reward_diff_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The original project's table: one row per dialogue, sorted by reward gain, largest first."""
    check_paired(before, after)
    table = pd.DataFrame({
        "dialogue": after["dialogue"].to_numpy(),
        "response_before": before["response"].to_numpy(),
        "response_after": after["response"].to_numpy(),
        "reward_before": before["reward"].to_numpy(dtype=np.float64),
        "reward_after": after["reward"].to_numpy(dtype=np.float64),
    })
    table["reward_diff"] = table["reward_after"] - table["reward_before"]
    return table.sort_values("reward_diff", ascending=False, kind="stable").reset_index(drop=True)[TABLE_COLUMNS]
