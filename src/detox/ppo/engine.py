"""One PPO step for a seq2seq policy, batched end to end.

TRL dropped PPO and never supported encoder-decoder policies in its current
trainers, so this project owns a compact engine (the math is in
:mod:`detox.ppo.core`). A step, in the order the code runs it:

1. **rollout**   sample a response per prompt (pure sampling from a generation config
                 built from params alone, never ``generation.*`` nor the model folder's;
                 ``max_new_tokens`` drawn per batch from ``ppo.response_length`` like the
                 original's LengthSampler) and mask everything after each response's first EOS.
                 ``generate`` also returns the raw logits and the last decoder hidden
                 state of every sampled position: the old log-probs, entropy and values
                 come from them, with no second forward pass of the policy;
2. **scoring**   reward model scores of the decoded responses (optionally normalised
                 by running moments and clipped);
3. **forward**   reference log-probs (the same model with its LoRA adapters
                 disabled) in batched forward passes;
4. **advantage** per-token reward = -kl_coef * KL, plus the score on the last
                 response token; GAE; advantages whitened over response tokens;
5. **optimise**  ``ppo_epochs`` x shuffled mini-batches of clipped policy loss +
                 ``vf_coef`` x clipped value loss, gradient clipping, AdamW, gradient
                 accumulation (through accelerate, so it works under DDP);
6. **controller** adaptive (or fixed) KL coefficient update, from the KL averaged
                 over all processes.

With ``ppo.lora.scope: decoder`` (the default) the encoder has no adapters, so it
runs once per step, before generation; its output feeds the rollout, the reference
pass and every PPO epoch. Otherwise each of those runs the encoder again.

Every random draw of a step is seeded from ``(seed, step, process)``, so a run
resumed from a checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from detox.common.errors import DetoxError
from detox.common.params import PPOParams
from detox.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    compute_gae,
    compute_rewards,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    response_mask,
    value_loss,
)
from detox.ppo.policy import Seq2SeqPolicy
from detox.evaluate.quality import distinct_ngrams
from detox.models.reward import RewardScorer


class TrainingDivergedError(DetoxError):
    """A loss became NaN or infinite."""


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, S) prompts, right-padded
    attention_mask: torch.Tensor  # (B, S)
    response_ids: torch.Tensor  # (B, T) without the decoder start token
    mask: torch.Tensor  # (B, T) bool, True up to and including the first EOS
    responses: list[str]
    scores: torch.Tensor  # (B,) raw reward-model scores
    toxicity: torch.Tensor  # (B,)
    encoder_hidden: torch.Tensor | None = None  # (B, S, d) when the encoder is frozen, else None
    old: dict[str, torch.Tensor] | None = None  # logprobs, values, entropy (B, T) captured by generate


class RunningMoments:
    """Running mean and std of scores across steps (Chan et al. parallel update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        delta, total = batch_mean - self.mean, self.count + n
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.var > 0 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


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


class PPOTrainer:
    def __init__(
        self,
        policy: Seq2SeqPolicy,
        tokenizer: PreTrainedTokenizerBase,
        scorer: RewardScorer,
        cfg: PPOParams,
        accelerator: Accelerator,
        seed: int,
    ) -> None:
        self.cfg, self.seed = cfg, seed
        self.tokenizer, self.scorer, self.accelerator = tokenizer, scorer, accelerator
        optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.learning_rate)
        self.policy, self.optimizer = accelerator.prepare(policy, optimizer)
        # peft creates LoRA dropout layers in train mode: rollouts and old/reference forwards run in eval.
        self.policy.eval()
        self.kl_ctl: KLController = (
            AdaptiveKLController(cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon)
            if cfg.kl.adaptive else FixedKLController(cfg.kl.init_coef)
        )
        self.score_moments = RunningMoments()
        self.start_token = policy.config.decoder_start_token_id

    @property
    def unwrapped(self) -> Seq2SeqPolicy:
        return self.accelerator.unwrap_model(self.policy)

    # -- state for checkpoints -------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of what training changes (adapters or the whole model, and the value head)."""
        trainable = {n for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().clone() for k, v in self.unwrapped.state_dict().items() if k in trainable}

    def state_dict(self) -> dict[str, object]:
        return {
            "policy": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "score_moments": self.score_moments.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        missing = self.unwrapped.load_state_dict(state["policy"], strict=False)
        if missing.unexpected_keys:
            raise DetoxError(f"checkpoint does not fit this policy: unexpected keys {missing.unexpected_keys[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.score_moments.load_state_dict(state["score_moments"])

    # -- the phases --------------------------------------------------------------------
    def _step_seed(self, step: int) -> int:
        return self.seed * 1_000_003 + step * 1009 + self.accelerator.process_index

    def rollout_config(self, max_new_tokens: int, capture: bool = True) -> GenerationConfig:
        """Pure sampling from the policy's own distribution, built from params alone.

        The old log-probs and the KL assume the responses were sampled from the policy itself:
        temperature 1, no top-k or top-p, no forced minimum length (DESIGN's negative-KL pitfall).
        So PPO never samples with ``generation.*`` (the settings of baseline, evaluate and
        serving) nor with the model folder's generation config; only the length is a knob
        (``ppo.response_length``). ``capture`` keeps the raw logits and hidden states (the rollout
        needs them, an evaluation does not).
        """
        return GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=0, max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            decoder_start_token_id=self.start_token,
            output_logits=capture, output_hidden_states=capture, return_dict_in_generate=capture,
        )

    @torch.no_grad()
    def rollout(self, prompts: list[str], dialogues: list[str], step: int) -> Rollout:
        with self.accelerator.autocast():
            return self._rollout(prompts, dialogues, step)

    def _rollout(self, prompts: list[str], dialogues: list[str], step: int) -> Rollout:
        device = self.accelerator.device
        policy = self.unwrapped
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.cfg.max_source_tokens,
                             return_tensors="pt").to(device)
        # Encoded here rather than inside generate(), which with output_hidden_states=True would also
        # keep every encoder layer's output. Kept for the rest of the step when the encoder is frozen.
        encoder_hidden = policy.encode(enc["input_ids"], enc["attention_mask"])
        max_new = random.Random(self._step_seed(step)).randint(self.cfg.response_length.min,
                                                                self.cfg.response_length.max)
        torch.manual_seed(self._step_seed(step))
        config = self.rollout_config(max_new)
        with only_this_generation_config(policy.generator(), config):
            out = policy.generator().generate(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config,
                encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden))
        response_ids = out.sequences[:, 1:]
        mask = response_mask(response_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        # The raw (unwarped) logits of each sampled position, and the last decoder layer's hidden
        # state there: the same numbers a teacher-forced forward pass of the policy would give.
        logits = torch.stack(out.logits, dim=1)
        hidden = torch.cat([layers[-1] for layers in out.decoder_hidden_states], dim=1)
        old = {"logprobs": logprobs_from_logits(logits, response_ids), "values": policy.value_head(hidden),
               "entropy": entropy_from_logits(logits)}
        responses = [s.strip() for s in self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
        return Rollout(enc["input_ids"], enc["attention_mask"], response_ids, mask, responses,
                       torch.empty(0), torch.empty(0), encoder_hidden if policy.encoder_frozen else None, old)

    def _decoder_inputs(self, response_ids: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(response_ids[:, :1], self.start_token)
        return torch.cat([start, response_ids[:, :-1]], dim=1)

    def _forward(self, model: torch.nn.Module, batch: Rollout, index: torch.Tensor | slice, reference: bool = False,
                 with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        responses = batch.response_ids[index]
        encoder_hidden = None if batch.encoder_hidden is None else batch.encoder_hidden[index]
        logits, values = model(input_ids=batch.input_ids[index], attention_mask=batch.attention_mask[index],
                               decoder_input_ids=self._decoder_inputs(responses), with_values=with_values,
                               reference=reference, encoder_hidden=encoder_hidden)
        return logits, logprobs_from_logits(logits, responses), values

    @torch.no_grad()
    def reference_logprobs(self, batch: Rollout) -> torch.Tensor:
        """Reference log-probs (B, T), in mini-batch-sized forwards."""
        model = self.unwrapped
        with self.accelerator.autocast():
            return torch.cat([self._forward(model, batch, slice(start, start + self.cfg.mini_batch_size),
                                            reference=True, with_values=False)[1]
                              for start in range(0, len(batch.responses), self.cfg.mini_batch_size)])

    @torch.no_grad()
    def old_and_reference(self, batch: Rollout) -> dict[str, torch.Tensor]:
        """Old log-probs, values, entropy (teacher-forced forwards) and reference log-probs.

        In fp32 ``step`` takes the old values from the rollout, which equal these; under mixed
        precision (``ppo.precision`` bf16 or fp16) it calls this, because autocast rounds the
        rollout's cached decoding and a teacher-forced forward differently. The tests also check
        the rollout's values against it.
        """
        parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "values": [], "entropy": []}
        model = self.unwrapped
        for start in range(0, len(batch.responses), self.cfg.mini_batch_size):
            index = slice(start, start + self.cfg.mini_batch_size)
            with self.accelerator.autocast():
                logits, logprobs, values = self._forward(model, batch, index)
            parts["logprobs"].append(logprobs)
            parts["values"].append(values)
            parts["entropy"].append(entropy_from_logits(logits))
        old = {k: torch.cat(v) for k, v in parts.items()}
        old["ref_logprobs"] = self.reference_logprobs(batch)
        return old

    def _prepare_scores(self, scores: torch.Tensor) -> torch.Tensor:
        if self.cfg.score.normalize:
            self.score_moments.update(self.accelerator.gather(scores))
            scores = (scores - self.score_moments.mean) / self.score_moments.std
        if self.cfg.score.clip is not None:
            scores = scores.clamp(-self.cfg.score.clip, self.cfg.score.clip)
        return scores

    def optimise(self, batch: Rollout, old: dict[str, torch.Tensor], advantages: torch.Tensor,
                 returns: torch.Tensor, step: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        generator = torch.Generator().manual_seed(self._step_seed(step))
        mask = batch.mask
        for _ in range(self.cfg.ppo_epochs):
            order = torch.randperm(len(batch.responses), generator=generator).to(mask.device)
            for start in range(0, len(order), self.cfg.mini_batch_size):
                index = order[start : start + self.cfg.mini_batch_size]
                with self.accelerator.accumulate(self.policy), self.accelerator.autocast():
                    _, logprobs, values = self._forward(self.policy, batch, index)
                    pg_loss, pg_stats = policy_loss(logprobs, old["logprobs"][index], advantages[index], mask[index],
                                                    self.cfg.cliprange)
                    vf_loss, vf_stats = value_loss(values, old["values"][index], returns[index], mask[index],
                                                   self.cfg.cliprange_value)
                    loss = pg_loss + self.cfg.vf_coef * vf_loss
                    if not torch.isfinite(loss):
                        raise TrainingDivergedError(
                            f"non-finite loss at PPO step {step} (policy loss {pg_loss.item()}, value loss "
                            f"{vf_loss.item()}); lower ppo.learning_rate, enable ppo.score.normalize or "
                            "ppo.score.clip, or raise ppo.kl.init_coef"
                        )
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                for key, value in (("ppo/loss/policy", pg_loss), ("ppo/loss/value", vf_loss), ("ppo/loss/total", loss),
                                   ("ppo/policy/clipfrac", pg_stats["clipfrac"]),
                                   ("ppo/policy/approxkl", pg_stats["approxkl"]),
                                   ("ppo/val/clipfrac", vf_stats["clipfrac"])):
                    sums[key] = sums.get(key, 0.0) + value.item()
                n += 1
        return {key: value / n for key, value in sums.items()}

    def _clock(self) -> float:
        """perf_counter after the device's queued work is done, so each phase's time is its own (GPU)."""
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()

    def step(self, prompts: list[str], dialogues: list[str], step: int) -> tuple[dict[str, float], Rollout]:
        """Run one PPO step on this process's prompts; return stats averaged over all processes."""
        timings: dict[str, float] = {}
        started = self._clock()
        batch = self.rollout(prompts, dialogues, step)
        timings["time/generation"] = self._clock() - started

        tick = self._clock()
        scored = self.scorer.score(batch.responses, dialogues)
        batch.scores = scored.reward.to(self.accelerator.device)
        batch.toxicity = scored.toxicity.to(self.accelerator.device)
        scores = self._prepare_scores(batch.scores)
        timings["time/scoring"] = self._clock() - tick

        tick = self._clock()
        if self.accelerator.mixed_precision == "no":
            old = {**batch.old, "ref_logprobs": self.reference_logprobs(batch)}
        else:
            # Under autocast, generate's cached, token-by-token decoding and a teacher-forced forward
            # round differently; the old log-probs then come from the same forward as the training
            # passes, so the first ratio is 1 and the first KL 0 (one forward pass more).
            old = self.old_and_reference(batch)
        mask = batch.mask
        rewards, kl, non_score = compute_rewards(scores, old["logprobs"], old["ref_logprobs"], mask,
                                                 self.kl_ctl.value, self.cfg.kl.estimator)
        advantages, returns = compute_gae(old["values"], rewards, mask, self.cfg.gamma, self.cfg.lam)
        advantages = masked_whiten(advantages, mask)
        timings["time/forward"] = self._clock() - tick

        tick = self._clock()
        if not self.cfg.disable_dropout:
            self.policy.train()  # the user chose dropout during optimisation (not recommended for PPO)
        train_stats = self.optimise(batch, old, advantages, returns, step)
        self.policy.eval()
        timings["time/optimization"] = self._clock() - tick

        lengths = mask.sum(1).float()
        kl_per_sample = self.accelerator.gather(kl.sum(1))
        local = {
            "objective/kl": kl.sum(1).mean(),
            "objective/entropy": torch.where(mask, old["entropy"], 0.0).sum(1).mean(),
            "objective/non_score_reward": non_score.sum(1).mean(),
            "ppo/returns/mean": masked_mean(returns, mask),
            "ppo/val/mean": masked_mean(old["values"], mask),
            "ppo/mean_response_length": lengths.mean(),
        }
        stats = {key: self.accelerator.reduce(value.detach(), "mean").item() for key, value in local.items()}
        stats.update({key: self.accelerator.reduce(torch.tensor(value, device=mask.device), "mean").item()
                      for key, value in train_stats.items()})
        all_scores = self.accelerator.gather(batch.scores)
        all_toxicity = self.accelerator.gather(batch.toxicity)
        stats.update({
            "env/reward_mean": all_scores.mean().item(),
            "env/reward_std": all_scores.std().item() if all_scores.numel() > 1 else 0.0,
            "env/toxicity_mean": all_toxicity.mean().item(),
            "env/distinct_2": distinct_ngrams(batch.responses),
            "objective/kl_coef": self.kl_ctl.value,
            "objective/kl_stderr": (kl_per_sample.std() / kl_per_sample.numel() ** 0.5).item()
            if kl_per_sample.numel() > 1 else 0.0,
        })
        self.kl_ctl.update(stats["objective/kl"], len(prompts) * self.accelerator.num_processes)
        timings["time/total"] = self._clock() - started
        tokens = self.accelerator.reduce(lengths.sum(), "sum").item()
        stats.update(timings)
        stats["time/tokens_per_second"] = tokens / timings["time/total"]
        return stats, batch
