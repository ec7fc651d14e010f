"""Reward shaping beside the reward model's score: the words of a summary that its dialogue lacks.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detox.data.words import words  # the garbling measure's words: lowercased runs of letters


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
