"""One RL step for a seq2seq policy, batched end to end: PPO, RLOO or GRPO (``ppo.algorithm``).

TRL dropped PPO and never supported encoder-decoder policies in its current trainers (nor in its
RLOO and GRPO trainers), so this project owns a compact engine (the math is in :mod:`detox.ppo.core`
and :mod:`detox.ppo.critic_free`, what differs per algorithm in :mod:`detox.ppo.objectives`, the stat
names in :mod:`detox.ppo.stats`). The policy is the base model plus LoRA adapters (and, for ppo
only, a scalar value head on the decoder's hidden states); the frozen reference is the same
weights with the adapters disabled. :meth:`PPOTrainer.step` runs, in this order, each phase timed
on its own; only phases 4 to 6 depend on the algorithm:

1. **rollout** (``time/rollout``): in eval mode, sample ``k = ppo.samples_per_prompt`` responses per
   prompt, each prompt encoded once (pure sampling
   from a generation config built from params alone, never ``generation.*`` nor the model
   folder's; ``max_new_tokens`` drawn per batch from ``ppo.response_length`` like the original's
   LengthSampler); mask everything after each response's first EOS. ``generate`` also returns
   the raw logits and the last decoder hidden state of every sampled position.
2. **score** (``time/score``): the reward model scores the decoded responses (optionally
   normalised by running moments and clipped: ``ppo.score``), less ``ppo.novel_word_penalty`` per
   word of a response that its dialogue lacks and ``ppo.repeat_penalty`` per word that loops
   (:mod:`detox.ppo.shaping`).
3. **forward pass** (``time/ppo/forward_pass``, :mod:`detox.ppo.forward`): reference log-probs (adapters disabled) in
   mini-batch-sized teacher-forced passes. The old log-probs, values and entropy are the ones
   the rollout captured, with no second forward pass of the policy; under mixed precision they
   come from teacher-forced passes too (autocast rounds cached decoding differently).
4. **compute rewards** (``time/ppo/compute_rewards``): per token ``-kl_coef * KL``, plus the
   score on the last response token (grpo: no KL here, its KL is a loss term).
5. **compute advantages** (``time/ppo/compute_advantages``): ppo runs GAE and whitens the
   advantages over the batch's response tokens (the returns, the value targets, are not); rloo
   sums the rewards per response and subtracts the mean of the prompt's other k - 1; grpo
   normalises the scores within each group.
6. **optimise** (``time/ppo/optimize_step``): ``ppo_epochs`` x shuffled mini-batches of the
   algorithm's loss (ppo: the clipped policy loss + ``vf_coef`` x the clipped value loss),
   gradient clipping, AdamW and gradient accumulation (through accelerate, so it works under
   DDP). The first mini-batch's ratio is exactly 1, or something differs between the rollout and
   the training pass.
7. **stats** (``time/ppo/calc_stats``): the step's stats averaged over all processes, then the
   adaptive (or fixed) KL coefficient's update from the mean KL.

With ``ppo.lora.scope: decoder`` (the default) the encoder has no adapters, so it runs once per
step, before generation; its output feeds the rollout, the reference pass and every PPO epoch.
Otherwise each of those runs the encoder again.

Every random draw of a step is seeded from ``(seed, step, process)``, so a run resumed from a
checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time

import torch
from accelerate import Accelerator
from transformers import GenerationConfig, PreTrainedTokenizerBase

from detox.common.errors import DetoxError
from detox.common.params import PPOParams
from detox.models.precision import AUTOCAST_DTYPES
from detox.models.reward import RewardScorer
from detox.ppo import stats as names
from detox.ppo.controllers import AdaptiveKLController, FixedKLController, KLController, RunningMoments
from detox.ppo.forward import ForwardPass, TeacherForcing
from detox.ppo.objectives import Targets, objective_for
from detox.ppo.policy import Seq2SeqPolicy
from detox.ppo.rollout import Rollout, rollout_config, sample
from detox.ppo.shaping import novel_words, repeated_words
from detox.ppo.stats import MinibatchStats, step_stats

log = logging.getLogger(__name__)


class TrainingDivergedError(DetoxError):
    """A loss became NaN or infinite."""


class PPOTrainer(TeacherForcing):
    """The policy, its optimizer, the reward model and the controllers; :meth:`step` runs one PPO step."""

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
        precision = accelerator.mixed_precision
        if precision in AUTOCAST_DTYPES:  # the frozen weights in the autocast's dtype: the same products
            layers = policy.store_frozen_weights(AUTOCAST_DTYPES[precision])
            if accelerator.is_main_process:
                log.info("ppo.precision %s: %d frozen linear layers stored in %s", precision, layers, precision)
        optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.learning_rate)
        self.policy, self.optimizer = accelerator.prepare(policy, optimizer)
        # peft creates LoRA dropout layers in train mode: rollouts and old/reference forwards run in eval.
        self.policy.eval()
        self.kl_ctl: KLController = (
            AdaptiveKLController(cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon)
            if cfg.kl.adaptive
            else FixedKLController(cfg.kl.init_coef)
        )
        self.score_moments = RunningMoments()
        self.objective = objective_for(cfg)

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
        """The rollout's pure-sampling generation config (:func:`detox.ppo.rollout.rollout_config`)."""
        return rollout_config(
            self.tokenizer, self.start_token, max_new_tokens, capture, self.unwrapped.value_head is not None
        )

    @torch.no_grad()
    def rollout(self, prompts: list[str], step: int) -> Rollout:
        with self.accelerator.autocast():
            return sample(
                self.unwrapped, self.tokenizer, self.cfg, prompts, self._step_seed(step), self.accelerator.device
            )

    def _prepare_scores(self, scores: torch.Tensor) -> torch.Tensor:
        if self.cfg.score.normalize:
            self.score_moments.update(self.accelerator.gather(scores))
            scores = (scores - self.score_moments.mean) / self.score_moments.std
        if self.cfg.score.clip is not None:
            scores = scores.clamp(-self.cfg.score.clip, self.cfg.score.clip)
        return scores

    def optimise(self, batch: Rollout, forward: ForwardPass, targets: Targets, step: int) -> MinibatchStats:
        stats = MinibatchStats()
        generator = torch.Generator().manual_seed(self._step_seed(step))
        mask, with_values = batch.mask, self.objective.uses_values
        for _ in range(self.cfg.ppo_epochs):
            order = torch.randperm(len(batch.responses), generator=generator).to(mask.device)
            normalizers = self.objective.normalizers(mask, order, self.accelerator)
            for number, start in enumerate(range(0, len(order), self.cfg.mini_batch_size)):
                index = order[start : start + self.cfg.mini_batch_size]
                with self.accelerator.accumulate(self.policy), self.accelerator.autocast():
                    _, logprobs, values = self._forward(self.policy, batch, index, with_values=with_values)
                    loss, loss_stats = self.objective.loss(
                        logprobs, values, forward, targets, index, mask[index], normalizers[number]
                    )
                    if not torch.isfinite(loss):
                        parts = ", ".join(
                            f"{key.rsplit('/', 1)[-1]} loss {loss_stats[key].item()}"
                            for key in (names.LOSS_POLICY, names.LOSS_VALUE)
                            if key in loss_stats
                        )
                        raise TrainingDivergedError(
                            f"non-finite loss at {self.cfg.algorithm.upper()} step {step} ({parts}); lower "
                            "ppo.learning_rate, enable ppo.score.normalize or ppo.score.clip, or raise ppo.kl.init_coef"
                        )
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                stats.add(loss_stats)
        return stats

    def _clock(self) -> float:
        """perf_counter after the device's queued work is done, so each phase's time is its own (GPU)."""
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()

    def step(self, prompts: list[str], dialogues: list[str], step: int) -> tuple[dict[str, float], Rollout]:
        """Run one step on this process's prompts, ``k`` responses each (the phases of the module docstring);
        return stats averaged over all processes, and the rollout."""
        timings: dict[str, float] = {}
        started = tick = self._clock()

        def lap(name: str) -> None:
            nonlocal tick
            now = self._clock()
            timings[name], tick = now - tick, now

        k = self.cfg.group_size
        batch = self.rollout(prompts, step)
        lap(names.TIME_ROLLOUT)

        per_response = [d for d in dialogues for _ in range(k)]
        scored = self.scorer.score(batch.responses, per_response)
        reward, toxicity = scored.reward.to(self.accelerator.device), scored.toxicity.to(self.accelerator.device)
        novel = novel_words(batch.responses, per_response).to(self.accelerator.device)
        repeated = repeated_words(batch.responses).to(self.accelerator.device)
        scores = (  # less the faithfulness and repetition terms (ppo/shaping.py)
            self._prepare_scores(reward) - self.cfg.novel_word_penalty * novel - self.cfg.repeat_penalty * repeated
        )
        lap(names.TIME_SCORE)

        forward = self.forward_pass(batch)
        lap(names.TIME_FORWARD_PASS)

        mask = batch.mask
        kl_coef = self.objective.kl_coef(self.kl_ctl.value)
        rewards = self.objective.rewards(scores, forward, mask, kl_coef)
        lap(names.TIME_COMPUTE_REWARDS)

        targets = self.objective.targets(rewards, forward, mask)
        lap(names.TIME_COMPUTE_ADVANTAGES)

        if not self.cfg.disable_dropout:
            self.policy.train()  # the user chose dropout during optimisation (not recommended for PPO)
        train = self.optimise(batch, forward, targets, step)
        self.policy.eval()
        lap(names.TIME_OPTIMIZE_STEP)

        stats = step_stats(
            self.accelerator,
            mask=mask,
            responses=batch.responses,
            entropy=forward.old.entropy,
            values=forward.old.values,
            kl=targets.kl,
            non_score=targets.non_score,
            returns=targets.returns,
            reward=reward,
            toxicity=toxicity,
            novel=novel,
            repeated=repeated,
            train=train,
            kl_coef=kl_coef,
            group_stats=targets.group_stats,
            eos_token_id=self.tokenizer.eos_token_id,
            response_ids=batch.response_ids,
        )
        if self.objective.adapts_kl:  # ppo and rloo: the reward's KL coefficient (grpo's beta is fixed)
            self.kl_ctl.update(stats[names.KL], len(batch.responses) * self.accelerator.num_processes)
        lap(names.TIME_CALC_STATS)

        timings[names.TIME_TOTAL] = self._clock() - started
        tokens = self.accelerator.reduce(mask.sum(1).float().sum(), "sum").item()
        stats.update(timings)
        stats[names.TOKENS_PER_SECOND] = tokens / timings[names.TIME_TOTAL]
        return stats, batch
