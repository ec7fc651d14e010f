"""What differs between PPO, RLOO and GRPO in the engine's step: the advantages and the mini-batch loss.

Everything else (rollout, scoring, reference log-probs, evaluation, checkpoint selection, resume,
precision, accelerate) is :class:`~detox.ppo.engine.PPOTrainer`'s and shared. Each objective turns
the scored rollout into :class:`Targets` (phases 4 and 5 of the step) and a mini-batch into a loss
and its stats, named as :mod:`detox.ppo.stats` names them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import Tensor

from detox.common.params import PPOParams
from detox.ppo import stats as names
from detox.ppo.core import compute_gae, compute_rewards, masked_whiten, policy_loss, value_loss
from detox.ppo.critic_free import (
    dapo_normalizers,
    group_std,
    grpo_advantages,
    grpo_loss,
    rloo_advantages,
    rloo_loss,
)
from detox.ppo.forward import ForwardPass


@dataclass(frozen=True)
class Rewards:
    """Phase 4's result: per-token rewards (ppo's GAE input; rloo sums them per response) and the KL."""

    rewards: Tensor  # (B, T): -kl_coef * kl on each token, plus the score on the last one
    kl: Tensor  # (B, T) the per-token KL estimate (ppo.kl.estimator) of the old policy to the reference
    non_score: Tensor  # (B, T) -kl_coef * kl
    scores: Tensor  # (B,) the (prepared) reward-model scores


@dataclass(frozen=True)
class Targets:
    """What the optimisation trains towards, and what the step reports about it."""

    advantages: Tensor  # (B, T) per token (ppo) or (B,) per response (rloo, grpo)
    returns: Tensor | None  # (B, T) value targets (ppo only)
    kl: Tensor  # (B, T) the per-token KL estimate (ppo.kl.estimator) of the old policy to the reference
    non_score: Tensor  # (B, T) -kl_coef * kl (0 for grpo, whose KL is a loss term)
    group_stats: dict[str, Tensor]  # critic-free only: TRL's group stats of the step


class Objective:
    """One algorithm's advantages and loss; :func:`objective_for` picks it from ``ppo.algorithm``."""

    uses_values = False
    adapts_kl = True  # the KL controller adapts the coefficient of the KL in the rewards

    def __init__(self, cfg: PPOParams) -> None:
        self.cfg, self.k = cfg, cfg.group_size

    def kl_coef(self, controller_value: float) -> float:
        """The coefficient of the KL in the rewards (ppo, rloo: the controller's)."""
        return controller_value

    def rewards(self, scores: Tensor, forward: ForwardPass, mask: Tensor, kl_coef: float) -> Rewards:
        """Phase 4: ``-kl_coef * KL`` per token plus the score on the last (grpo: ``kl_coef`` is 0 here)."""
        rewards, kl, non_score = compute_rewards(
            scores, forward.old.logprobs, forward.ref_logprobs, mask, kl_coef, self.cfg.kl.estimator, self.cfg.sharpen
        )
        return Rewards(rewards, kl, non_score, scores)

    def targets(self, rewards: Rewards, forward: ForwardPass, mask: Tensor) -> Targets:
        """Phase 5: the advantages (and ppo's returns)."""
        raise NotImplementedError

    def normalizers(self, mask: Tensor, order: Tensor, accelerator: Accelerator) -> list[Tensor | None]:
        """What divides each mini-batch's loss in this epoch's ``order`` (None: the loss's own mean)."""
        return [None for _ in range(0, len(order), self.cfg.mini_batch_size)]

    def loss(
        self, logprobs: Tensor, values: Tensor | None, forward: ForwardPass, targets: Targets, index: Tensor,
        mask: Tensor, normalizer: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
        raise NotImplementedError

    def _group_stats(self, rewards: Tensor) -> dict[str, Tensor]:
        std = group_std(rewards, self.k)
        return {
            names.FRAC_REWARD_ZERO_STD: torch.isclose(std, torch.zeros_like(std)).float().mean(),
            names.REWARD_GROUP_STD: std.mean(),
        }


class PPO(Objective):
    """GAE on the value head's values, whitened; the clipped surrogate plus ``vf_coef`` x the value loss."""

    uses_values = True

    def targets(self, rewards: Rewards, forward: ForwardPass, mask: Tensor) -> Targets:
        advantages, returns = compute_gae(forward.old.values, rewards.rewards, mask, self.cfg.gamma, self.cfg.lam)
        return Targets(masked_whiten(advantages, mask), returns, rewards.kl, rewards.non_score, {})

    def loss(self, logprobs, values, forward, targets, index, mask, normalizer):
        pg_loss, pg = policy_loss(
            logprobs, forward.old.logprobs[index], targets.advantages[index], mask, self.cfg.cliprange
        )
        vf_loss, vf = value_loss(
            values, forward.old.values[index], targets.returns[index], mask, self.cfg.cliprange_value
        )
        loss = pg_loss + self.cfg.vf_coef * vf_loss
        return loss, {
            names.LOSS_POLICY: pg_loss,
            names.LOSS_VALUE: vf_loss,
            names.LOSS_TOTAL: loss,
            names.POLICY_CLIPFRAC: pg["clipfrac"],
            names.APPROXKL: pg["approxkl"],
            names.RATIO_MEAN: pg["ratio"],
            names.VALUE_CLIPFRAC: vf["clipfrac"],
            names.VALUE_ERROR: vf["error"],
            names.RATIO_MAX: pg["ratio_max"],
            names.RATIO_MIN: pg["ratio_min"],
        }


def _critic_free_stats(loss: Tensor, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        names.LOSS_POLICY: loss,
        names.LOSS_TOTAL: loss,
        names.APPROXKL: stats["approxkl"],
        names.RATIO_MEAN: stats["ratio"],
        names.RATIO_MAX: stats["ratio_max"],
        names.RATIO_MIN: stats["ratio_min"],
        **{key: stats[key] for key in names.CLIP_RATIOS},
    }


class RLOO(Objective):
    """Reward = score - kl_coef x summed KL; leave-one-out advantages; the sequence-ratio clipped surrogate."""

    def targets(self, rewards: Rewards, forward: ForwardPass, mask: Tensor) -> Targets:
        sequence_rewards = rewards.rewards.sum(dim=1)  # score + non-score reward: the RLHF reward of each response
        kl = rewards.kl
        return Targets(
            rloo_advantages(sequence_rewards, self.k), None, kl, rewards.non_score,
            {**self._group_stats(sequence_rewards), names.TRL_KL: kl.sum() / mask.sum().clamp(min=1)},
        )  # fmt: skip

    def loss(self, logprobs, values, forward, targets, index, mask, normalizer):
        loss, stats = rloo_loss(
            logprobs, forward.old.logprobs[index], targets.advantages[index], mask, self.cfg.cliprange
        )
        return loss, _critic_free_stats(loss, stats)


class GRPO(Objective):
    """Group-normalised score advantages; the per-token clipped surrogate plus ``grpo.beta`` x k3 KL."""

    adapts_kl = False  # beta is a loss coefficient, fixed

    def normalizers(self, mask: Tensor, order: Tensor, accelerator: Accelerator) -> list[Tensor | None]:
        """dapo: the response tokens of each mini-batch's accumulation window, summed over all processes."""
        if self.cfg.grpo.loss_type != "dapo":
            return super().normalizers(mask, order, accelerator)
        size, accumulation = self.cfg.mini_batch_size, self.cfg.gradient_accumulation_steps
        tokens = torch.stack([mask[order[start : start + size]].sum() for start in range(0, len(order), size)])
        windows = tokens.view(-1, accumulation).sum(dim=1)  # batch_size is a multiple of mini x accumulation
        windows = accelerator.reduce(windows.float(), "sum")
        return list(dapo_normalizers(windows, accelerator.num_processes, accumulation).repeat_interleave(accumulation))

    def kl_coef(self, controller_value: float) -> float:
        return self.cfg.grpo.beta  # a loss term, not a reward penalty

    def rewards(self, scores: Tensor, forward: ForwardPass, mask: Tensor, kl_coef: float) -> Rewards:
        return super().rewards(scores, forward, mask, 0.0)  # the KL is measured, not put into the reward

    def targets(self, rewards: Rewards, forward: ForwardPass, mask: Tensor) -> Targets:
        # the score, plus ppo.sharpen x the reference's summed log-probs (0 by default: the score alone)
        sequence_rewards = rewards.scores if not self.cfg.sharpen else rewards.rewards.sum(dim=1)
        return Targets(
            grpo_advantages(sequence_rewards, self.k, self.cfg.grpo.scale_rewards), None, rewards.kl,
            rewards.non_score, self._group_stats(sequence_rewards),
        )  # fmt: skip

    def loss(self, logprobs, values, forward, targets, index, mask, normalizer):
        g = self.cfg.grpo
        if g.loss_type == "dr_grpo":
            normalizer = torch.tensor(float(len(index) * self.cfg.response_length.max))
        loss, stats = grpo_loss(
            logprobs, forward.old.logprobs[index], forward.ref_logprobs[index], targets.advantages[index], mask,
            self.cfg.cliprange, g.beta, g.loss_type, normalizer if g.loss_type != "grpo" else None,
        )  # fmt: skip
        return loss, {**_critic_free_stats(loss, stats), names.TRL_KL: stats["kl"]}


OBJECTIVES: dict[str, type[Objective]] = {"ppo": PPO, "rloo": RLOO, "grpo": GRPO}


def objective_for(cfg: PPOParams) -> Objective:
    return OBJECTIVES[cfg.algorithm](cfg)
