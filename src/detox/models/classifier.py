"""A sequence classifier's labels and batched inference, shared by the reward model, its training and the judges."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from detox.common.errors import RewardModelError


def label_index(
    model: PreTrainedModel,
    name: str,
    owner: str = "the reward model",
    fix: str = "Set reward.reward_label / reward.toxic_label in params.yaml to one of them, "
    "or use a model whose config.id2label names them.",
) -> int:
    """The output index of the label called ``name`` (case-insensitive), or a clear error."""
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    matches = [i for i, label in id2label.items() if label.lower() == name.lower()]
    if not matches:
        raise RewardModelError(f"{owner} has no label {name!r}; its labels are {sorted(id2label.values())}. {fix}")
    return matches[0]


def token_limit(model: PreTrainedModel, max_tokens: int) -> int:
    """``max_tokens``, capped by what the model's position table holds.

    RoBERTa's positions start after the padding index: 2 fewer tokens than its position table holds."""
    return min(max_tokens, getattr(model.config, "max_position_embeddings", 514) - 2)


@torch.no_grad()
def batch_outputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int,
    max_tokens: int,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """One forward pass per batch of ``batch_size`` texts (truncated to ``max_tokens``, padded per batch) on the
    model's device; per batch, its float logits, or what ``head`` makes of them."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
        ).to(device)
        logits = model(**enc).logits.float()
        out.append(logits if head is None else head(logits))
    return out
