"""Phase 3 of the PPO step (:mod:`detox.ppo.engine`), the forward pass: teacher-forced, mini-batch-sized forwards
of the rollout's responses for the reference log-probs, and under mixed precision the old log-probs, values and
entropy too."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator

from detox.common.params import PPOParams
from detox.ppo.core import entropy_from_logits, logprobs_from_logits
from detox.ppo.policy import Seq2SeqPolicy
from detox.ppo.rollout import PolicyPass, Rollout


@dataclass(frozen=True)
class ForwardPass:
    """The forward-pass phase's result: the old policy's numbers and the reference log-probs ``(B, T)``."""

    old: PolicyPass
    ref_logprobs: torch.Tensor


class TeacherForcing:
    """The forward-pass phase of :class:`~detox.ppo.engine.PPOTrainer` (its policy, accelerator and params)."""

    cfg: PPOParams
    policy: torch.nn.Module
    accelerator: Accelerator

    @property
    def unwrapped(self) -> Seq2SeqPolicy:
        return self.accelerator.unwrap_model(self.policy)

    @property
    def start_token(self) -> int:
        return self.unwrapped.config.decoder_start_token_id

    def _decoder_inputs(self, response_ids: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(response_ids[:, :1], self.start_token)
        return torch.cat([start, response_ids[:, :-1]], dim=1)

    def _forward(
        self,
        model: torch.nn.Module,
        batch: Rollout,
        index: torch.Tensor | slice,
        reference: bool = False,
        with_values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        responses = batch.response_ids[index]
        encoder_hidden = None if batch.encoder_hidden is None else batch.encoder_hidden[index]
        logits, values = model(
            input_ids=batch.input_ids[index],
            attention_mask=batch.attention_mask[index],
            decoder_input_ids=self._decoder_inputs(responses),
            with_values=with_values,
            reference=reference,
            encoder_hidden=encoder_hidden,
        )
        return logits, logprobs_from_logits(logits, responses), values

    def _minibatches(self, batch: Rollout) -> list[slice]:
        return [
            slice(start, start + self.cfg.mini_batch_size)
            for start in range(0, len(batch.responses), self.cfg.mini_batch_size)
        ]

    @torch.no_grad()
    def reference_logprobs(self, batch: Rollout) -> torch.Tensor:
        """Reference log-probs (B, T), in mini-batch-sized forwards."""
        model = self.unwrapped
        with self.accelerator.autocast():
            return torch.cat(
                [
                    self._forward(model, batch, index, reference=True, with_values=False)[1]
                    for index in self._minibatches(batch)
                ]
            )

    @torch.no_grad()
    def teacher_forced(self, batch: Rollout) -> PolicyPass:
        """Old log-probs, values and entropy from teacher-forced forwards (mini-batch-sized).

        In fp32 the rollout's captured numbers equal these; under mixed precision (``ppo.precision``
        bf16 or fp16) :meth:`forward_pass` uses these, because autocast rounds the rollout's cached
        decoding and a teacher-forced forward differently. The tests also check the rollout against it.
        """
        logprobs, values, entropy = [], [], []
        model = self.unwrapped
        for index in self._minibatches(batch):
            with self.accelerator.autocast():
                logits, part_logprobs, part_values = self._forward(model, batch, index)
            logprobs.append(part_logprobs)
            values.append(part_values)
            entropy.append(entropy_from_logits(logits))
        values_or_none = None if values[0] is None else torch.cat(values)
        return PolicyPass(torch.cat(logprobs), values_or_none, torch.cat(entropy))

    def forward_pass(self, batch: Rollout) -> ForwardPass:
        """The old policy's numbers and the reference log-probs of the rollout's responses."""
        if self.accelerator.mixed_precision == "no":
            return ForwardPass(batch.captured, self.reference_logprobs(batch))
        # Under autocast, generate's cached, token-by-token decoding and a teacher-forced forward
        # round differently; the old log-probs then come from the same forward as the training
        # passes, so the first ratio is 1 and the first KL 0 (one forward pass more).
        old = self.teacher_forced(batch)
        return ForwardPass(old, self.reference_logprobs(batch))
