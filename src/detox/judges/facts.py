"""Faithfulness: does a summary state a fact that its dialogue does not contain?

A policy under PPO can move away from toxicity by writing *something else*: another name, another
day, a request nobody made. Toxicity judges do not see that, so a facts judge scores every summary
beside them (the evaluate report's invented-fact share, and the promotion gate).

- :class:`FactFinder` (``kind: facts``, the built-in world): the corpus generator draws every fact of
  a dialogue from fixed lists (:mod:`detox.data.phrases`): a person's name, a weekday, the request of a
  calm dialogue, the problem of a heated one. A fact *stated* in a summary is one of those, written out
  whole (names and days as capitalised words, requests and problems as whole phrases, case and spacing
  aside). A summary **invents** when it states a fact that its dialogue does not contain. Omitting a
  fact is no invention, and neither is a paraphrase that keeps the facts ("Tom asks for a table for two
  on Monday"); a garbled phrase states nothing (garbling is measured on its own).
- :class:`NliFactsJudge` (``kind: nli``): a natural-language-inference model used as SummaC-ZS uses one
  (Laban et al., 2022): the premise is the dialogue (or each of its turns), the hypothesis each summary
  sentence; a sentence is supported by the highest entailment probability over the premises, and a
  summary invents when one of its sentences is supported less than ``threshold``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

FACT_KINDS = ("name", "day", "request", "problem")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _normal(text: str) -> str:
    """Lowercase, one space between words: how phrases are compared."""
    return " ".join(re.findall(r"[a-z0-9#]+", text.lower()))


@dataclass(frozen=True)
class Fact:
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind} {self.value!r}"


class FactFinder:
    """Finds the facts a text states, out of the world's lists of names, days, requests and problems."""

    def __init__(
        self, names: Iterable[str], days: Iterable[str], requests: Iterable[str], problems: Iterable[str]
    ) -> None:
        # Names and days are capitalised words ("Bill", not the "bill" of "the unpaid bill").
        self._capitalised = {
            kind: re.compile(r"\b(" + "|".join(sorted(map(re.escape, values), key=len, reverse=True)) + r")\b")
            for kind, values in (("name", set(names)), ("day", set(days)))
        }
        self._phrases = {
            kind: sorted({_normal(p) for p in values})
            for kind, values in (
                ("request", requests),
                ("problem", problems),
            )
        }

    def facts(self, text: str) -> set[Fact]:
        """Every fact ``text`` states."""
        found = {Fact(kind, m) for kind, pattern in self._capitalised.items() for m in pattern.findall(text)}
        padded = f" {_normal(text)} "
        found |= {Fact(kind, p) for kind, phrases in self._phrases.items() for p in phrases if f" {p} " in padded}
        return found

    def invented(self, dialogue: str, summary: str) -> list[Fact]:
        """The facts ``summary`` states that ``dialogue`` does not contain, in a stable order."""
        new = self.facts(summary) - self.facts(dialogue)
        return sorted(new, key=lambda f: (FACT_KINDS.index(f.kind), f.value))


def generator_fact_lists() -> dict[str, list[str]]:
    """The built-in corpus generator's facts by kind: its names, days, and every topic's requests and problems."""
    from detox.data.phrases import DAYS, NAMES, TOPICS

    return {
        "names": list(NAMES),
        "days": list(DAYS),
        "requests": [r for topic in TOPICS for r in topic.requests],
        "problems": [p for topic in TOPICS for p in topic.problems],
    }


@lru_cache(maxsize=1)
def generator_facts() -> FactFinder:
    """The :class:`FactFinder` of the built-in corpus generator (:func:`generator_fact_lists`)."""
    return FactFinder(**generator_fact_lists())


# --------------------------------------------------------------------------- SummaC-style NLI


def sentences(summary: str) -> list[str]:
    """The sentences of a summary (split after . ! ?); the whole text when it has no such end."""
    parts = [s.strip() for s in SENTENCE_END.split(summary.strip()) if s.strip()]
    return parts or ([summary.strip()] if summary.strip() else [])


def premises(dialogue: str, granularity: str) -> list[str]:
    """The dialogue as one premise (``document``) or one per turn (``turn``), speaker tags kept."""
    if granularity == "document":
        return [dialogue]
    turns = [t.strip() for t in dialogue.splitlines() if t.strip()]
    return turns or [dialogue]


def supported(entailment: np.ndarray, sentence_of: np.ndarray, n_sentences: int) -> np.ndarray:
    """Per summary sentence, its support: the highest entailment probability over the premises.

    ``entailment[i]`` is the probability that pair i's premise entails its hypothesis, whose sentence
    index is ``sentence_of[i]``."""
    support = np.full(n_sentences, -np.inf)
    np.maximum.at(support, sentence_of, entailment)
    return support


class NliScorer:
    """Entailment probabilities of (premise, hypothesis) pairs from a sequence-classification NLI model."""

    def __init__(self, model, tokenizer, entailment_index: int, batch_size: int, max_tokens: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.index, self.batch_size, self.max_tokens = entailment_index, batch_size, max_tokens

    @torch.no_grad()
    def entailment(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            enc = self.tokenizer(
                [p for p, _ in chunk],
                [h for _, h in chunk],
                padding=True,
                truncation="only_first",
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            out.append(self.model(**enc).logits.float().softmax(-1)[:, self.index])
        return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)


def nli_support(
    scorer: NliScorer, dialogues: Sequence[str], summaries: Sequence[str], granularity: str
) -> list[list[float]]:
    """Per summary, the support of each of its sentences (an empty summary has none)."""
    pairs, sentence_of, owners = [], [], []
    for i, (dialogue, summary) in enumerate(zip(dialogues, summaries, strict=True)):
        for sentence in sentences(summary):
            owners.append(i)
            for premise in premises(dialogue, granularity):
                pairs.append((premise, sentence))
                sentence_of.append(len(owners) - 1)
    support = supported(scorer.entailment(pairs), np.asarray(sentence_of, dtype=np.int64), len(owners))
    out: list[list[float]] = [[] for _ in summaries]
    for owner, value in zip(owners, support, strict=True):
        out[owner].append(float(value))
    return out
