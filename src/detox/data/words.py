"""The words of a text: its runs of letters, lowercased; and the vocabulary of a set of texts."""

from __future__ import annotations

import re
from collections.abc import Iterable

LETTERS = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return LETTERS.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """Every word of ``texts`` (e.g. the train split's dialogues and summaries)."""
    return frozenset(w for text in texts for w in words(text))
