"""Before vs after: the paired comparison of the baseline and the PPO policy.

Both frames come from :func:`detox.evaluate.scoring.score_policy` on the same test rows,
prompts, seeds, reward model and judges, so row i of one and row i of the other are a
pair. This module holds the numbers the evaluate stage reports, the table of summaries on
which the reward model and a judge disagree, and the gate that decides whether a policy
is promoted; it does no I/O.

The gate reads an independent judge (``promotion.judge``), never the reward model: PPO
optimised the reward model's score, mistakes included, so its improvement alone proves
nothing. It also compares the candidate with the current champion on the same judged
numbers.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from detox.common.errors import DetoxError
from detox.evaluate.scoring import REWARD_MODEL, ROUGE_KEYS, judge_columns, per_prompt, sources, summarize
from detox.common.params import PromotionParams

# Scoring the same text in another batch (other padding) moves a float32 logit by ~1e-5:
# smaller diffs count as unchanged in the shares of pairs that rose or fell.
CHANGE_TOLERANCE = 1e-3
TABLE_COLUMNS = ["dialogue", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"]


def check_paired(before: pd.DataFrame, after: pd.DataFrame, before_name: str = "the baseline") -> None:
    """Raise unless both frames hold the same samples (ids, dialogues, sample numbers) in the same order."""
    if len(before) != len(after):
        raise DetoxError(
            f"{before_name} has {len(before)} scored rows but {len(after)} are evaluated now: it was made with "
            "other data, another eval.num_samples or eval.samples_per_prompt; run `dvc repro baseline` to rescore it"
        )
    differ = before["id"].astype(str).to_numpy() != after["id"].astype(str).to_numpy()
    differ |= before["dialogue"].to_numpy() != after["dialogue"].to_numpy()
    if "sample" in before.columns and "sample" in after.columns:
        differ |= before["sample"].to_numpy() != after["sample"].to_numpy()
    mismatched = np.flatnonzero(differ)
    if mismatched.size:
        i = int(mismatched[0])
        raise DetoxError(
            f"{before_name} is stale: {mismatched.size} of {len(after)} rows differ from the rows "
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
    """The evaluate stage's metrics: both policies' numbers, per source of toxicity, and paired statistics.

    Paired statistics are over prompts (the unit that is paired), each the mean of its samples.
    Every source (the reward model and each judge) gets its own numbers; none is merged.
    """
    check_paired(before, after)
    missing = set(sources(before)) ^ set(sources(after))
    if missing:
        raise DetoxError(f"the baseline and the evaluated policy were not scored by the same judges "
                         f"(only one has {sorted(missing)}); run `dvc repro baseline` with the current eval.judges")
    stats_before, stats_after = summarize(before), summarize(after)
    prompts_before, prompts_after = per_prompt(before), per_prompt(after)
    quality_before, quality_after = stats_before["quality"], stats_after["quality"]
    return {
        "n": int(len(prompts_after)),
        "samples_per_prompt": stats_after["samples_per_prompt"],
        "before": stats_before,
        "after": stats_after,
        "improvement_pct": {
            name: {key: improvement_pct(stats_before["toxicity"][name][key], stats_after["toxicity"][name][key])
                   for key in ("toxicity_mean", "toxicity_std", "toxic_share", "expected_max_toxicity",
                               "toxicity_probability")}
            for name in sources(before)
        },
        "rouge_drop": {key: stats_before[key] - stats_after[key] for key in ROUGE_KEYS},
        "quality_change": {key: quality_after[key] - quality_before[key] for key in quality_after
                           if key in quality_before},
        "reward_diff": paired_diff(prompts_before["reward"].to_numpy(), prompts_after["reward"].to_numpy(), cfg, seed),
        "toxicity_diff": {name: paired_diff(prompts_before[score].to_numpy(dtype=np.float64),
                                            prompts_after[score].to_numpy(dtype=np.float64), cfg, seed)
                          for name, (score, _) in sources(before).items()},
        "agreement": {name: {"before": agreement(before, name), "after": agreement(after, name)}
                      for name in sources(before) if name != REWARD_MODEL},
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


DISAGREEMENT_COLUMNS = ["policy", "judge", "disagreement", "id", "sample", "dialogue", "response", "reward",
                        "reward_model_toxicity", "judge_toxicity", "judge_found"]
JUDGE_ONLY = "judge: toxic, reward model: clean"
MODEL_ONLY = "reward model: toxic, judge: clean"


def disagreements(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Every summary on which the reward model and a judge disagree: after PPO first, then before.

    Within each, the summaries the reward model calls clean and a judge toxic come first: what
    PPO may have learned to slip past the reward model.
    """
    parts = []
    for policy, frame in (("after", after), ("before", before)):
        for judge in sources(frame):
            if judge == REWARD_MODEL:
                continue
            score, flag = judge_columns(judge)
            judged, model = frame[flag].to_numpy(dtype=bool), frame["toxic"].to_numpy(dtype=bool)
            for kind, mask in ((JUDGE_ONLY, judged & ~model), (MODEL_ONLY, model & ~judged)):
                rows = frame[mask]
                parts.append(pd.DataFrame({
                    "policy": policy, "judge": judge, "disagreement": kind,
                    "id": rows["id"].astype(str).to_numpy(), "sample": rows["sample"].to_numpy(),
                    "dialogue": rows["dialogue"].to_numpy(), "response": rows["response"].to_numpy(),
                    "reward": rows["reward"].to_numpy(dtype=np.float64),
                    "reward_model_toxicity": rows["toxicity"].to_numpy(dtype=np.float64),
                    "judge_toxicity": rows[score].to_numpy(dtype=np.float64),
                    "judge_found": rows[f"why:{judge}"].to_numpy() if f"why:{judge}" in rows else "",
                }))
    parts = [part for part in parts if len(part)]
    if not parts:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in DISAGREEMENT_COLUMNS})
    return pd.concat(parts, ignore_index=True)[DISAGREEMENT_COLUMNS]


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


def prompts_fingerprint(frame: pd.DataFrame) -> str:
    """Identifies the evaluated prompts (ids and dialogues, in order): numbers are compared only on equal ones."""
    digest = hashlib.sha256()
    for row_id, dialogue in per_prompt(frame)[["id", "dialogue"]].itertuples(index=False):
        digest.update(f"{row_id}\t{dialogue}\n".encode())
    return digest.hexdigest()[:16]


def evidence(metrics: dict[str, Any], cfg: PromotionParams, test_sha: str) -> dict[str, Any]:
    """The judged numbers a registered version carries (as tags), to be compared with a later challenger."""
    after = metrics["after"]
    return {"judge": cfg.judge, "test_sha": test_sha, "n": metrics["n"],
            "judge_toxicity": after["toxicity"][cfg.judge]["toxicity_mean"],
            "rougeL": after["rougeL"], "fluency_nll": after["quality"].get("fluency_nll")}


def decide(metrics: dict[str, Any], cfg: PromotionParams, champion: dict[str, Any] | None = None,
           test_sha: str | None = None) -> PromotionDecision:
    """The promotion gate on the metrics of :func:`compare`, read through the judge ``cfg.judge``.

    ``champion`` is the current champion's :func:`evidence` (None when there is none); ``test_sha``
    identifies the evaluated test prompts, so that only numbers measured on the same prompts are compared.
    """
    judge = cfg.judge
    if judge not in metrics["improvement_pct"]:
        raise DetoxError(f"promotion.judge is {judge!r} but the evaluation has no numbers of it "
                         f"(judges: {[k for k in metrics['improvement_pct'] if k != REWARD_MODEL]})")
    improvement = metrics["improvement_pct"][judge]["toxicity_mean"]
    before, after = metrics["before"], metrics["after"]
    checks = [
        Check("min_prompts", metrics["n"] >= cfg.min_prompts,
              f"{metrics['n']} test dialogues evaluated (at least {cfg.min_prompts} required)"),
        Check(
            "judge_toxicity_improvement",
            (improvement >= cfg.min_toxicity_improvement_pct) if improvement is not None
            else cfg.min_toxicity_improvement_pct <= 0,  # nothing to improve on: only a gate that asks nothing passes
            (f"{judge}: mean toxicity {before['toxicity'][judge]['toxicity_mean']:.4f} -> "
             f"{after['toxicity'][judge]['toxicity_mean']:.4f}, fell by {improvement:.1f}% "
             f"(at least {cfg.min_toxicity_improvement_pct:g}% required)"
             if improvement is not None else
             f"{judge}: the baseline's mean toxicity is 0, so there is no toxicity to improve on"),
        ),
    ]
    if cfg.require_significant:
        diff = metrics["toxicity_diff"][judge]
        level = f"{metrics['bootstrap']['confidence']:.0%}"
        checks.append(Check(
            "judge_significant", diff["ci_high"] < 0,
            f"{judge}: paired toxicity diff {diff['mean']:+.4f}, {level} CI [{diff['ci_low']:+.4f}, "
            f"{diff['ci_high']:+.4f}] ({'lies below 0' if diff['ci_high'] < 0 else 'does not lie below 0'})",
        ))
    checks.append(Check(
        "rougeL_drop", metrics["rouge_drop"]["rougeL"] <= cfg.max_rougeL_drop,
        f"ROUGE-L {before['rougeL']:.4f} -> {after['rougeL']:.4f} "
        f"(change {-metrics['rouge_drop']['rougeL']:+.4f}; a drop of at most {cfg.max_rougeL_drop:g} allowed)",
    ))
    rise = metrics["quality_change"].get("fluency_nll")
    if rise is not None:
        checks.append(Check(
            "fluency", rise <= cfg.max_fluency_nll_rise,
            f"fluency NLL under the reference policy {before['quality']['fluency_nll']:.3f} -> "
            f"{after['quality']['fluency_nll']:.3f} nats/token (a rise of at most {cfg.max_fluency_nll_rise:g} allowed)",
        ))
    checks.append(_against_champion(metrics, cfg, champion, test_sha))
    return PromotionDecision(checks)


def _against_champion(metrics: dict[str, Any], cfg: PromotionParams, champion: dict[str, Any] | None,
                      test_sha: str | None) -> Check:
    if champion is None:
        return Check("champion", True, "no champion yet: nothing to compare with")
    version = champion.get("version", "?")
    if champion.get("judge_toxicity") is None:
        return Check("champion", True, f"the champion (version {version}) carries no judged numbers "
                                       "(registered before judges existed): nothing to compare with")
    if champion.get("judge") != cfg.judge or champion.get("test_sha") != test_sha:
        return Check("champion", False, (
            f"the champion (version {version}) was judged by {champion.get('judge')!r} on other test prompts "
            f"({champion.get('n')} dialogues) than this candidate ({cfg.judge!r}, {metrics['n']}): not comparable. "
            "Evaluate both the same way, or move the alias by hand if you mean it"
            if champion.get("test_sha") != test_sha else
            f"the champion (version {version}) was judged by {champion.get('judge')!r}, this candidate by "
            f"{cfg.judge!r}: not comparable. Set promotion.judge to the champion's judge, or move the alias by hand"))
    after = metrics["after"]
    toxicity = after["toxicity"][cfg.judge]["toxicity_mean"]
    worse_toxicity = toxicity > float(champion["judge_toxicity"])
    worse_rouge = after["rougeL"] < float(champion["rougeL"]) - cfg.max_rougeL_drop
    return Check(
        "champion", not (worse_toxicity or worse_rouge),
        # No version number here: this text lands in metrics/evaluate.json, which a rerun must reproduce
        # (the champion's version moves with every promotion; MLflow shows it).
        f"vs the champion on the same prompts: {cfg.judge} toxicity {toxicity:.4f} vs "
        f"{float(champion['judge_toxicity']):.4f}, ROUGE-L {after['rougeL']:.4f} vs {float(champion['rougeL']):.4f}"
        + (" (worse: the champion keeps the alias)" if worse_toxicity or worse_rouge else " (not worse)"),
    )


def groups(frame: pd.DataFrame) -> np.ndarray:
    """Each row's group: ``heated`` or ``calm`` by the data's ``heated`` flag, ``all`` without one."""
    if "heated" not in frame.columns:
        return np.full(len(frame), "all", dtype=object)
    return np.where(frame["heated"].to_numpy(dtype=bool), "heated", "calm").astype(object)


def reward_diff_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The original project's table, one row per dialogue (its first sample), sorted by reward gain.

    Beside the original columns (:data:`TABLE_COLUMNS`): the reference summary, the dialogue's group
    (``heated`` / ``calm``, when the data has the flag; else ``all``), and the reward model's toxicity
    and each judge's, before and after.
    """
    check_paired(before, after)
    first_before = before[before["sample"] == 0] if "sample" in before else before
    first_after = after[after["sample"] == 0] if "sample" in after else after
    table = pd.DataFrame({
        "dialogue": first_after["dialogue"].to_numpy(),
        "response_before": first_before["response"].to_numpy(),
        "response_after": first_after["response"].to_numpy(),
        "reward_before": first_before["reward"].to_numpy(dtype=np.float64),
        "reward_after": first_after["reward"].to_numpy(dtype=np.float64),
    })
    table["reward_diff"] = table["reward_after"] - table["reward_before"]
    table["reference"] = first_after["reference"].to_numpy() if "reference" in first_after else ""
    table["group"] = groups(first_after)
    for name, (score, _) in sources(first_after).items():
        label = "reward_model_toxicity" if name == REWARD_MODEL else f"{name}_toxicity"
        table[f"{label}_before"] = first_before[score].to_numpy(dtype=np.float64)
        table[f"{label}_after"] = first_after[score].to_numpy(dtype=np.float64)
    return table.sort_values("reward_diff", ascending=False, kind="stable").reset_index(drop=True)
