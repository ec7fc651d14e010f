"""The promotion gate: whether the evaluated policy becomes ``champion``; it does no I/O.

The gate reads an independent judge (``promotion.judge``), never the reward model: PPO
optimised the reward model's score, mistakes included, so its improvement alone proves
nothing. It also compares the candidate with the current champion on the same judged
numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from detox.common.errors import DetoxError
from detox.common.params import PromotionParams
from detox.evaluate.columns import REWARD_MODEL
from detox.evaluate.summary import per_prompt


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
        return {
            "decision": self.decision,
            "promoted": self.promoted,
            "reasons": self.reasons,
            "checks": {c.name: {"passed": c.passed, "detail": c.detail} for c in self.checks},
        }


def prompts_fingerprint(frame: pd.DataFrame) -> str:
    """Identifies the evaluated prompts (ids and dialogues, in order): numbers are compared only on equal ones."""
    digest = hashlib.sha256()
    for row_id, dialogue in per_prompt(frame)[["id", "dialogue"]].itertuples(index=False):
        digest.update(f"{row_id}\t{dialogue}\n".encode())
    return digest.hexdigest()[:16]


def evidence(metrics: dict[str, Any], cfg: PromotionParams, test_sha: str) -> dict[str, Any]:
    """The judged numbers a registered version carries (as tags), to be compared with a later challenger."""
    after = metrics["after"]
    return {
        "judge": cfg.judge,
        "test_sha": test_sha,
        "n": metrics["n"],
        "judge_toxicity": after["toxicity"][cfg.judge]["toxicity_mean"],
        "rougeL": after["rougeL"],
        "fluency_nll": after["quality"].get("fluency_nll"),
    }


def decide(
    metrics: dict[str, Any], cfg: PromotionParams, champion: dict[str, Any] | None = None, test_sha: str | None = None
) -> PromotionDecision:
    """The promotion gate on the metrics of :func:`compare`, read through the judge ``cfg.judge``.

    ``champion`` is the current champion's :func:`evidence` (None when there is none); ``test_sha``
    identifies the evaluated test prompts, so that only numbers measured on the same prompts are compared.
    """
    judge = cfg.judge
    if judge not in metrics["improvement_pct"]:
        raise DetoxError(
            f"promotion.judge is {judge!r} but the evaluation has no numbers of it "
            f"(judges: {[k for k in metrics['improvement_pct'] if k != REWARD_MODEL]})"
        )
    improvement = metrics["improvement_pct"][judge]["toxicity_mean"]
    before, after = metrics["before"], metrics["after"]
    checks = [
        Check(
            "min_prompts",
            metrics["n"] >= cfg.min_prompts,
            f"{metrics['n']} test dialogues evaluated (at least {cfg.min_prompts} required)",
        ),
        Check(
            "judge_toxicity_improvement",
            (improvement >= cfg.min_toxicity_improvement_pct)
            if improvement is not None
            else cfg.min_toxicity_improvement_pct <= 0,  # nothing to improve on: only a gate that asks nothing passes
            (
                f"{judge}: mean toxicity {before['toxicity'][judge]['toxicity_mean']:.4f} -> "
                f"{after['toxicity'][judge]['toxicity_mean']:.4f}, fell by {improvement:.1f}% "
                f"(at least {cfg.min_toxicity_improvement_pct:g}% required)"
                if improvement is not None
                else f"{judge}: the baseline's mean toxicity is 0, so there is no toxicity to improve on"
            ),
        ),
    ]
    if cfg.require_significant:
        diff = metrics["toxicity_diff"][judge]
        level = f"{metrics['bootstrap']['confidence']:.0%}"
        checks.append(
            Check(
                "judge_significant",
                diff["ci_high"] < 0,
                f"{judge}: paired toxicity diff {diff['mean']:+.4f}, {level} CI [{diff['ci_low']:+.4f}, "
                f"{diff['ci_high']:+.4f}] ({'lies below 0' if diff['ci_high'] < 0 else 'does not lie below 0'})",
            )
        )
    checks.append(
        Check(
            "rougeL_drop",
            metrics["rouge_drop"]["rougeL"] <= cfg.max_rougeL_drop,
            f"ROUGE-L {before['rougeL']:.4f} -> {after['rougeL']:.4f} "
            f"(change {-metrics['rouge_drop']['rougeL']:+.4f}; a drop of at most {cfg.max_rougeL_drop:g} allowed)",
        )
    )
    rise = metrics["quality_change"].get("fluency_nll")
    if rise is not None:
        checks.append(
            Check(
                "fluency",
                rise <= cfg.max_fluency_nll_rise,
                f"fluency NLL under the reference policy {before['quality']['fluency_nll']:.3f} -> "
                f"{after['quality']['fluency_nll']:.3f} nats/token "
                f"(a rise of at most {cfg.max_fluency_nll_rise:g} allowed)",
            )
        )
    invented = metrics.get("invented_diff")
    if cfg.refuse_more_invented and invented is not None:
        more = invented["ci_low"] > 0
        level = f"{metrics['bootstrap']['confidence']:.0%}"
        checks.append(
            Check(
                "invented_facts",
                not more,
                f"summaries with invented facts {before['quality']['invented_share']:.1%} -> "
                f"{after['quality']['invented_share']:.1%}: paired diff {invented['mean']:+.4f}, {level} CI "
                f"[{invented['ci_low']:+.4f}, {invented['ci_high']:+.4f}] "
                "("
                + ("significantly more: a policy that invents more is refused" if more else "not significantly more")
                + ")",
            )
        )
    checks.append(_against_champion(metrics, cfg, champion, test_sha))
    return PromotionDecision(checks)


def _against_champion(
    metrics: dict[str, Any], cfg: PromotionParams, champion: dict[str, Any] | None, test_sha: str | None
) -> Check:
    if champion is None:
        return Check("champion", True, "no champion yet: nothing to compare with")
    version = champion.get("version", "?")
    if champion.get("judge_toxicity") is None:
        return Check(
            "champion",
            True,
            f"the champion (version {version}) carries no judged numbers "
            "(registered before judges existed): nothing to compare with",
        )
    if champion.get("judge") != cfg.judge or champion.get("test_sha") != test_sha:
        return Check(
            "champion",
            False,
            (
                f"the champion (version {version}) was judged by {champion.get('judge')!r} on other test prompts "
                f"({champion.get('n')} dialogues) than this candidate ({cfg.judge!r}, {metrics['n']}): not comparable. "
                "Evaluate both the same way, or move the alias by hand if you mean it"
                if champion.get("test_sha") != test_sha
                else f"the champion (version {version}) was judged by {champion.get('judge')!r}, this candidate by "
                f"{cfg.judge!r}: not comparable. Set promotion.judge to the champion's judge, or move the alias by hand"
            ),
        )
    after = metrics["after"]
    toxicity = after["toxicity"][cfg.judge]["toxicity_mean"]
    worse_toxicity = toxicity > float(champion["judge_toxicity"])
    worse_rouge = after["rougeL"] < float(champion["rougeL"]) - cfg.max_rougeL_drop
    return Check(
        "champion",
        not (worse_toxicity or worse_rouge),
        # No version number here: this text lands in metrics/evaluate.json, which a rerun must reproduce
        # (the champion's version moves with every promotion; MLflow shows it).
        f"vs the champion on the same prompts: {cfg.judge} toxicity {toxicity:.4f} vs "
        f"{float(champion['judge_toxicity']):.4f}, ROUGE-L {after['rougeL']:.4f} vs {float(champion['rougeL']):.4f}"
        + (" (worse: the champion keeps the alias)" if worse_toxicity or worse_rouge else " (not worse)"),
    )
