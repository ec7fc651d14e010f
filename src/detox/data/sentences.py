"""The built-in world's labelled sentences (``hate``/``nothate``), garbled the way PPO garbles summaries,
and the vocabulary of the generator."""

from __future__ import annotations

import random
from functools import lru_cache

import pandas as pd

from detox.common.params import BuiltinCorpus
from detox.data.corpus import generate_corpus
from detox.data.phrases import ANGER, ATTACKS, DAYS, DEFENCES, ENDINGS, INSULTS, NAMES, TOPICS, article
from detox.data.words import vocabulary as text_vocabulary


def labelled_sentences(n: int, seed: int, hard_share: float = 0.0) -> pd.DataFrame:
    """Sentences labelled ``hate`` (1: they insult someone) or ``nothate`` (0), half each.

    The non-hateful half deliberately includes conflict without insults and the
    ``#Person1# calls ...`` shape, so the classifier must learn the insults, not the
    sentence shape. With ``hard_share`` > 0 that share of the sentences is garbled the way
    PPO garbles summaries (:func:`garble`): the insults of a hateful one survive, glued to
    noise or to their neighbours, and half of the hateful ones are first made of a neutral
    summary with an insult put anywhere in it ("argue about the missed pig"); a non-hateful
    one gets noise and no insult. So neither garbling nor the sentence's shape tells the
    classes apart, and a classifier must find the insults themselves.
    The other sentences are the same as with ``hard_share`` 0.
    """
    rng = random.Random(seed)
    noise = random.Random(f"{seed}-hard")  # its own stream: the clean sentences do not depend on hard_share
    rows: list[dict[str, object]] = []
    for i in range(n):
        topic, name = rng.choice(TOPICS), rng.choice(NAMES)
        problem, insult = rng.choice(topic.problems), rng.choice(INSULTS)
        if i % 2:
            text = rng.choice(
                (
                    f"#Person1# calls {name} {article(insult)} because of {problem}.",
                    f"#Person{rng.randint(1, 2)}# calls #Person{rng.randint(1, 2)}# {article(insult)}.",
                    rng.choice(ATTACKS).format(insult=insult),
                    f"Do not talk to me like that, you {insult}.",
                    f"{name} is {article(insult)}.",
                    f"#Person1# says {name} is {article(insult)} and argues about {problem}.",
                    f"{name}, you are {article(insult)} and {article(rng.choice(INSULTS))}.",
                )
            )
        else:
            request, day = rng.choice(topic.requests), rng.choice(DAYS)
            text = rng.choice(
                (
                    f"#Person1# and {name} argue about {problem}.",
                    f"#Person1# calls {name} because of {problem}.",
                    f"{name} wants to {request} on {day}, and #Person2# agrees.",
                    f"{name} wants to {request}, and #Person2# suggests {rng.choice(DAYS)} instead of {day}.",
                    rng.choice(ANGER).format(problem=problem),
                    rng.choice(DEFENCES),
                    rng.choice(ENDINGS),
                    f"I would like to {request} on {day}.",
                    rng.choice(topic.questions),
                    rng.choice(topic.answers),
                    f"#Person1# complains to {name} about {problem}.",
                )
            )
        hard = hard_share > 0 and noise.random() < hard_share
        if hard:
            if i % 2 and noise.random() < 0.5:  # an insult dropped into a neutral summary, as PPO leaves them
                text = _insert_insult(_neutral_summary(noise), noise)
            text = garble(text, noise, toxic=bool(i % 2))
        rows.append({"text": text, "label": i % 2, "hard": hard})
    return pd.DataFrame(rows)


def _neutral_summary(rng: random.Random) -> str:
    """A summary of the shapes the policy writes, without an insult."""
    topic, name, day = rng.choice(TOPICS), rng.choice(NAMES), rng.choice(DAYS)
    return rng.choice(
        (
            f"#Person1# and {name} argue about {rng.choice(topic.problems)}.",
            f"{name} wants to {rng.choice(topic.requests)} on {day}, and #Person2# agrees.",
            f"{name} wants to {rng.choice(topic.requests)}, and #Person2# suggests {rng.choice(DAYS)} "
            f"instead of {day}.",
        )
    )


def _insert_insult(text: str, rng: random.Random) -> str:
    """``text`` with an insult (a whole phrase or one of its words) put between two of its words."""
    insult = rng.choice(INSULTS)
    piece = insult if rng.random() < 0.5 else rng.choice(insult.split())
    words = text.split()
    at = rng.randint(1, len(words))
    return " ".join(words[:at] + [piece] + words[at:])


def _fragment(rng: random.Random) -> str:
    """A piece of a corpus word, 2 to 5 letters (``tter``, ``Ltop``): the debris of garbled output."""
    word = rng.choice(_fragment_source())
    size = rng.randint(2, min(5, len(word)))
    start = rng.randrange(len(word) - size + 1)
    piece = word[start : start + size]
    return piece.capitalize() if rng.random() < 0.2 else piece


@lru_cache(maxsize=1)
def _fragment_source() -> tuple[str, ...]:
    return tuple(sorted(w for w in vocabulary() if len(w) >= 3))


def garble(text: str, rng: random.Random, toxic: bool) -> str:
    """``text`` with one to three edits of the kinds PPO's garbled summaries show.

    Edits: glue a word to the next one (``repairidiot``), insert a fragment of a corpus word
    alone or glued to a word (``andtter``, ``Ltopengine``), replace or drop a word (so one word
    of a two-word insult may stand alone: ``bagtic clown``). The edits are drawn again until
    the generator's oracle agrees with the label: a toxic text keeps an insult (glue can hide
    one in an English word, ``a pathetic`` -> ``apathetic``), a clean one gets none from a
    fragment. After 20 tries the text is returned unchanged.
    """
    from detox.judges.oracle import generator_oracle

    oracle = generator_oracle()
    for _ in range(20):
        words = text.split()
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(words))
            kind = rng.choice(("glue", "fragment", "fragment", "replace", "drop"))
            if kind == "glue" and i + 1 < len(words):
                words[i : i + 2] = [words[i].rstrip(".,!?") + words[i + 1]]
            elif kind == "fragment":
                piece = _fragment(rng)
                where = rng.random()
                words[i] = piece + words[i] if where < 0.3 else words[i] + piece if where < 0.6 else words[i]
                if where >= 0.6:
                    words.insert(i, piece)
            elif kind == "replace":
                words[i] = _fragment(rng) + _fragment(rng)
            elif kind == "drop" and len(words) > 3:
                del words[i]
        garbled = " ".join(words)
        if oracle.is_toxic(garbled) == toxic:
            return garbled
    return text


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every word the generator writes, lowercased, except the insults' words."""
    from detox.judges.oracle import insult_words

    splits = generate_corpus(BuiltinCorpus(train_size=3000, validation_size=5, test_size=5, heated_share=0.5), seed=0)
    texts = [t for frame in splits.values() for t in (*frame["dialogue"], *frame["summary"])]
    texts += labelled_sentences(3000, seed=0)["text"].tolist()
    return frozenset(text_vocabulary(texts) - set(insult_words(INSULTS)))
