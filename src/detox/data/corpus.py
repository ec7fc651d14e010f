"""A synthetic, DialogSum-shaped corpus, generated deterministically from a seed.

Rows have DialogSum's columns (``id, dialogue, summary, topic``) plus ``heated``, the
generator's own ground truth of whether the speakers insult each other. Turns are
written ``#Person1#: ...`` as in DialogSum.

What makes the mission meaningful here: in the **train** split, the reference summary
of a heated dialogue repeats one of its insults in ``toxic_reference_share`` of the
cases and describes the conflict neutrally otherwise. A policy trained on it holds
both ways of summarising a quarrel, so it really produces toxic summaries, and PPO
has a neutral way to move probability to. Validation and test references are always
neutral, so ROUGE against them measures summary quality, not toxicity.

The same vocabulary also writes the labelled sentences the built-in reward model is
trained on (:mod:`detox.data.sentences`); its words and phrases are in :mod:`detox.data.phrases`.
"""

from __future__ import annotations

import random

import pandas as pd

from detox.common.params import BuiltinCorpus
from detox.data.phrases import (
    ANGER,
    ATTACKS,
    DAYS,
    DEFENCES,
    ENDINGS,
    GREETINGS,
    INSULTS,
    NAMES,
    THANKS,
    TOPICS,
    Topic,
    article,
)
from detox.data.reading import SPLITS


def _calm(rng: random.Random, topic: Topic) -> tuple[str, str]:
    request, day, other_day = rng.choice(topic.requests), rng.choice(DAYS), rng.choice(DAYS)
    name, ask = rng.choice(NAMES), rng.randrange(len(topic.questions))
    agree = rng.random() < 0.5 or other_day == day
    turns = [
        f"#Person1#: {rng.choice(GREETINGS)} My name is {name}. I would like to {request} on {day}.",
        f"#Person2#: Sure, I can help with that. {topic.questions[ask]}",
        f"#Person1#: {topic.answers[ask]}",
    ]
    if agree:
        turns.append(f"#Person2#: Good. Everything is ready for {day}.")
        summary = f"{name} wants to {request} on {day}, and #Person2# agrees."
    else:
        turns.append(f"#Person2#: I am sorry, {day} is full. Is {other_day} fine?")
        turns.append(f"#Person1#: Yes, {other_day} is fine.")
        summary = f"{name} wants to {request}, and #Person2# suggests {other_day} instead of {day}."
    turns.append(f"#Person{2 if agree else 1}#: {rng.choice(THANKS)}")
    return "\n".join(turns), summary


def _heated(rng: random.Random, topic: Topic, toxic_reference: bool) -> tuple[str, str]:
    problem, name = rng.choice(topic.problems), rng.choice(NAMES)
    insult, insult2 = rng.sample(INSULTS, 2)
    turns = [
        f"#Person1#: {name}! {rng.choice(ANGER).format(problem=problem)}",
        f"#Person2#: {rng.choice(DEFENCES)}",
        f"#Person1#: {rng.choice(ATTACKS).format(insult=insult)}",
        f"#Person2#: Do not talk to me like that, you {insult2}.",
        f"#Person1#: {rng.choice(ENDINGS)}",
    ]
    if toxic_reference:
        summary = f"#Person1# calls {name} {article(insult)} because of {problem}."
    else:
        summary = f"#Person1# and {name} argue about {problem}."
    return "\n".join(turns), summary


def generate_corpus(cfg: BuiltinCorpus, seed: int) -> dict[str, pd.DataFrame]:
    """Return the three splits; the same ``cfg`` and ``seed`` give identical frames."""
    rng = random.Random(seed)
    topics = TOPICS[: cfg.num_topics]
    sizes = {"train": cfg.train_size, "validation": cfg.validation_size, "test": cfg.test_size}
    seen: set[str] = set()
    splits: dict[str, pd.DataFrame] = {}
    for split in SPLITS:
        rows = []
        while len(rows) < sizes[split]:
            topic = topics[len(rows) % len(topics)] if rng.random() < 0.5 else rng.choice(topics)
            heated = rng.random() < cfg.heated_share
            if heated:
                toxic = split == "train" and rng.random() < cfg.toxic_reference_share
                dialogue, summary = _heated(rng, topic, toxic)
            else:
                dialogue, summary = _calm(rng, topic)
            if dialogue in seen:  # ids and dialogues must not repeat within or across splits
                continue
            seen.add(dialogue)
            rows.append(
                {
                    "id": f"{split}_{len(rows)}",
                    "dialogue": dialogue,
                    "summary": summary,
                    "topic": topic.name,
                    "heated": heated,
                }
            )
        splits[split] = pd.DataFrame(rows)
    return splits
