"""The rollout phase of a PPO step: pure sampling from the policy, and what it hands on."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from detox.common.params import PPOParams
from detox.models.sampling import sampler
from detox.models.skinny import skinny_matmuls
from detox.ppo.core import entropy_from_logits, logprobs_from_logits, response_mask
from detox.ppo.policy import Seq2SeqPolicy


@dataclass(frozen=True)
class PolicyPass:
    """The policy's numbers at each response position, ``(B, T)``."""

    logprobs: torch.Tensor
    values: torch.Tensor | None  # None without a value head (rloo, grpo)
    entropy: torch.Tensor


@dataclass(frozen=True)
class Rollout:
    """``k`` responses sampled per prompt (consecutive rows), and the policy's numbers ``generate`` captured."""

    input_ids: torch.Tensor  # (B, S) prompts, right-padded, each repeated k times
    attention_mask: torch.Tensor  # (B, S)
    response_ids: torch.Tensor  # (B, T) without the decoder start token
    mask: torch.Tensor  # (B, T) bool, True up to and including the first EOS
    responses: list[str]
    encoder_hidden: torch.Tensor | None  # (B, S, d) when the encoder is frozen, else None
    captured: PolicyPass  # from generate's raw logits and last decoder hidden states


@contextmanager
def only_this_generation_config(model: PreTrainedModel, config: GenerationConfig) -> Iterator[None]:
    """Make ``config`` the model's whole generation config for the duration.

    ``generate`` fills every setting a passed config leaves unset from ``model.generation_config``,
    the model folder's ``generation_config.json``: a repetition penalty, suppressed tokens or a
    ``no_repeat_ngram_size`` there would warp the rollout. Swapped in, nothing else can reach it.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = config
    try:
        yield
    finally:
        base.generation_config = saved


def rollout_config(
    tokenizer: PreTrainedTokenizerBase,
    start_token: int,
    max_new_tokens: int,
    capture: bool = True,
    hidden_states: bool = True,
) -> GenerationConfig:
    """Pure sampling from the policy's own distribution, built from params alone.

    The old log-probs and the KL assume the responses were sampled from the policy itself:
    temperature 1, no top-k or top-p, no forced minimum length (the negative-KL pitfall in :mod:`detox.ppo.core`).
    So PPO never samples with ``generation.*`` (the settings of baseline, evaluate and
    serving) nor with the model folder's generation config; only the length is a knob
    (``ppo.response_length``). ``capture`` keeps the raw logits and hidden states (the rollout
    needs them, an evaluation does not); the hidden states only feed the value head, so without one
    (``hidden_states=False``) they are not kept.
    """
    return GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=start_token,
        output_logits=capture,
        output_hidden_states=capture and hidden_states,
        return_dict_in_generate=capture,
    )


def sample(
    policy: Seq2SeqPolicy,
    tokenizer: PreTrainedTokenizerBase,
    cfg: PPOParams,
    prompts: list[str],
    seed: int,
    device: torch.device,
) -> Rollout:
    """Sample ``ppo.samples_per_prompt`` responses per prompt; ``max_new_tokens`` and sampling seeded by ``seed``."""
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=cfg.max_source_tokens, return_tensors="pt").to(
        device
    )
    # Encoded here rather than inside generate(), which with output_hidden_states=True would also
    # keep every encoder layer's output. Kept for the rest of the step when the encoder is frozen.
    # Each prompt is encoded once, then repeated for its k samples.
    encoder_hidden = policy.encode(enc["input_ids"], enc["attention_mask"])
    k = cfg.group_size
    if k > 1:
        enc = {key: value.repeat_interleave(k, dim=0) for key, value in enc.items()}
        encoder_hidden = encoder_hidden.repeat_interleave(k, dim=0)
    max_new = random.Random(seed).randint(cfg.response_length.min, cfg.response_length.max)
    torch.manual_seed(seed)
    with_values = policy.value_head is not None
    config = rollout_config(tokenizer, policy.config.decoder_start_token_id, max_new, hidden_states=with_values)
    with (
        only_this_generation_config(policy.generator(), config),
        skinny_matmuls(policy.model, cfg.skinny_matmul),
        sampler(cfg.sampler),
    ):
        out = policy.generator().generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            generation_config=config,
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
        )
    response_ids = out.sequences[:, 1:]
    mask = response_mask(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    # The raw (unwarped) logits of each sampled position, and the last decoder layer's hidden
    # state there: the same numbers a teacher-forced forward pass of the policy would give.
    logits = torch.stack(out.logits, dim=1)
    values = None
    if with_values:
        hidden = torch.cat([layers[-1] for layers in out.decoder_hidden_states], dim=1)
        values = policy.value_head(hidden)
    captured = PolicyPass(logprobs_from_logits(logits, response_ids), values, entropy_from_logits(logits))
    responses = [s.strip() for s in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
    return Rollout(
        enc["input_ids"],
        enc["attention_mask"],
        response_ids,
        mask,
        responses,
        encoder_hidden if policy.encoder_frozen else None,
        captured,
    )
