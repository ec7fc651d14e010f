"""The root of ``params.yaml``: its sections, and the rules that span them."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from detox.common.params.base import Strict
from detox.common.params.data import DataParams, ValidateParams
from detox.common.params.evaluation import EvalParams, PromotionParams, TrackingParams
from detox.common.params.judges import DEFAULT_JUDGES, FACTS_KINDS, JudgeSpec
from detox.common.params.models import GenerationParams, PolicyParams, PromptParams, RewardParams, SFTParams
from detox.common.params.ppo import PPOParams


class Params(Strict):
    seed: int = Field(42, ge=0, le=2**32 - 1)
    data: DataParams = DataParams()
    policy: PolicyParams = PolicyParams()
    sft: SFTParams = SFTParams()
    reward: RewardParams = RewardParams()
    validation: ValidateParams = ValidateParams()
    prompt: PromptParams = PromptParams()
    generation: GenerationParams = GenerationParams()
    eval: EvalParams = EvalParams()
    judges: dict[str, JudgeSpec] = Field(default_factory=lambda: dict(DEFAULT_JUDGES))
    ppo: PPOParams = PPOParams()
    tracking: TrackingParams = TrackingParams()
    promotion: PromotionParams = PromotionParams()

    @model_validator(mode="after")
    def _trainings_possible(self) -> Params:
        if self.policy.source == "builtin" and self.sft.enabled is False:
            raise ValueError(
                "sft.enabled is false, but the builtin policy has no weights until the sft stage "
                "trains it: set sft.enabled to null (or true), or use policy.source hub/local"
            )
        if self.reward.source == "builtin" and self.reward.train.enabled is False:
            raise ValueError(
                "reward.train.enabled is false, but the builtin reward model has no weights until the "
                "reward stage trains it: set it to null (or true), or use reward.source hub/local"
            )
        if self.reward.data.source == "hub" and not self.reward.data.hub.name:
            raise ValueError(
                "reward.data.source is hub but reward.data.hub.name is empty: set it to a Hub "
                "dataset id with text and label columns"
            )
        return self

    @model_validator(mode="after")
    def _judges_defined(self) -> Params:
        for name in self.eval.judges:
            if name not in self.judges:
                raise ValueError(
                    f"eval.judges names {name!r}, which the judges section does not define "
                    f"(defined: {sorted(self.judges)})"
                )
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise ValueError(f"judge name {name!r}: use letters, digits, '_', '.', '-' (it names a folder)")
            if self.judges[name].kind in FACTS_KINDS:
                raise ValueError(
                    f"eval.judges names {name!r}, a judge of facts (kind {self.judges[name].kind}), not of toxicity: "
                    "name it in eval.facts_judge instead"
                )
        facts = self.eval.facts_judge
        if facts is not None:
            if facts not in self.judges or self.judges[facts].kind not in FACTS_KINDS:
                defined = sorted(n for n, spec in self.judges.items() if spec.kind in FACTS_KINDS)
                raise ValueError(
                    f"eval.facts_judge is {facts!r}, which is no judge of facts (kind facts or nli) "
                    f"of the judges section (those defined: {defined}); or set it to null"
                )
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", facts):
                raise ValueError(f"judge name {facts!r}: use letters, digits, '_', '.', '-' (it names a folder)")
        if len(set(self.eval.judges)) != len(self.eval.judges):
            raise ValueError(f"eval.judges lists a judge twice: {list(self.eval.judges)}")
        if self.ppo.select.judge is not None and self.ppo.select.judge not in self.eval.judges:
            raise ValueError(
                f"ppo.select.judge is {self.ppo.select.judge!r}, which is not one of eval.judges "
                f"{list(self.eval.judges)}: set it to one of them, or null for the reward model"
            )
        if self.promotion.judge not in self.eval.judges:
            raise ValueError(
                f"promotion.judge is {self.promotion.judge!r}, which is not one of eval.judges "
                f"{list(self.eval.judges)}: the gate needs that judge's numbers"
            )
        return self
