"""Reward shaping beside the reward model's score: words a summary's dialogue lacks, and repeated words.

The reward model judges toxicity only. RL that moves a summariser from one way of summarising
a quarrel ("#Person1# calls Anna a dumb pig because of the late rent") to another ("#Person1#
and Anna argue about the late rent") can land on a summary that names a problem, a day or a
person the dialogue never mentions, and the sharpening (``ppo.sharpen``) makes the policy
repeat whatever it finds most likely, right or wrong. A reference-free check needs no model:
count the words of the summary that its dialogue does not contain, as extractive-fragment
coverage measures abstraction (Grusky et al. 2018). Words every summary of the dialogue shares
("and", "argue") cost all k samples of a group alike, so the group baselines of RLOO and GRPO
cancel them; a wrong problem ("the copied homework" for the cold soup) or a garbled token
costs only the samples that have it.

The reward model does not mind a summary that loops ("..., and and and and and", "the apartment
downtown the apartment downtown"): such a summary is as clean as any. A small seq2seq policy
falls into those loops in the tail of its sampling, and RL on a toxicity reward lets them grow
(after 100 RLOO steps on the built-in world, RL seed 42, 46 of 1,500 test summaries looped
against 17 before, and the loops cost the calm dialogues' ROUGE-L 0.006). :func:`repeated_words`
counts them the way rep-n (Welleck et al. 2019, "Neural text generation with unlikelihood
training") counts repeated n-grams (:func:`detox.data.words.looping_words`; evaluate reports the
share of summaries with one). No reference summary of the built-in world has one, and a loop
costs only the samples of a group that loop, so the group baseline does not cancel it. Longer
human summaries (DialogSum's) may repeat a common bigram ("of the"), which costs them too: on
such data measure ``eval/looping_share`` of the sft policy and lower the penalty if it is not 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detox.data.words import looping_words, words  # the garbling measure's words: lowercased runs of letters


def novel_words(responses: Sequence[str], dialogues: Sequence[str]) -> torch.Tensor:
    """How many words of each response its dialogue lacks, ``(n,)`` float32; every occurrence counts."""
    if len(responses) != len(dialogues):
        raise ValueError(f"{len(responses)} responses but {len(dialogues)} dialogues: pass one dialogue per response")
    known: dict[str, set[str]] = {}
    counts = []
    for response, dialogue in zip(responses, dialogues, strict=True):
        vocabulary = known.setdefault(dialogue, set(words(dialogue)))
        counts.append(sum(word not in vocabulary for word in words(response)))
    return torch.tensor(counts, dtype=torch.float32)


def repeated_words(responses: Sequence[str]) -> torch.Tensor:
    """How many words of each response loop, ``(n,)`` float32: a word equal to the one before it, or one that
    closes a bigram already seen earlier in the same response ("and and and" 2, "a b c a b" 1)."""
    return torch.tensor([looping_words(response) for response in responses], dtype=torch.float32)
