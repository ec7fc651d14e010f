"""Summary quality beyond ROUGE: fluency, diversity, length and garbling.

A policy can please a reward model by writing worse summaries: shorter, repetitive, or
garbled into tokens no classifier has seen. These numbers show it:

- **fluency**: the mean per-token negative log-likelihood of a summary (its EOS included)
  under the reference policy, the model before PPO, given the same prompt. Garbled or
  unnatural text costs many nats per token;
- **distinct-1/2**: distinct word uni-/bigrams over all summaries of a set, divided by all
  of them (near 0 when the summaries collapse to one text);
- **length**: words per summary;
- **garbling**: the share of a summary's words (runs of letters, lowercased) that never occur
  in the train split, and the share of summaries with at least one such word;
- **looping**: the share of summaries in which a word repeats the one before it or closes a
  bigram seen earlier in the summary (:func:`detox.data.words.looping_words`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from detox.data.words import words

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def distinct_ngrams(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over a set of texts: near 0 when they collapse to one text."""
    grams = [tuple(ws[i : i + n]) for text in texts for ws in [text.split()] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unknown_words(texts: Sequence[str], known: frozenset[str]) -> np.ndarray:
    """Per text: how many of its words are not in ``known``."""
    return np.array([sum(w not in known for w in words(text)) for text in texts], dtype=np.int64)


@torch.no_grad()
def response_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_source_tokens: int = 512,
    batch_size: int = 32,
) -> np.ndarray:
    """Mean per-token NLL (nats) of each response, EOS included, given its prompt, under ``model``."""
    device = next(model.parameters()).device
    out = np.empty(len(responses), dtype=np.float64)
    for start in range(0, len(responses), batch_size):
        stop = start + batch_size
        enc = tokenizer(
            list(prompts[start:stop]), padding=True, truncation=True, max_length=max_source_tokens, return_tensors="pt"
        ).to(device)
        labels = tokenizer(text_target=list(responses[start:stop]), padding=True, return_tensors="pt")["input_ids"]
        labels = labels.masked_fill(labels == tokenizer.pad_token_id, -100).to(device)
        logits = model(**enc, labels=labels).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        tokens = (labels != -100).sum(1).clamp(min=1)
        out[start:stop] = (nll.sum(1) / tokens).cpu().numpy()
    return out


def rouge(responses: list[str], references: list[str]) -> pd.DataFrame:
    """Per-sample ROUGE F-measures (rouge-score package, with stemming)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    rows = [scorer.score(ref, resp) for resp, ref in zip(responses, references, strict=True)]
    return pd.DataFrame({key: [r[key].fmeasure for r in rows] for key in ROUGE_KEYS})
