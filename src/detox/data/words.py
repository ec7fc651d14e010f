"""The words of a text: its runs of letters, lowercased; the vocabulary of a set of texts; the words that loop."""

from __future__ import annotations

import re
from collections.abc import Iterable

LETTERS = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return LETTERS.findall(text.lower())


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """Every word of ``texts`` (e.g. the train split's dialogues and summaries)."""
    return frozenset(w for text in texts for w in words(text))


def looping_words(text: str) -> int:
    """How many words of ``text`` loop: equal the word before them, or close a bigram the text already had.

    rep-n of Welleck et al. (2019) counts repeated n-grams; this counts the repeated bigrams and the
    immediate repeats ("and and and": 2, "the flat downtown the flat downtown": 2). The built-in
    world's reference summaries have none, a policy caught in a loop many; longer human summaries
    (DialogSum's) can repeat a common bigram ("of the") and count it too.
    """
    tokens = words(text)
    seen: set[tuple[str, str]] = set()
    count = 0
    for previous, word in zip(tokens, tokens[1:], strict=False):
        count += word == previous or (previous, word) in seen
        seen.add((previous, word))
    return count
