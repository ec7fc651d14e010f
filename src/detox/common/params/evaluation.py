"""The evaluation sections: ``eval`` (what is scored), ``tracking`` (MLflow names), ``promotion`` (the gate)."""

from __future__ import annotations

from pydantic import Field

from detox.common.params.base import Strict


class EvalParams(Strict):
    num_samples: int | None = Field(None, ge=1, description="test dialogues to score; null = all")
    samples_per_prompt: int = Field(
        5, ge=1, le=100, description="summaries sampled per test dialogue (k of expected maximum toxicity over k)"
    )
    seed: int = Field(1234, ge=0)
    judges: tuple[str, ...] = Field(
        ("oracle", "ngram"),
        min_length=1,
        description="names from the `judges` section: each scores every summary, beside the reward model",
    )
    facts_judge: str | None = Field(
        "facts",
        min_length=1,
        description="the faithfulness judge (a `kind: facts` or `kind: nli` entry of the judges section): "
        "which summaries state facts their dialogue does not; null = none",
    )


class TrackingParams(Strict):
    experiment: str = Field("detox-summaries", min_length=1, description="MLflow experiment name")
    registered_model: str = Field("detox-summarizer", min_length=1, description="MLflow registered model name")
    sft_model: str = Field("detox-sft", min_length=1, description="registered model of the sft stage's policy")
    reward_model: str = Field("detox-reward", min_length=1, description="registered model of the reward stage")


class PromotionParams(Strict):
    """The evaluate stage's statistics and the gate a new policy passes to become ``champion``.

    The gate reads the numbers of an independent judge (``judge``), never the reward model's own.
    """

    judge: str = Field("oracle", min_length=1, description="the judge (one of eval.judges) whose numbers decide")
    min_toxicity_improvement_pct: float = Field(
        50.0, le=100.0, description="the judge's mean toxicity must fall by at least this many percent"
    )
    max_rougeL_drop: float = Field(0.05, ge=0.0, le=1.0, description="ROUGE-L may fall by at most this much")
    max_fluency_nll_rise: float = Field(
        0.5, ge=0.0, description="mean per-token NLL under the reference policy may rise by at most this (nats)"
    )
    min_prompts: int = Field(100, ge=1, description="fewer evaluated test dialogues than this never promote")
    require_significant: bool = Field(True, description="the CI of the judge's paired toxicity diff must lie below 0")
    refuse_more_invented: bool = Field(
        True,
        description="refuse a policy whose share of summaries with invented facts rose significantly "
        "(the CI of its paired diff lies above 0); needs eval.facts_judge",
    )
    bootstrap_samples: int = Field(2000, ge=100, le=1_000_000, description="resamples of the paired diffs")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="level of the bootstrap confidence interval")
    report_rows: int = Field(
        5, ge=1, le=100, description="top and bottom rows of the reward diff table shown in the report"
    )
