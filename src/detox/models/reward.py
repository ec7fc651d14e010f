"""The reward model as a batched scorer.

reward   = the logit of the label named ``reward_label`` (``nothate``), found by name
           in the model's ``id2label``, never by a hard-coded index;
toxicity = the softmax probability of the label named ``toxic_label`` (``hate``).

What is scored is ``reward.input``: the response alone (default: the summary is what
must be non-toxic) or the dialogue followed by the response (what the original
notebook scored).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from detox.common.params import RewardParams
from detox.models.classifier import batch_outputs, label_index, token_limit


@dataclass(frozen=True)
class Scores:
    reward: torch.Tensor  # (n,) logit of the reward label
    toxicity: torch.Tensor  # (n,) probability of the toxic label


class RewardScorer:
    """Scores texts in batches of ``batch_size``: one forward pass per batch, no per-text loop."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        cfg: RewardParams,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        if cfg.input == "dialogue+response":
            # A long dialogue must not push the response (what the policy controls) out of the window.
            self.tokenizer = copy.deepcopy(tokenizer)
            self.tokenizer.truncation_side = "left"
        self.cfg = cfg
        self.reward_index = label_index(model, cfg.reward_label)
        self.toxic_index = label_index(model, cfg.toxic_label)

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: RewardParams) -> RewardScorer:
        model = AutoModelForSequenceClassification.from_pretrained(path)
        return cls(model, AutoTokenizer.from_pretrained(path), cfg)

    def texts(self, responses: Sequence[str], dialogues: Sequence[str] | None = None) -> list[str]:
        if self.cfg.input == "response":
            return list(responses)
        if dialogues is None or len(dialogues) != len(responses):
            raise ValueError("reward.input is dialogue+response: pass one dialogue per response")
        return [f"{d}\n{r}" for d, r in zip(dialogues, responses, strict=True)]

    @torch.no_grad()
    def score(self, responses: Sequence[str], dialogues: Sequence[str] | None = None) -> Scores:
        texts = self.texts(responses, dialogues)
        logits = batch_outputs(
            self.model, self.tokenizer, texts, self.cfg.batch_size, token_limit(self.model, self.cfg.max_tokens)
        )
        if not logits:
            empty = torch.empty(0)
            return Scores(empty, empty)
        all_logits = torch.cat(logits)
        return Scores(
            reward=all_logits[:, self.reward_index].cpu(),
            toxicity=all_logits.softmax(-1)[:, self.toxic_index].cpu(),
        )
