"""The one generate-and-score path that the baseline and evaluate stages share.

They differ only in which policy they pass: the same prompts, seed, generation
settings and scorer give a paired comparison.
"""

from __future__ import annotations

import time

import pandas as pd
from rouge_score import rouge_scorer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from detox.generation import build_prompts, generate_summaries
from detox.params import GenerationParams
from detox.reward import RewardScorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
TOXIC_THRESHOLD = 0.5


def rouge(responses: list[str], references: list[str]) -> pd.DataFrame:
    """Per-sample ROUGE F-measures (rouge-score package, with stemming)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    rows = [scorer.score(ref, resp) for resp, ref in zip(responses, references, strict=True)]
    return pd.DataFrame({key: [r[key].fmeasure for r in rows] for key in ROUGE_KEYS})


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
) -> tuple[pd.DataFrame, float]:
    """Generate one summary per row of ``data`` and score it.

    Returns one row per sample (id, dialogue, reference, response, reward, toxicity,
    rouge1/2/L, plus ``heated`` when the data has it) and the samples per second of
    generate + score together.
    """
    started = time.perf_counter()
    prompts = build_prompts(data["dialogue"].tolist(), template)
    responses = generate_summaries(model, tokenizer, prompts, cfg, seed, max_source_tokens, desc=desc)
    scores = scorer.score(responses, data["dialogue"].tolist())
    elapsed = time.perf_counter() - started
    frame = pd.DataFrame({
        "id": data["id"].to_numpy(),
        "dialogue": data["dialogue"].to_numpy(),
        "reference": data["summary"].to_numpy(),
        "response": responses,
        "reward": scores.reward.numpy(),
        "toxicity": scores.toxicity.numpy(),
    })
    frame = pd.concat([frame, rouge(responses, data["summary"].tolist())], axis=1)
    if "heated" in data.columns:
        frame["heated"] = data["heated"].to_numpy()
    return frame, len(frame) / elapsed if elapsed > 0 else float("nan")


def _group(frame: pd.DataFrame) -> dict[str, float]:
    return {
        "n": int(len(frame)),
        "reward_mean": float(frame["reward"].mean()),
        "reward_std": float(frame["reward"].std(ddof=1)) if len(frame) > 1 else 0.0,
        "toxicity_mean": float(frame["toxicity"].mean()),
        "toxicity_std": float(frame["toxicity"].std(ddof=1)) if len(frame) > 1 else 0.0,
        "toxic_share": float((frame["toxicity"] > TOXIC_THRESHOLD).mean()),
        **{f"{key}": float(frame[key].mean()) for key in ROUGE_KEYS},
    }


def summarize(frame: pd.DataFrame, samples_per_second: float) -> dict[str, object]:
    """Metrics of a scored frame; with a ``heated`` column, also per group (heated / calm)."""
    metrics: dict[str, object] = {**_group(frame), "samples_per_second": float(samples_per_second)}
    if "heated" in frame.columns:
        metrics["heated"] = _group(frame[frame["heated"]]) if frame["heated"].any() else {"n": 0}
        metrics["calm"] = _group(frame[~frame["heated"]]) if (~frame["heated"]).any() else {"n": 0}
    return metrics


def sample_rows(data: pd.DataFrame, num_samples: int | None) -> pd.DataFrame:
    """The first ``num_samples`` rows (all when None): baseline and evaluate see the same ones."""
    return data if num_samples is None else data.iloc[:num_samples].reset_index(drop=True)

