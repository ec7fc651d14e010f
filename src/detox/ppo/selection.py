"""Evaluation during PPO training, and the choice of the checkpoint that becomes ``models/ppo``.

The last step is not always the best one: summaries can garble or collapse several steps
before training ends. Every ``ppo.eval_every`` steps (and before the first and after the
last), the policy summarises a fixed validation subset with one seeded pure sample per
dialogue, and it is measured as the evaluate stage measures it: the reward model, the
independent judges, ROUGE-L, fluency under the reference policy, length and distinct-2.

The selected checkpoint is the one with the fewest summaries that the judge
``ppo.select.judge`` calls toxic (ties: the higher ``ppo.select.tiebreak``, ROUGE-L by default:
among equally clean checkpoints the one that summarises best, not the one the reward model
likes most), among those whose ROUGE-L is at most ``ppo.select.max_rougeL_drop`` below the
untrained policy's and that did not collapse.
Training stops early when that choice has not improved for ``ppo.patience`` evaluations,
or when the summaries collapse (distinct-2 or mean length under ``ppo.collapse``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from detox.common.params import PPOParams
from detox.evaluate.columns import judge_columns
from detox.evaluate.quality import response_nll, rouge
from detox.evaluate.summary import quality_numbers, toxicity_numbers
from detox.evaluate.thresholds import TOXIC_THRESHOLD
from detox.judges.panel import Judge
from detox.models.reward import RewardScorer
from detox.models.sampling import sampler
from detox.models.skinny import skinny_matmuls
from detox.ppo.engine import PPOTrainer
from detox.ppo.rollout import only_this_generation_config


@dataclass
class ValidationSet:
    """The fixed validation subset and the instruments that measure a policy on it."""

    prompts: list[str]
    dialogues: list[str]
    references: list[str]
    scorer: RewardScorer
    judges: Mapping[str, Judge]


@torch.no_grad()
def evaluate_policy(trainer: PPOTrainer, data: ValidationSet, seed: int) -> dict[str, float]:
    """One seeded pure sample per validation prompt from the current policy, measured."""
    policy, tokenizer, cfg = trainer.unwrapped, trainer.tokenizer, trainer.cfg
    device = trainer.accelerator.device
    enc = tokenizer(
        data.prompts, padding=True, truncation=True, max_length=cfg.max_source_tokens, return_tensors="pt"
    ).to(device)
    config = trainer.rollout_config(cfg.response_length.max, capture=False)
    generator = policy.generator()
    torch.manual_seed(seed)
    with (
        trainer.accelerator.autocast(),
        only_this_generation_config(generator, config),
        skinny_matmuls(policy.model, cfg.skinny_matmul),
        sampler(cfg.sampler),
    ):
        sequences = generator.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config
        )
    responses = [r.strip() for r in tokenizer.batch_decode(sequences[:, 1:], skip_special_tokens=True)]
    scores = data.scorer.score(responses, data.dialogues)
    with policy.reference(), trainer.accelerator.autocast():
        reference = policy.frozen_reference if policy.frozen_reference is not None else policy.model
        nll = response_nll(reference, tokenizer, data.prompts, responses, cfg.max_source_tokens, cfg.mini_batch_size)
    frame = pd.DataFrame(
        {"id": np.arange(len(responses)), "response": responses, "length": [len(r.split()) for r in responses]}
    )
    quality = quality_numbers(frame)
    stats = {
        "eval/reward_mean": scores.reward.mean().item(),
        # torch's float32 mean, not toxicity_numbers' float64 one: the logged numbers stay as they were
        "eval/reward_model/toxic_share": (scores.toxicity > TOXIC_THRESHOLD).float().mean().item(),
        "eval/rougeL": float(rouge(responses, data.references)["rougeL"].mean()),
        "eval/fluency_nll": float(nll.mean()),
        "eval/mean_length": quality["mean_length"],
        "eval/distinct_2": quality["distinct_2"],
        "eval/looping_share": quality["looping_share"],
    }
    for name, judge in data.judges.items():
        score, flag = judge_columns(name)
        frame[score] = judge.score(responses)
        frame[flag] = frame[score] > judge.threshold
        judged = toxicity_numbers(frame, score, flag)
        stats[f"eval/{name}/toxic_share"] = judged["toxic_share"]
        stats[f"eval/{name}/toxicity_mean"] = judged["toxicity_mean"]
    return stats


@dataclass
class Selection:
    """Which evaluated checkpoint is best so far, and whether to stop."""

    cfg: PPOParams
    rouge_floor: float | None = None  # the untrained policy's ROUGE-L minus the allowed drop
    best_step: int | None = None
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None  # the trainable parameters at best_step (CPU)
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str = ""

    def _toxicity_key(self) -> str:
        return f"eval/{self.cfg.select.judge or 'reward_model'}/toxic_share"

    def consider(
        self, step: int, stats: Mapping[str, float], state: Callable[[], dict[str, torch.Tensor]]
    ) -> str | None:
        """Record the evaluation after ``step`` training steps (``state`` gives the trainable parameters,
        kept when this checkpoint is the best so far); return why to stop, or None."""
        self.history.append({"step": step, **stats})
        toxic, rouge_l = stats[self._toxicity_key()], stats["eval/rougeL"]
        if self.rouge_floor is None:
            self.rouge_floor = rouge_l - self.cfg.select.max_rougeL_drop
        collapse = self._collapse(stats) if step > 0 else None
        tiebreak = stats["eval/rougeL"] if self.cfg.select.tiebreak == "rougeL" else stats["eval/reward_mean"]
        key = (toxic, -tiebreak)
        if collapse is None and rouge_l >= self.rouge_floor and (self.best_key is None or key < self.best_key):
            self.best_step, self.best_key, self.since_best = step, key, 0
            self.best_state = state()
            self.reason = (
                f"fewest summaries toxic to {self.cfg.select.judge or 'the reward model'} on the "
                f"validation subset ({toxic:.3f}), ROUGE-L {rouge_l:.4f} >= floor {self.rouge_floor:.4f}"
            )
        else:
            self.since_best += 1
        if collapse is not None:
            return collapse
        if self.cfg.patience is not None and self.since_best >= self.cfg.patience:
            return (
                f"no better checkpoint in {self.since_best} evaluations (ppo.patience {self.cfg.patience}); "
                f"the best was after step {self.best_step}"
            )
        return None

    def _collapse(self, stats: Mapping[str, float]) -> str | None:
        limits = self.cfg.collapse
        if stats["eval/distinct_2"] < limits.min_distinct_2:
            return (
                f"the summaries collapsed: distinct-2 {stats['eval/distinct_2']:.3f} < "
                f"ppo.collapse.min_distinct_2 {limits.min_distinct_2}"
            )
        if stats["eval/mean_length"] < limits.min_mean_length:
            return (
                f"the summaries collapsed: mean length {stats['eval/mean_length']:.1f} words < "
                f"ppo.collapse.min_mean_length {limits.min_mean_length}"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("rouge_floor", "best_step", "best_key", "best_state", "since_best", "history", "reason")
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, tuple(value) if key == "best_key" and value is not None else value)


def evaluation_steps(cfg: PPOParams) -> set[int]:
    """After how many training steps the policy is evaluated: 0, every ``eval_every``, and the last."""
    if cfg.eval_every is None:
        return set()
    return {0, cfg.steps, *range(cfg.eval_every, cfg.steps, cfg.eval_every)}
