"""The statistics of a PPO step: every name in one place, and the step's summary of its batch.

Where TRL 0.11's ``PPOTrainer`` logs the quantity (``record_step_stats``, ``train_minibatch``'s
stats, ``log_stats`` and the step's timers), the name is TRL's, so dashboards built for TRL read
them. TRL logs the ratio as a histogram (``ppo/policy/ratio``); here it is three scalars. The
project's own stats keep the ``env/`` prefix (and ``time/`` for the phases TRL does not time).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from accelerate import Accelerator
from torch import Tensor

from detox.evaluate.quality import distinct_ngrams
from detox.ppo.core import masked_mean, masked_var

KL = "objective/kl"  # mean over responses of the KL summed over tokens
KL_COEF = "objective/kl_coef"  # the coefficient the step's rewards used (before the controller's update)
KL_STDERR = "objective/kl_stderr"  # standard error of KL over the responses (project's)
ENTROPY = "objective/entropy"  # mean over responses of the entropy summed over tokens
NON_SCORE_REWARD = "ppo/mean_non_score_reward"  # mean over responses of the KL penalty summed over tokens
REWARD_MEAN = "env/reward_mean"  # raw reward-model scores (before ppo.score's normalisation and clip)
REWARD_STD = "env/reward_std"
TOXICITY_MEAN = "env/toxicity_mean"  # the reward model's P(toxic) (project's)
DISTINCT_2 = "env/distinct_2"  # distinct bigrams of the responses (project's)
RESPONSE_LENGTH = "tokens/responses_len_mean"  # response tokens up to and including the first EOS
RETURNS_MEAN = "ppo/returns/mean"
RETURNS_VAR = "ppo/returns/var"
VALUE_MEAN = "ppo/val/mean"  # the old values
VAR_EXPLAINED = "ppo/val/var_explained"  # 1 - ppo/val/error / ppo/returns/var

# Averaged over the optimisation's mini-batches (the ratio's max and min: taken over them).
LOSS_POLICY = "ppo/loss/policy"
LOSS_VALUE = "ppo/loss/value"
LOSS_TOTAL = "ppo/loss/total"
POLICY_CLIPFRAC = "ppo/policy/clipfrac"
APPROXKL = "ppo/policy/approxkl"
RATIO_MEAN = "ppo/policy/ratio_mean"
RATIO_MAX = "ppo/policy/ratio_max"
RATIO_MIN = "ppo/policy/ratio_min"
VALUE_CLIPFRAC = "ppo/val/clipfrac"
VALUE_ERROR = "ppo/val/error"  # squared error of the training pass's values against the returns

# Wall clock of each phase of a step, in seconds (logs/timings and MLflow, never DVC's plots).
TIMING_PREFIX = "time/"
TIME_ROLLOUT = "time/rollout"
TIME_SCORE = "time/score"
TIME_FORWARD_PASS = "time/ppo/forward_pass"
TIME_COMPUTE_REWARDS = "time/ppo/compute_rewards"
TIME_COMPUTE_ADVANTAGES = "time/ppo/compute_advantages"
TIME_OPTIMIZE_STEP = "time/ppo/optimize_step"
TIME_CALC_STATS = "time/ppo/calc_stats"
TIME_TOTAL = "time/ppo/total"  # the whole step, rollout and scoring included
TOKENS_PER_SECOND = "time/tokens_per_second"

TRAIN_MEANS = (LOSS_POLICY, LOSS_VALUE, LOSS_TOTAL, POLICY_CLIPFRAC, APPROXKL, RATIO_MEAN, VALUE_CLIPFRAC, VALUE_ERROR)
STEP_STATS = (
    KL,
    KL_COEF,
    KL_STDERR,
    ENTROPY,
    NON_SCORE_REWARD,
    REWARD_MEAN,
    REWARD_STD,
    TOXICITY_MEAN,
    DISTINCT_2,
    RESPONSE_LENGTH,
    RETURNS_MEAN,
    RETURNS_VAR,
    VALUE_MEAN,
    VAR_EXPLAINED,
    *TRAIN_MEANS,
    RATIO_MAX,
    RATIO_MIN,
)
TIMINGS = (
    TIME_ROLLOUT,
    TIME_SCORE,
    TIME_FORWARD_PASS,
    TIME_COMPUTE_REWARDS,
    TIME_COMPUTE_ADVANTAGES,
    TIME_OPTIMIZE_STEP,
    TIME_CALC_STATS,
    TIME_TOTAL,
    TOKENS_PER_SECOND,
)


class MinibatchStats:
    """Sums (and extremes) of the optimisation's per-mini-batch stats, for one step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.extremes = {RATIO_MAX: -float("inf"), RATIO_MIN: float("inf")}
        self.count = 0

    def add(
        self, losses: tuple[Tensor, Tensor, Tensor], pg_stats: Mapping[str, Tensor], vf_stats: Mapping[str, Tensor]
    ) -> None:
        values = (
            *losses,
            pg_stats["clipfrac"],
            pg_stats["approxkl"],
            pg_stats["ratio"],
            vf_stats["clipfrac"],
            vf_stats["error"],
        )
        for key, value in zip(TRAIN_MEANS, values, strict=True):
            self.sums[key] = self.sums.get(key, 0.0) + value.item()
        self.extremes[RATIO_MAX] = max(self.extremes[RATIO_MAX], pg_stats["ratio_max"].item())
        self.extremes[RATIO_MIN] = min(self.extremes[RATIO_MIN], pg_stats["ratio_min"].item())
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / self.count for key, value in self.sums.items()}


def step_stats(
    accelerator: Accelerator,
    *,
    mask: Tensor,
    responses: list[str],
    entropy: Tensor,
    values: Tensor,
    kl: Tensor,
    non_score: Tensor,
    returns: Tensor,
    reward: Tensor,
    toxicity: Tensor,
    train: MinibatchStats,
    kl_coef: float,
) -> dict[str, float]:
    """One step's stats, averaged over all processes (the scores, toxicity and KL: gathered from all)."""
    lengths = mask.sum(1).float()
    kl_per_sample = accelerator.gather(kl.sum(1))
    local = {
        KL: kl.sum(1).mean(),
        ENTROPY: torch.where(mask, entropy, 0.0).sum(1).mean(),
        NON_SCORE_REWARD: non_score.sum(1).mean(),
        RETURNS_MEAN: masked_mean(returns, mask),
        VALUE_MEAN: masked_mean(values, mask),
        RESPONSE_LENGTH: lengths.mean(),
        RETURNS_VAR: masked_var(returns, mask, unbiased=False),
    }
    stats = {key: accelerator.reduce(value.detach(), "mean").item() for key, value in local.items()}
    stats.update(
        {
            key: accelerator.reduce(torch.tensor(value, device=mask.device), "mean").item()
            for key, value in train.means().items()
        }
    )
    stats[RATIO_MAX] = accelerator.gather(torch.tensor([train.extremes[RATIO_MAX]], device=mask.device)).max().item()
    stats[RATIO_MIN] = accelerator.gather(torch.tensor([train.extremes[RATIO_MIN]], device=mask.device)).min().item()
    stats[VAR_EXPLAINED] = 1.0 - stats[VALUE_ERROR] / stats[RETURNS_VAR] if stats[RETURNS_VAR] > 0 else float("nan")
    all_scores, all_toxicity = accelerator.gather(reward), accelerator.gather(toxicity)
    stats.update(
        {
            REWARD_MEAN: all_scores.mean().item(),
            REWARD_STD: all_scores.std().item() if all_scores.numel() > 1 else 0.0,
            TOXICITY_MEAN: all_toxicity.mean().item(),
            DISTINCT_2: distinct_ngrams(responses),
            KL_COEF: kl_coef,
            KL_STDERR: (kl_per_sample.std() / kl_per_sample.numel() ** 0.5).item()
            if kl_per_sample.numel() > 1
            else 0.0,
        }
    )
    return stats
