"""The pure math of RLOO and GRPO, the critic-free estimators, for a seq2seq policy.

Like :mod:`detox.ppo.core`, nothing here touches a model: tensors in, tensors out, with the
same ``(batch, response_len)`` layout and ``mask``. A batch holds ``k`` responses per prompt,
consecutive (rows ``i * k`` to ``i * k + k - 1`` are prompt ``i``'s group), as
``torch.repeat_interleave`` lays them out.

Hand-written because no maintained library runs these estimators with an encoder-decoder
policy: TRL's ``RLOOTrainer`` and ``GRPOTrainer`` (1.16) build causal-LM inputs
(prompt + completion in one sequence) and vLLM has no encoder-decoder models. The formulas
follow those trainers (the names of the quantities are theirs); ``tests/fixtures/trl_reference.json``
holds their results on fixed tensors, computed by TRL's own code (``scripts/trl_reference.py``).

* **RLOO** (Ahmadian et al. 2024): a sequence-level reward, the reward model's score minus
  ``kl_coef`` times the KL to the reference summed over the response (the same penalty PPO
  puts into its per-token rewards); advantage = reward minus the mean reward of the other
  ``k - 1`` responses of the prompt; PPO's clipped surrogate on the *sequence* ratio
  ``exp(sum_t logp_t - sum_t old_logp_t)``, averaged over sequences.
* **GRPO** (Shao et al. 2024): advantage = (reward - group mean) / (group std + 1e-4), the std
  Bessel-corrected (TRL's ``nanstd``), or only centred (``scale_rewards: none``, Dr. GRPO);
  the clipped surrogate per *token*, plus ``beta`` times the per-token KL to the reference by
  Schulman's k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (never negative); the
  per-token loss averaged by ``loss_type``: ``dapo`` over every response token of the
  optimizer step (TRL's default), ``grpo`` per sequence then over sequences (length-biased),
  ``dr_grpo`` summed over a constant (sequences x the longest allowed response).

A group whose rewards are all equal has advantage 0 for every member (RLOO: exactly; GRPO:
0 / (0 + eps) = 0), so it adds no policy gradient; ``frac_reward_zero_std`` counts them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from detox.ppo.core import masked_mean

GRPO_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)
LossType = Literal["dapo", "grpo", "dr_grpo"]


def _groups(rewards: Tensor, k: int) -> Tensor:
    if rewards.dim() != 1 or rewards.numel() % k:
        raise ValueError(
            f"rewards must be one value per response, k={k} consecutive per prompt; got shape {tuple(rewards.shape)}"
        )
    return rewards.view(-1, k)


def group_std(rewards: Tensor, k: int) -> Tensor:
    """Each response's group std (Bessel-corrected, as TRL's ``nanstd``), ``(batch,)``."""
    return _groups(rewards, k).std(dim=1, keepdim=True).expand(-1, k).reshape(-1)


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """``A_i = r_i - mean_{j != i} r_j`` within each group of ``k`` (``k >= 2``), ``(batch,)``."""
    if k < 2:
        raise ValueError(f"RLOO's leave-one-out baseline needs k >= 2 responses per prompt, got k={k}")
    grouped = _groups(rewards, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)  # mean of the other k - 1
    return (grouped - baseline).reshape(-1)


def grpo_advantages(rewards: Tensor, k: int, scale: Literal["group", "none"] = "group") -> Tensor:
    """``A_i = (r_i - mean_g) / (std_g + 1e-4)`` within each group (``scale='none'``: ``r_i - mean_g``)."""
    if k < 2:
        raise ValueError(f"GRPO's group statistics need k >= 2 responses per prompt, got k={k}")
    grouped = _groups(rewards, k)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + GRPO_EPS)
    elif scale != "none":
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    return advantages.reshape(-1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(policy || reference) per token: ``exp(d) - d - 1``, ``d = ref - logp``."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1.0


def _clip_stats(coef: Tensor, advantages: Tensor, cliprange: float, weight: Tensor) -> dict[str, Tensor]:
    """TRL's clip ratios: ratio below 1 - eps with A < 0 (low), above 1 + eps with A > 0 (high), either (region)."""
    low = (coef < 1.0 - cliprange) & (advantages < 0)
    high = (coef > 1.0 + cliprange) & (advantages > 0)
    return {
        "clip_ratio/low_mean": masked_mean(low.float(), weight),
        "clip_ratio/high_mean": masked_mean(high.float(), weight),
        "clip_ratio/region_mean": masked_mean((low | high).float(), weight),
    }


def rloo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO's clipped surrogate on the sequence ratio, the mean over sequences (``advantages``: ``(batch,)``).

    Padding after EOS is selected away before the sums, so it never enters the ratio.
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0).sum(dim=1)  # sequence log-ratio
    coef_1 = torch.exp(log_ratio)
    coef_2 = torch.clamp(coef_1, 1.0 - cliprange, 1.0 + cliprange)
    loss = -torch.min(coef_1 * advantages, coef_2 * advantages).mean()
    with torch.no_grad():
        every = torch.ones_like(coef_1, dtype=torch.bool)
        stats = {
            **_clip_stats(coef_1, advantages, cliprange, every),
            "ratio": coef_1.mean(),
            "ratio_max": coef_1.max(),
            "ratio_min": coef_1.min(),
            "approxkl": 0.5 * log_ratio.square().mean(),
        }
    return loss, stats


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cliprange: float,
    beta: float,
    loss_type: LossType,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO's per-token clipped surrogate plus ``beta`` x k3 KL, averaged by ``loss_type``.

    ``normalizer`` divides the masked sum for ``dapo`` (the response tokens of the optimizer step
    per mini-batch, :func:`dapo_normalizers`; default: this mini-batch's) and for ``dr_grpo`` (the
    mini-batch's rows x the longest allowed response; required).
    """
    mask = mask.bool()
    adv = advantages.unsqueeze(1)  # one advantage per sequence, on each of its tokens
    coef_1 = torch.exp(logprobs - old_logprobs)
    coef_2 = torch.clamp(coef_1, 1.0 - cliprange, 1.0 + cliprange)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    kl = k3_kl(logprobs, ref_logprobs)
    if beta:
        per_token = per_token + beta * kl
    masked = torch.where(mask, per_token, 0.0)
    if loss_type == "grpo":
        loss = (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif loss_type == "dapo":
        loss = masked.sum() / (mask.sum().clamp(min=1) if normalizer is None else normalizer)
    elif loss_type == "dr_grpo":
        if normalizer is None:
            raise ValueError("dr_grpo divides by a constant: pass normalizer = rows x max response length")
        loss = masked.sum() / normalizer
    else:
        raise ValueError(f"loss_type must be one of 'dapo', 'grpo', 'dr_grpo', got {loss_type!r}")
    with torch.no_grad():
        stats = {
            **_clip_stats(coef_1, adv.expand_as(coef_1), cliprange, mask),
            "kl": masked_mean(kl, mask),
            "ratio": masked_mean(coef_1, mask),
            "ratio_max": torch.where(mask, coef_1, -torch.inf).amax(),
            "ratio_min": torch.where(mask, coef_1, torch.inf).amin(),
            "approxkl": 0.5 * masked_mean((logprobs - old_logprobs).square(), mask),
        }
    return loss, stats


def dapo_normalizers(window_tokens: Tensor, processes: int, accumulation: int) -> Tensor:
    """Per-mini-batch divisors that make DAPO's loss the token mean over the whole optimizer step.

    ``window_tokens`` are the response tokens of each accumulation window summed over all
    processes. accelerate divides each mini-batch's loss by ``accumulation`` and DDP averages
    the gradients of ``processes``: dividing the masked sum by ``tokens / (processes x
    accumulation)`` leaves the step's gradient that of ``sum(loss) / tokens``, whatever the split,
    so two processes compute what one would with twice the batch.
    """
    return window_tokens.clamp(min=1).to(torch.float32) / (processes * accumulation)
