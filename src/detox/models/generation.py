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

Several samples per prompt (:func:`generate_draws`, one seed per sample): each batch's encoder
runs once and every sample of the batch decodes from its output. The encoder of a batch sees the
same padded ids for every seed and draws no random numbers, so each sample is bit for bit the one
a separate :func:`generate_summaries` call with its seed returns; only the repeated encoder passes
are gone.

Speed on the CPU: ``generation.skinny_matmul`` (``packed`` by default) sets how the decoding steps
multiply their few rows by each large weight (:mod:`detox.models.skinny`), and ``generation.sampler`` how
each token is drawn (:mod:`detox.models.sampling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from detox.common.params import GenerationParams
from detox.models.attention import use_attention
from detox.models.sampling import sampler
from detox.models.skinny import skinny_matmuls


def load_policy(path: str | Path, attention: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a seq2seq policy and its tokenizer from a local folder, in eval mode, with the attention kernel
    ``attention`` names (``policy.attention``, :mod:`detox.models.attention`)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"
    model = use_attention(AutoModelForSeq2SeqLM.from_pretrained(path), attention)
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
    encoder_outputs: ModelOutput | None = None,
) -> torch.Tensor:
    """Sample one response per row; return token ids without the decoder start token.

    Rows that finish early are padded with ``pad_token_id`` after their EOS. ``encoder_outputs``,
    when given, is the encoder's output for ``input_ids``: generate decodes from it instead of
    running the encoder again.
    """
    inputs = {"input_ids": input_ids} if encoder_outputs is None else {"encoder_outputs": encoder_outputs}
    out = model.generate(
        **inputs,
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
    return generate_draws(model, tokenizer, prompts, cfg, [seed], max_source_tokens, desc)[0]


@torch.no_grad()
def generate_draws(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: GenerationParams,
    seeds: Sequence[int],
    max_source_tokens: int = 512,
    desc: str = "generate",
) -> list[list[str]]:
    """One list of summaries for ``prompts`` (in their order) per seed in ``seeds``.

    Draw ``j`` equals ``generate_summaries(..., seeds[j])``; the encoder runs once per batch for all
    the draws. One progress bar counts the batches of every draw.
    """
    if not seeds:
        raise ValueError("generate_draws: no seeds, so no summaries to draw")
    device = next(model.parameters()).device
    # Tokenised once: the lengths order the batches, and each batch is padded from these ids.
    encoded = tokenizer(list(prompts), truncation=True, max_length=max_source_tokens)["input_ids"]
    order = list(range(len(prompts)))
    if cfg.sort_by_length and len(prompts) > cfg.batch_size:  # one batch gains nothing from sorting
        order.sort(key=lambda i: -len(encoded[i]))  # stable: equal lengths keep the input order
    draws: list[list[str]] = [[""] * len(prompts) for _ in seeds]
    starts = range(0, len(prompts), cfg.batch_size)
    with (
        tqdm(total=len(starts) * len(seeds), desc=desc, unit="batch") as bar,
        skinny_matmuls(model, cfg.skinny_matmul),
        sampler(cfg.sampler),
    ):
        for start in starts:
            rows = order[start : start + cfg.batch_size]
            enc = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            for draw, seed in zip(draws, seeds, strict=True):
                torch.manual_seed(seed + start)
                ids = sample_responses(
                    model, tokenizer, input_ids, attention_mask, cfg, encoder_outputs=encoder_outputs
                )
                for row, text in zip(rows, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
                    draw[row] = text.strip()
                bar.update()
    return draws
