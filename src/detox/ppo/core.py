"""The pure math of one PPO step for a seq2seq (encoder-decoder) policy.

Nothing here touches a model, a tokenizer or an optimizer: every function takes and
returns tensors, batched over ``(batch, response_len)`` with a ``mask`` that is 1 on
real response tokens (up to and including the first EOS) and 0 on the padding after
it. Names follow the old TRL ``PPOTrainer`` (<= 0.11); each implementation detail is
one visible line with a comment naming it, as in CleanRL's ``ppo.py``.

The step these functions make up (rollout, score, forward pass, rewards, advantages,
optimise) is listed once, in :mod:`detox.ppo.engine`. The KL controllers and the running
score moments, the state carried from step to step, are in :mod:`detox.ppo.controllers`.

Pitfalls
--------
* **Negative KL when sampling is warped.** ``logprobs - ref_logprobs`` is an unbiased
  estimate of KL(policy || reference) only when the tokens are sampled from the
  policy itself. ``top_k``, ``top_p``, ``temperature != 1``, ``min_new_tokens`` (which
  forbids EOS early), repetition penalties and bad-word lists all sample from a
  different distribution, and the estimate can then go negative. The policy learns
  to exploit that: a negative "KL" is a *bonus*, so the penalty stops restraining it
  and the reward is hacked. Sample purely for PPO; use warped decoding only to
  evaluate.
* **Masking after EOS.** ``generate`` pads every finished response to the longest
  one. Those pad tokens are not actions: they must get no KL penalty, no advantage,
  no loss, and must not enter the whitening statistics. With T5, pad, decoder start
  and (sampled) pad all share id 0, so the mask comes from the first EOS, not from
  ``response_ids != pad_token_id`` alone.
* **Score on the EOS token.** The reward model judges the complete response, so its
  score belongs to the last real token (the EOS, or the last token of a response cut
  at ``max_new_tokens``), found by :func:`last_token_index`. Adding it at position
  ``-1`` puts it on padding, where the mask throws it away.
* **Dropout disabled.** Rollout, reference and training forward passes must compute
  the same function. T5's ``dropout_rate`` and peft's ``lora_dropout`` are active in
  train mode and make the first ratio differ from 1, add noise to the KL, and (since
  ``disable_adapter`` also drops the LoRA dropout) bias the reference comparison. Run
  every PPO forward pass in eval mode (or set the dropout rates to 0); gradients
  flow in eval mode all the same.
* **Raw logits, not ``scores``.** ``generate(output_logits=True)`` returns the policy's raw
  logits at every sampled position; its ``scores`` are the processed (warped) logits, not
  the policy's.
* **Shift right.** A teacher-forced pass feeds ``decoder_input_ids = [start] +
  response_ids[:, :-1]`` (T5's shift-right), so ``logits[:, t]`` predicts ``response_ids[:, t]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

KLEstimator = Literal["k1", "abs", "mse"]


def response_mask(response_ids: Tensor, eos_token_id: int, pad_token_id: int) -> Tensor:
    """Bool mask ``(batch, response_len)``: True up to and including the first EOS.

    ``response_ids`` are the decoder outputs *without* the decoder start token,
    right-padded. A response with no EOS (cut at ``max_new_tokens``) is True up to its
    last non-pad token, so rows stacked from generations of different lengths work
    too; a pad token *before* an EOS, or followed by real tokens, counts as real.

    Raises ``ValueError`` when every row starts with ``pad_token_id`` (and pad is not
    EOS): for T5 that means the decoder start token (also id 0) was not stripped.
    """
    if pad_token_id != eos_token_id and bool((response_ids[:, 0] == pad_token_id).all()):
        raise ValueError(
            f"every response starts with pad_token_id={pad_token_id}: strip the decoder start "
            "token first (response_ids = generate(...)[:, 1:])"
        )
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before each position
    up_to_first_eos = eos_before == 0  # positions up to and including the first EOS
    is_real = response_ids != pad_token_id
    real_at_or_after = is_real.flip(1).long().cumsum(dim=1).flip(1) > 0  # not in the trailing pad run
    return up_to_first_eos & real_at_or_after


def last_token_index(mask: Tensor) -> Tensor:
    """Index ``(batch,)`` of the last unmasked position per row: the EOS, or the last token if cut.

    Raises ``ValueError`` if a row has no unmasked position (an empty response).
    """
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a response has no unmasked token; every response needs at least one")
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    return torch.where(mask, positions, 0).amax(dim=1)  # largest unmasked position


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability ``(batch, len)`` of each label under ``logits`` ``(batch, len, vocab)``.

    Computed in float32 at least, so half-precision logits do not lose the small
    differences PPO's ratio and KL are made of.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least
    logp = F.log_softmax(logits, dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # pick the sampled token


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``(batch, len)`` of the categorical distribution given by ``logits``.

    ``torch.special.entr`` (``-p log p`` with ``0 log 0 = 0``) keeps ``-inf`` logits
    (tokens banned by a logits processor) from turning the sum into NaN.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least
    probs = F.softmax(logits, dim=-1)
    return torch.special.entr(probs).sum(dim=-1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the unmasked entries (over all of them, or along ``dim``).

    Masked-out entries are *selected away*, not multiplied by 0, so a NaN or inf
    there does not leak into the result. An all-masked slice gives NaN.
    """
    mask = mask.bool()
    total = torch.where(mask, x, 0.0)  # drop masked entries
    if dim is None:
        return total.sum() / mask.sum()
    return total.sum(dim=dim) / mask.sum(dim=dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all unmasked entries (Bessel-corrected if ``unbiased``)."""
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.bool().sum()
        if count < 2:
            raise ValueError(
                f"the unbiased variance needs at least 2 unmasked entries, got {int(count)}; "
                "use a larger batch or unbiased=False"
            )
        variance = variance * count / (count - 1)  # Bessel's correction
    return variance


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``x`` to mean 0 and (unbiased) variance 1 over the unmasked entries.

    With ``shift_mean=False`` only the scale changes and the mean is kept (TRL's
    option, used for rewards). Masked-out positions are 0 in the result.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)  # eps keeps a constant batch finite
    if not shift_mean:
        whitened = whitened + mean  # keep the original mean
    return torch.where(mask.bool(), whitened, 0.0)


def compute_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator = "k1",
    sharpen_coef: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token rewards: a KL penalty on every real token plus the score on the last one.

    ``kl_estimator`` turns ``d = logprobs - ref_logprobs`` into a per-token KL:
    ``"k1"`` is ``d`` (unbiased, can be negative per token), ``"abs"`` is ``|d|`` and
    ``"mse"`` is ``d**2 / 2`` (both never negative, both biased).

    ``sharpen_coef`` adds ``sharpen_coef * ref_logprobs`` on every real token: the reference's
    log-probability of the response. With the k1 KL the optimum of the KL-regularised reward,
    ``reference * exp(score / kl_coef)``, becomes ``reference ** (1 + sharpen_coef / kl_coef) *
    exp(score / kl_coef)``: the reference sharpened, as by a lower sampling temperature over
    whole responses, so the continuations it rarely takes lose their mass.

    Returns ``(rewards, kl, non_score_reward)``, all ``(batch, len)`` and 0 where masked:
    ``non_score_reward = -kl_coef * kl + sharpen_coef * ref_logprobs`` and ``rewards =
    non_score_reward`` with ``scores`` added at :func:`last_token_index`.
    """
    mask = mask.bool()
    diff = logprobs - ref_logprobs
    if kl_estimator == "k1":
        kl = diff  # log-ratio, unbiased under pure sampling
    elif kl_estimator == "abs":
        kl = diff.abs()
    elif kl_estimator == "mse":
        kl = 0.5 * diff.square()
    else:
        raise ValueError(f"kl_estimator must be one of 'k1', 'abs', 'mse', got {kl_estimator!r}")
    kl = torch.where(mask, kl, 0.0)  # no penalty after EOS
    non_score_reward = -kl_coef * kl  # KL penalty
    if sharpen_coef:
        non_score_reward = non_score_reward + sharpen_coef * torch.where(mask, ref_logprobs, 0.0)  # sharpening
    last = last_token_index(mask).unsqueeze(1)
    rewards = non_score_reward.scatter_add(1, last, scores.to(non_score_reward.dtype).unsqueeze(1))  # score on EOS
    return rewards, kl, non_score_reward


def compute_gae(values: Tensor, rewards: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, backwards over the response.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    with ``V`` and ``r`` zeroed on masked positions, so the value after the last real
    token is 0 and padding contributes nothing (its advantage comes out 0, since the
    mask is a prefix: real tokens first, then padding). ``returns = advantages + values``
    (the value targets). Both are detached and 0 where masked; the advantages are
    *not* whitened here.
    """
    mask = mask.bool()
    values = torch.where(mask, values, 0.0).detach()  # padding has no value
    rewards = torch.where(mask, rewards, 0.0).detach()  # ... and no reward
    length = rewards.size(1)
    lastgaelam = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])  # V after the end is 0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]  # TD error
        lastgaelam = delta + gamma * lam * lastgaelam  # GAE recursion
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values  # value targets
    return advantages, returns


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate objective, as a loss to minimise.

    ``loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``.
    Stats (detached scalars): ``clipfrac`` (share of tokens where the clipped term is
    the larger), ``approxkl`` (``0.5 * masked_mean((logprobs - old_logprobs)**2)``),
    ``ratio`` (masked mean of the ratio) and ``ratio_max``/``ratio_min`` (over the unmasked tokens).
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)  # pi_new / pi_old per token
    pg_losses = -advantages * ratio  # unclipped surrogate
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # clipped surrogate
    loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)  # pessimistic bound
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses2 > pg_losses).to(logprobs.dtype), mask),
            "approxkl": 0.5 * masked_mean(logratio.square(), mask),
            "ratio": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask.bool(), ratio, -torch.inf).amax(),
            "ratio_min": torch.where(mask.bool(), ratio, torch.inf).amin(),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: ``0.5 * masked_mean(max((v - R)**2, (clip(v, old - eps, old + eps) - R)**2))``.

    Stats (detached scalars): ``clipfrac``, the share of tokens where the clipped
    error is the larger, and ``error``, the unclipped ``masked_mean((v - R)**2)``.
    """
    vpredclipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)  # value clipping
    vf_losses1 = (values - returns).square()
    vf_losses2 = (vpredclipped - returns).square()
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((vf_losses2 > vf_losses1).to(values.dtype), mask),
            "error": masked_mean(vf_losses1, mask),
        }
    return loss, stats
