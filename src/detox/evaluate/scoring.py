"""The one generate-and-score path that the baseline and evaluate stages share.

They differ only in which policy they pass: the same prompts, seeds, generation
settings, reward model and judges give a paired comparison.

Each test dialogue gets ``samples_per_prompt`` (k) sampled summaries, sample j drawn with
the seed ``eval.seed + j * SAMPLE_SEED_STRIDE`` (so sample 0 is the summary a k = 1 run
draws). Every summary is scored by the reward model *and* by each judge; neither view is
merged into the other (their numbers: :mod:`detox.evaluate.summary`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from detox.common.errors import DetoxError
from detox.common.params import GenerationParams, Params
from detox.data.reading import load_split
from detox.data.words import vocabulary
from detox.evaluate.columns import judge_columns
from detox.evaluate.quality import response_nll, rouge, unknown_words
from detox.evaluate.thresholds import TOXIC_THRESHOLD
from detox.judges.panel import FactsJudge, Judge
from detox.models.generation import build_prompts, generate_draws
from detox.models.reward import RewardScorer

SAMPLE_SEED_STRIDE = 1_000_003  # sample j of every prompt is drawn from seed + j * stride


@dataclass(frozen=True)
class Instruments:
    """What measures a summary besides the reward model."""

    judges: Mapping[str, Judge] = field(default_factory=dict)
    reference: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None  # fluency: the policy before PPO
    vocabulary: frozenset[str] | None = None  # garbling: the words of the train split
    facts: FactsJudge | None = None  # faithfulness: which summaries state facts their dialogue does not


def score_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scorer: RewardScorer,
    data: pd.DataFrame,
    template: str,
    cfg: GenerationParams,
    seed: int,
    max_source_tokens: int = 512,
    desc: str = "generate",
    samples_per_prompt: int = 1,
    instruments: Instruments = Instruments(),
) -> tuple[pd.DataFrame, float]:
    """Generate ``samples_per_prompt`` summaries per row of ``data`` and measure each.

    Returns one row per summary, prompt by prompt (id, sample, dialogue, reference, response,
    the reward model's reward, toxicity and toxic flag, rouge1/2/L, length, plus ``heated`` when
    the data has it, each judge's ``toxicity:<name>`` and ``toxic:<name>`` (and ``why:<name>``
    for a judge that explains), ``fluency_nll`` with a reference policy and ``unknown_words``
    with a vocabulary, ``invented`` and ``invented_facts`` with a facts judge), and the samples per second of
    generation and reward scoring together.
    """
    started = time.perf_counter()
    prompts = build_prompts(data["dialogue"].tolist(), template)
    label = desc if samples_per_prompt == 1 else f"{desc} ({samples_per_prompt} samples)"
    seeds = [seed + j * SAMPLE_SEED_STRIDE for j in range(samples_per_prompt)]
    draws = generate_draws(model, tokenizer, prompts, cfg, seeds, max_source_tokens, desc=label)
    k, n = samples_per_prompt, len(data)
    responses = [draws[j][i] for i in range(n) for j in range(k)]  # prompt-major: all samples of a prompt together
    row = np.repeat(np.arange(n), k)
    dialogues = data["dialogue"].to_numpy()[row]
    scores = scorer.score(responses, dialogues.tolist())
    elapsed = time.perf_counter() - started
    frame = pd.DataFrame(
        {
            "id": data["id"].to_numpy()[row],
            "sample": np.tile(np.arange(k), n),
            "dialogue": dialogues,
            "reference": data["summary"].to_numpy()[row],
            "response": responses,
            "reward": scores.reward.numpy(),
            "toxicity": scores.toxicity.numpy(),
        }
    )
    frame["toxic"] = frame["toxicity"] > TOXIC_THRESHOLD
    frame = pd.concat([frame, rouge(responses, frame["reference"].tolist())], axis=1)
    frame["length"] = [len(r.split()) for r in responses]
    if "heated" in data.columns:
        frame["heated"] = data["heated"].to_numpy(dtype=bool)[row]
    for name, judge in instruments.judges.items():
        score_col, flag_col = judge_columns(name)
        frame[score_col] = judge.score(responses)
        frame[flag_col] = frame[score_col] > judge.threshold
        why = judge.explain(responses)
        if why is not None:
            frame[f"why:{name}"] = why
    if instruments.reference is not None:
        reference, reference_tokenizer = instruments.reference
        frame["fluency_nll"] = response_nll(
            reference, reference_tokenizer, [prompts[i] for i in row], responses, max_source_tokens, cfg.batch_size
        )
    if instruments.vocabulary is not None:
        frame["unknown_words"] = unknown_words(responses, instruments.vocabulary)
    if instruments.facts is not None:
        frame["invented"], frame["invented_facts"] = instruments.facts.invented(dialogues.tolist(), responses)
    return frame, len(frame) / elapsed if elapsed > 0 else float("nan")


def check_paired(before: pd.DataFrame, after: pd.DataFrame, before_name: str = "the baseline") -> None:
    """Raise unless both frames hold the same samples (ids, dialogues, sample numbers) in the same order."""
    if len(before) != len(after):
        raise DetoxError(
            f"{before_name} has {len(before)} scored rows but {len(after)} are evaluated now: it was made with "
            "other data, another eval.num_samples or eval.samples_per_prompt; run `dvc repro baseline` to rescore it"
        )
    differ = before["id"].astype(str).to_numpy() != after["id"].astype(str).to_numpy()
    differ |= before["dialogue"].to_numpy() != after["dialogue"].to_numpy()
    if "sample" in before.columns and "sample" in after.columns:
        differ |= before["sample"].to_numpy() != after["sample"].to_numpy()
    mismatched = np.flatnonzero(differ)
    if mismatched.size:
        i = int(mismatched[0])
        raise DetoxError(
            f"{before_name} is stale: {mismatched.size} of {len(after)} rows differ from the rows "
            f"evaluated now (first at row {i}: id {before['id'].iloc[i]!r} vs {after['id'].iloc[i]!r}); "
            "run `dvc repro baseline` to rescore it on the current data"
        )


def sample_rows(data: pd.DataFrame, num_samples: int | None) -> pd.DataFrame:
    """The first ``num_samples`` rows (all when None): baseline and evaluate see the same ones."""
    return data if num_samples is None else data.iloc[:num_samples].reset_index(drop=True)


def eval_splits(num_samples: int | None, root: str = "data/raw") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test rows both stages score (:func:`sample_rows`) and the train split (the garbling vocabulary)."""
    return sample_rows(load_split(root, "test"), num_samples), load_split(root, "train")


def score_test(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scorer: RewardScorer,
    params: Params,
    test: pd.DataFrame,
    train: pd.DataFrame,
    judges: Mapping[str, Judge],
    reference: tuple[PreTrainedModel, PreTrainedTokenizerBase],
    desc: str,
    facts: FactsJudge | None = None,
) -> tuple[pd.DataFrame, float]:
    """:func:`score_policy` as the baseline and evaluate stages call it: the ``eval`` settings, the judges, fluency
    under ``reference``, garbling against the words of ``train`` and invented facts by ``facts``."""
    instruments = Instruments(
        judges=judges,
        reference=reference,
        vocabulary=vocabulary([*train["dialogue"], *train["summary"]]),
        facts=facts,
    )
    return score_policy(
        model,
        tokenizer,
        scorer,
        test,
        params.prompt.template,
        params.generation,
        params.eval.seed,
        params.generation.max_source_tokens,
        desc=desc,
        samples_per_prompt=params.eval.samples_per_prompt,
        instruments=instruments,
    )
