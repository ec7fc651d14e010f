"""Batched sampling from a seq2seq policy.

Encoder inputs are padded on the **right**, as T5 was trained (left padding shifts
its relative position bias). Responses come back without the decoder start token,
right-padded after their first EOS.

Batches: with ``generation.sort_by_length`` (the default) the prompts are ordered by
token count, longest first, before they are cut into batches, so each batch pads
its prompts to a similar length; the summaries come back in the input order.

Reproducibility: each batch re-seeds torch with ``seed + index of its first prompt``
in that (sorted) order, so the same seed, prompts, batch size and machine give the
same summaries. A different batch size groups prompts differently and so draws
different samples: compare runs at the same ``generation.batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from detox.common.params import GenerationParams


def load_policy(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a seq2seq policy and its tokenizer from a local folder, in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    return model.eval(), tokenizer


def build_prompts(dialogues: Sequence[str], template: str) -> list[str]:
    return [template.format(dialogue=d) for d in dialogues]


def generation_kwargs(cfg: GenerationParams, max_new_tokens: int | None = None) -> dict[str, object]:
    """``generate()`` keyword arguments for ``cfg`` (``max_new_tokens`` may be overridden per batch)."""
    kwargs: dict[str, object] = {
        "do_sample": cfg.do_sample,
        "max_new_tokens": max_new_tokens or cfg.max_new_tokens,
        "min_new_tokens": cfg.min_new_tokens,
    }
    if cfg.do_sample:
        kwargs.update(top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature)
    return kwargs


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: GenerationParams,
    max_new_tokens: int | None = None,
) -> torch.Tensor:
    """Sample one response per row; return token ids without the decoder start token.

    Rows that finish early are padded with ``pad_token_id`` after their EOS.
    """
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **generation_kwargs(cfg, max_new_tokens),
    )
    return out[:, 1:]


def generate_summaries(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: GenerationParams,
    seed: int,
    max_source_tokens: int = 512,
    desc: str = "generate",
) -> list[str]:
    """Summaries for ``prompts`` (in their order), batch by batch, with a progress bar."""
    device = next(model.parameters()).device
    # Tokenised once: the lengths order the batches, and each batch is padded from these ids.
    encoded = tokenizer(list(prompts), truncation=True, max_length=max_source_tokens)["input_ids"]
    order = list(range(len(prompts)))
    if cfg.sort_by_length and len(prompts) > cfg.batch_size:  # one batch gains nothing from sorting
        order.sort(key=lambda i: -len(encoded[i]))  # stable: equal lengths keep the input order
    responses: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc=desc, unit="batch"):
        rows = order[start : start + cfg.batch_size]
        enc = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
        torch.manual_seed(seed + start)
        ids = sample_responses(model, tokenizer, enc["input_ids"].to(device), enc["attention_mask"].to(device), cfg)
        for row, text in zip(rows, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
            responses[row] = text.strip()
    return responses
