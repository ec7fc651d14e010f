"""The statistics of a PPO step: every name in one place, and the step's summary of its batch.

Where TRL 0.11's ``PPOTrainer`` logs the quantity (``record_step_stats``, ``train_minibatch``'s
stats, ``log_stats`` and the step's timers), the name is TRL's, so dashboards built for TRL read
them. RLOO and GRPO steps log the same names (less the value head's) and, in addition, those of
TRL 1.16's ``RLOOTrainer`` / ``GRPOTrainer`` (``reward``, ``frac_reward_zero_std``, ``kl``,
``clip_ratio/*``, ``completions/*``). TRL logs the ratio as a histogram (``ppo/policy/ratio``); here
it is three scalars. The project's own stats keep the ``env/`` prefix (and ``time/`` for the phases TRL does not time).
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
NOVEL_WORDS = "env/novel_words_mean"  # words of a response its dialogue lacks (project's; ppo.novel_word_penalty)
REPEATED_WORDS = "env/repeated_words_mean"  # words of a response that loop (project's; ppo.repeat_penalty)
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

# TRL 1.16's RLOOTrainer / GRPOTrainer names (rloo and grpo only).
TRL_REWARD = "reward"  # mean raw reward-model score
TRL_REWARD_STD = "reward_std"  # its std over all responses
FRAC_REWARD_ZERO_STD = "frac_reward_zero_std"  # share of groups whose rewards are all equal (no gradient)
REWARD_GROUP_STD = "env/reward_group_std"  # mean std of the rewards within a group (project's)
TRL_KL = "kl"  # per-token mean KL: rloo's k1 of the old policy (in the reward), grpo's k3 (in the loss)
TRL_ENTROPY = "entropy"  # per-token mean entropy
CLIP_RATIOS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
MEAN_LENGTH = "completions/mean_length"
CLIPPED_RATIO = "completions/clipped_ratio"  # share of responses cut at max_new_tokens (no EOS)

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

VALUE_STATS = (  # of the value head, or PPO's per-token clip fraction: ppo only
    LOSS_VALUE, VALUE_CLIPFRAC, VALUE_ERROR, RETURNS_MEAN, RETURNS_VAR, VALUE_MEAN, VAR_EXPLAINED, POLICY_CLIPFRAC,
)  # fmt: skip
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
    NOVEL_WORDS,
    REPEATED_WORDS,
    RESPONSE_LENGTH,
    RETURNS_MEAN,
    RETURNS_VAR,
    VALUE_MEAN,
    VAR_EXPLAINED,
    *TRAIN_MEANS,
    RATIO_MAX,
    RATIO_MIN,
)
# What an rloo or grpo step reports: the value head's stats left out, TRL 1.16's RLOO/GRPO names added.
CRITIC_FREE_STEP_STATS = (
    *(name for name in STEP_STATS if name not in VALUE_STATS),
    TRL_REWARD,
    TRL_REWARD_STD,
    FRAC_REWARD_ZERO_STD,
    REWARD_GROUP_STD,
    TRL_KL,
    TRL_ENTROPY,
    *CLIP_RATIOS,
    MEAN_LENGTH,
    CLIPPED_RATIO,
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

    def add(self, stats: Mapping[str, Tensor]) -> None:
        """One mini-batch's stats by name: :data:`RATIO_MAX` and :data:`RATIO_MIN` kept as extremes, the rest summed."""
        for key, value in stats.items():
            if key == RATIO_MAX:
                self.extremes[key] = max(self.extremes[key], value.item())
            elif key == RATIO_MIN:
                self.extremes[key] = min(self.extremes[key], value.item())
            else:
                self.sums[key] = self.sums.get(key, 0.0) + value.item()
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / self.count for key, value in self.sums.items()}


def step_stats(
    accelerator: Accelerator,
    *,
    mask: Tensor,
    responses: list[str],
    entropy: Tensor,
    values: Tensor | None,
    kl: Tensor,
    non_score: Tensor,
    returns: Tensor | None,
    reward: Tensor,
    toxicity: Tensor,
    novel: Tensor,
    repeated: Tensor,
    train: MinibatchStats,
    kl_coef: float,
    group_stats: Mapping[str, Tensor] | None = None,
    eos_token_id: int | None = None,
    response_ids: Tensor | None = None,
) -> dict[str, float]:
    """One step's stats, averaged over all processes (the scores, toxicity and KL: gathered from all).

    Without a value head (``values`` and ``returns`` None: rloo, grpo) the value stats are left out
    and TRL 1.16's RLOO/GRPO names are added, from ``group_stats`` and the responses.
    """
    lengths = mask.sum(1).float()
    kl_per_sample = accelerator.gather(kl.sum(1))
    local = {
        KL: kl.sum(1).mean(),
        ENTROPY: torch.where(mask, entropy, 0.0).sum(1).mean(),
        NON_SCORE_REWARD: non_score.sum(1).mean(),
        RESPONSE_LENGTH: lengths.mean(),
    }
    if values is not None and returns is not None:
        local.update(
            {
                RETURNS_MEAN: masked_mean(returns, mask),
                VALUE_MEAN: masked_mean(values, mask),
                RETURNS_VAR: masked_var(returns, mask, unbiased=False),
            }
        )
    else:
        ended = (response_ids == eos_token_id).any(dim=1) if response_ids is not None else torch.ones_like(lengths)
        local.update(
            {
                TRL_ENTROPY: masked_mean(entropy, mask),
                MEAN_LENGTH: lengths.mean(),
                CLIPPED_RATIO: 1.0 - ended.float().mean(),
                **(group_stats or {}),
            }
        )
    stats = {key: accelerator.reduce(value.detach(), "mean").item() for key, value in local.items()}
    stats.update(
        {
            key: accelerator.reduce(torch.tensor(value, device=mask.device), "mean").item()
            for key, value in train.means().items()
        }
    )
    stats[RATIO_MAX] = accelerator.gather(torch.tensor([train.extremes[RATIO_MAX]], device=mask.device)).max().item()
    stats[RATIO_MIN] = accelerator.gather(torch.tensor([train.extremes[RATIO_MIN]], device=mask.device)).min().item()
    all_scores, all_toxicity = accelerator.gather(reward), accelerator.gather(toxicity)
    if RETURNS_VAR in stats:
        stats[VAR_EXPLAINED] = 1.0 - stats[VALUE_ERROR] / stats[RETURNS_VAR] if stats[RETURNS_VAR] > 0 else float("nan")
    else:
        stats[TRL_REWARD] = all_scores.mean().item()
        stats[TRL_REWARD_STD] = all_scores.std().item() if all_scores.numel() > 1 else 0.0
    stats.update(
        {
            REWARD_MEAN: all_scores.mean().item(),
            REWARD_STD: all_scores.std().item() if all_scores.numel() > 1 else 0.0,
            TOXICITY_MEAN: all_toxicity.mean().item(),
            DISTINCT_2: distinct_ngrams(responses),
            NOVEL_WORDS: accelerator.gather(novel).mean().item(),
            REPEATED_WORDS: accelerator.gather(repeated).mean().item(),
            KL_COEF: kl_coef,
            KL_STDERR: (kl_per_sample.std() / kl_per_sample.numel() ** 0.5).item()
            if kl_per_sample.numel() > 1
            else 0.0,
        }
    )
    return stats
