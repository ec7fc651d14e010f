"""The evaluate stage's library: paired statistics, the reward diff table, the promotion gate,
reports and plots, and the MLflow registry (the served models: tests/test_serving.py).

The statistics are checked on numbers worked out by hand. The registry runs against a
temporary SQLite store with a tiny random T5 (nothing trained but its SentencePiece
tokenizer, well under a second).
"""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from conftest import HANG_S, run_snapshot, tiny_corpus, tiny_t5
from detox.common.errors import DetoxError
from detox.common.params import GenerationParams, PromotionParams, PromptParams
from detox.evaluate.figures import PLOT_FILES, plot_rewards, plot_toxicity, write_plots
from detox.evaluate.pages import TEXT_COLUMN_EM, escape_cell, html_table, markdown_table
from detox.evaluate.promotion import decide, evidence
from detox.evaluate.report import REPORT_FILES, render_report, write_report
from detox.evaluate.scoring import check_paired
from detox.evaluate.statistics import bootstrap_ci, compare, improvement_pct, paired_tests
from detox.evaluate.summary import per_prompt, summarize, toxicity_numbers
from detox.evaluate.tables import (
    DISAGREEMENT_COLUMNS,
    JUDGE_FIELDS,
    JUDGE_ONLY,
    MODEL_ONLY,
    PLOT_DATA,
    SAMPLE_FIELDS,
    TABLE_COLUMNS,
    disagreements,
    reward_diff_table,
    write_disagreements,
    write_plot_data,
    write_reward_diff,
)
from detox.serve.export import export_policy
from detox.serve.summarizer import Summarizer, model_config, signature
from detox.tracking.registry import CANDIDATE, CHAMPION, PolicyModel, champion_evidence
from detox.tracking.results import EvaluationRecord, Registration, evaluation_run, log_evaluation, read_run_record
from detox.tracking.runs import RUN_FILE, Tracker

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PromptParams().template
GENERATION = GenerationParams(max_new_tokens=8, batch_size=2)
EVAL_SEED = 1234
MODEL_NAME = "detox-test-summarizer"


def scored(
    ids, rewards, toxicity, rouge_l=None, responses=None, dialogues=None, judges=None, samples=None, extra=None
) -> pd.DataFrame:
    """A frame shaped like score_policy's output. ``judges`` maps a judge's name to its toxicity per row
    (default: an ``oracle`` that agrees with the reward model)."""
    n = len(ids)
    rouge_l = rouge_l if rouge_l is not None else [0.5] * n
    responses = responses or [f"response {i}" for i in ids]
    toxicity = np.asarray(toxicity, dtype=np.float32)
    frame = pd.DataFrame(
        {
            "id": ids,
            "sample": samples if samples is not None else [0] * n,
            "dialogue": dialogues or [f"#Person1#: dialogue {i}" for i in ids],
            "reference": [f"reference {i}" for i in ids],
            "response": responses,
            "reward": np.asarray(rewards, dtype=np.float32),
            "toxicity": toxicity,
            "toxic": toxicity > 0.5,
            "rouge1": rouge_l,
            "rouge2": rouge_l,
            "rougeL": rouge_l,
            "length": [len(r.split()) for r in responses],
        }
    )
    judges = judges if judges is not None else {"oracle": (toxicity > 0.5).astype(float)}
    for name, values in judges.items():
        frame[f"toxicity:{name}"] = np.asarray(values, dtype=np.float64)
        frame[f"toxic:{name}"] = frame[f"toxicity:{name}"] > 0.5
    for column, values in (extra or {}).items():
        frame[column] = values
    return frame


# --------------------------------------------------------------------------- statistics


def test_improvement_pct_is_the_original_formula():
    assert improvement_pct(0.2, 0.05) == pytest.approx(75.0)  # (0.2 - 0.05) / 0.2
    assert improvement_pct(0.1, 0.15) == pytest.approx(-50.0)  # a regression is negative
    assert improvement_pct(0.4, 0.4) == 0.0
    assert improvement_pct(0.0, 0.1) is None


def test_bootstrap_ci_of_constant_diffs_collapses_to_the_value():
    low, high = bootstrap_ci(np.full(50, 0.75), samples=500, confidence=0.95, seed=0)
    assert low == pytest.approx(0.75) and high == pytest.approx(0.75)


def test_bootstrap_ci_of_symmetric_diffs_contains_zero_and_is_seeded():
    diffs = np.array([-1.0, 1.0] * 50)  # mean 0, sd 1
    low, high = bootstrap_ci(diffs, samples=2000, confidence=0.95, seed=3)
    assert low < 0 < high
    # percentile bootstrap ~ mean +- 1.96 * sd / sqrt(n) = +-0.196
    assert low == pytest.approx(-0.196, abs=0.03) and high == pytest.approx(0.196, abs=0.03)
    assert bootstrap_ci(diffs, 2000, 0.95, seed=3) == (low, high)
    assert bootstrap_ci(diffs, 2000, 0.95, seed=4) != (low, high)
    narrow = bootstrap_ci(diffs, 2000, 0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high  # a lower confidence gives a narrower interval


def test_bootstrap_ci_resamples_pairs_around_a_shifted_mean():
    diffs = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    low, high = bootstrap_ci(diffs, 4000, 0.95, seed=1)
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert low == pytest.approx(diffs.mean() - half, abs=0.04)
    assert high == pytest.approx(diffs.mean() + half, abs=0.04)
    assert low > 0


def test_paired_tests_small_p_for_a_clear_shift_large_for_none():
    rng = np.random.default_rng(0)
    before = rng.normal(0.0, 1.0, size=60)
    shifted = paired_tests(before, before + 0.8 + rng.normal(0.0, 0.3, size=60))
    assert shifted["wilcoxon_p"] < 1e-8 and shifted["ttest_p"] < 1e-8
    noise = np.tile([-0.5, 0.5, -0.2, 0.2], 15)  # zero-mean, symmetric diffs
    unchanged = paired_tests(before, before + noise)
    assert unchanged["wilcoxon_p"] > 0.5 and unchanged["ttest_p"] > 0.5
    assert paired_tests(before, before) == {"wilcoxon_p": 1.0, "ttest_p": 1.0}
    assert paired_tests([1.0], [2.0]) == {"wilcoxon_p": None, "ttest_p": None}


def test_compare_on_known_frames():
    before = scored(
        ["a", "b", "c", "d"],
        [1.0, 2.0, -1.0, 0.0],
        [0.1, 0.9, 0.8, 0.2],
        [0.6, 0.6, 0.4, 0.4],
        judges={"oracle": [0, 1, 1, 1], "ngram": [0.2, 0.7, 0.9, 0.4]},
    )
    after = scored(
        ["a", "b", "c", "d"],
        [2.0, 3.0, 1.0, 2.0],
        [0.05, 0.3, 0.4, 0.05],
        [0.5, 0.5, 0.4, 0.4],
        judges={"oracle": [0, 0, 1, 1], "ngram": [0.1, 0.2, 0.6, 0.3]},
    )
    metrics = compare(before, after, PromotionParams(bootstrap_samples=200), seed=0)
    assert metrics["n"] == 4 and metrics["samples_per_prompt"] == 1
    model_before, model_after = (
        metrics["before"]["toxicity"]["reward_model"],
        metrics["after"]["toxicity"]["reward_model"],
    )
    assert list(metrics["before"]["toxicity"]) == ["reward_model", "oracle", "ngram"]  # the reward model first
    assert model_before["toxicity_mean"] == pytest.approx(0.5) and model_after["toxicity_mean"] == pytest.approx(0.2)
    assert metrics["improvement_pct"]["reward_model"]["toxicity_mean"] == pytest.approx(60.0)  # (0.5 - 0.2) / 0.5
    std_before, std_after = np.std([0.1, 0.9, 0.8, 0.2], ddof=1), np.std([0.05, 0.3, 0.4, 0.05], ddof=1)
    assert metrics["improvement_pct"]["reward_model"]["toxicity_std"] == pytest.approx(
        (std_before - std_after) / std_before * 100, rel=1e-5
    )
    assert (model_before["toxic_share"], model_after["toxic_share"]) == (0.5, 0.0)
    # each judge its own numbers, never merged with the reward model's
    assert metrics["before"]["toxicity"]["oracle"]["toxic_share"] == 0.75
    assert metrics["after"]["toxicity"]["oracle"]["toxic_share"] == 0.5
    assert metrics["improvement_pct"]["oracle"]["toxic_share"] == pytest.approx(100 / 3)
    assert metrics["toxicity_diff"]["oracle"]["mean"] == pytest.approx(-0.25)
    assert metrics["toxicity_diff"]["ngram"]["mean"] == pytest.approx(-0.25)
    assert metrics["rouge_drop"]["rougeL"] == pytest.approx(0.05)
    diff = metrics["reward_diff"]  # diffs 1, 1, 2, 2
    assert diff["mean"] == pytest.approx(1.5)
    assert 1.0 <= diff["ci_low"] <= 1.5 <= diff["ci_high"] <= 2.0
    assert diff["increased_share"] == 1.0 and diff["decreased_share"] == 0.0
    assert metrics["toxicity_diff"]["reward_model"]["mean"] == pytest.approx(-0.3)
    # agreement of the reward model's flags (> 0.5) with each judge's, summary by summary
    assert metrics["agreement"]["oracle"]["before"] == {
        "both_toxic": 2,
        "judge_only": 1,
        "reward_model_only": 0,
        "both_clean": 1,
        "agreement": 0.75,
    }
    assert metrics["agreement"]["oracle"]["after"]["judge_only"] == 2
    noise = compare(before, after.assign(reward=before["reward"] + np.float32(2e-5)), PromotionParams(), seed=0)
    assert noise["reward_diff"]["increased_share"] == 0.0  # float32 scoring noise is no change
    json.dumps(metrics, allow_nan=False)  # valid JSON for DVC


def test_expected_maximum_toxicity_and_toxicity_probability_over_k_samples():
    # 3 prompts x 2 samples; toxicity per sample: a (0.2, 0.8), b (0.1, 0.3), c (0.6, 0.9)
    frame = scored(
        list("aabbcc"),
        [0.0] * 6,
        [0.2, 0.8, 0.1, 0.3, 0.6, 0.9],
        samples=[0, 1] * 3,
        judges={"oracle": [0, 1, 0, 0, 1, 1]},
    )
    numbers = toxicity_numbers(frame, "toxicity", "toxic")
    assert numbers["toxicity_mean"] == pytest.approx(2.9 / 6)
    assert numbers["expected_max_toxicity"] == pytest.approx((0.8 + 0.3 + 0.9) / 3)
    assert numbers["toxicity_probability"] == pytest.approx(2 / 3)  # a and c have a toxic sample
    assert numbers["toxic_share"] == pytest.approx(3 / 6) and numbers["toxic_count"] == 3
    oracle = summarize(frame)["toxicity"]["oracle"]
    assert oracle["expected_max_toxicity"] == pytest.approx(2 / 3) and oracle["toxicity_probability"] == pytest.approx(
        2 / 3
    )
    assert summarize(frame)["n"] == 3 and summarize(frame)["samples_per_prompt"] == 2


def test_paired_statistics_are_over_prompts_each_the_mean_of_its_samples():
    before = scored(list("aabb"), [0.0, 2.0, 1.0, 1.0], [0.0] * 4, samples=[0, 1, 0, 1])
    after = scored(list("aabb"), [3.0, 3.0, 1.0, 3.0], [0.0] * 4, samples=[0, 1, 0, 1])
    prompts = per_prompt(before)
    assert prompts["id"].tolist() == ["a", "b"] and prompts["reward"].tolist() == [1.0, 1.0]
    assert prompts["samples"].tolist() == [2, 2]
    metrics = compare(before, after, PromotionParams(bootstrap_samples=200), seed=0)
    assert metrics["n"] == 2 and metrics["samples_per_prompt"] == 2
    assert metrics["reward_diff"]["mean"] == pytest.approx(1.5)  # prompt a: 3 - 1 = 2, prompt b: 2 - 1 = 1
    with pytest.raises(DetoxError, match="stale"):  # the same prompts with their samples in another order
        compare(before, after.iloc[[1, 0, 2, 3]].reset_index(drop=True), PromotionParams(), 0)


def test_quality_numbers_fluency_distinct_length_garbling_and_loops():
    frame = scored(
        ["a", "b"],
        [0, 0],
        [0, 0],
        responses=["the cat sat", "the cat ran xqz"],
        extra={"fluency_nll": [0.5, 1.5], "unknown_words": [0, 1]},
    )
    quality = summarize(frame)["quality"]
    assert quality["fluency_nll"] == pytest.approx(1.0)
    assert quality["mean_length"] == pytest.approx(3.5)
    assert quality["distinct_1"] == pytest.approx(5 / 7)  # the, cat, sat, ran, xqz of 7 words
    assert quality["distinct_2"] == pytest.approx(4 / 5)  # "the cat" twice
    assert quality["unknown_word_share"] == pytest.approx(1 / 7)
    assert quality["garbled_share"] == pytest.approx(0.5)
    assert quality["looping_share"] == 0.0
    looping = scored(["a", "b", "c"], [0] * 3, [0] * 3, responses=["the cat sat", "the cat cat", "a cat a cat"])
    assert summarize(looping)["quality"]["looping_share"] == pytest.approx(2 / 3)


def test_a_baseline_without_the_evaluated_judges_is_refused():
    before = scored(["a", "b"], [0, 0], [0, 0], judges={"oracle": [0, 0]})
    after = scored(["a", "b"], [0, 0], [0, 0], judges={"oracle": [0, 0], "ngram": [0, 0]})
    with pytest.raises(DetoxError, match=r"same judges.*\['ngram'\].*dvc repro baseline"):
        compare(before, after, PromotionParams(bootstrap_samples=100), 0)


def test_disagreements_list_what_the_reward_model_missed_first():
    before = scored(
        list("abc"),
        [0, 0, 0],
        [0.9, 0.1, 0.1],
        judges={"oracle": [1, 1, 0]},
        extra={"why:oracle": ["idiot", "clown in 'bagticclown'", ""]},
    )
    after = scored(
        list("abc"),
        [0, 0, 0],
        [0.1, 0.9, 0.1],
        judges={"oracle": [1, 0, 0]},
        extra={"why:oracle": ["idiot in 'xidiot'", "", ""]},
    )
    table = disagreements(before, after)
    assert list(table.columns) == DISAGREEMENT_COLUMNS
    assert table[["policy", "id", "disagreement"]].values.tolist() == [
        ["after", "a", JUDGE_ONLY],
        ["after", "b", MODEL_ONLY],
        ["before", "b", JUDGE_ONLY],
    ]
    assert table["judge_found"].tolist() == ["idiot in 'xidiot'", "", "clown in 'bagticclown'"]
    clean = scored(list("ab"), [0, 0], [0.1, 0.9], judges={"oracle": [0, 1]})
    assert len(disagreements(clean, clean)) == 0 and list(disagreements(clean, clean).columns) == DISAGREEMENT_COLUMNS


def test_a_stale_baseline_is_refused_with_the_fix():
    evaluated = scored(["a", "b", "c"], [0, 0, 0], [0, 0, 0])
    with pytest.raises(DetoxError, match=r"stale: 1 of 3 rows.*row 1: id 'x' vs 'b'.*dvc repro baseline"):
        check_paired(scored(["a", "x", "c"], [0, 0, 0], [0, 0, 0]), evaluated)
    with pytest.raises(DetoxError, match=r"2 scored rows but 3 are evaluated.*samples_per_prompt.*dvc repro baseline"):
        check_paired(scored(["a", "b"], [0, 0], [0, 0]), evaluated)
    regenerated = scored(["a", "b", "c"], [0, 0, 0], [0, 0, 0], dialogues=["same", "other", "text"])
    with pytest.raises(DetoxError, match="stale"):  # same ids, other dialogues: data was regenerated
        check_paired(regenerated, evaluated)


# --------------------------------------------------------------------------- promotion gate

IDS = [f"p{i}" for i in range(8)]


def gate_metrics(
    judge_after: list[float],
    rouge_after: float = 0.6,
    model_after: float = 0.1,
    judge_before: list[float] | None = None,
    fluency_after: float = 1.0,
) -> dict:
    """8 prompts; the reward model's toxicity 0.9 before and ``model_after`` after; the oracle's as given."""
    before = scored(
        IDS,
        [0.0] * 8,
        [0.9] * 8,
        [0.6] * 8,
        judges={"oracle": judge_before or [1.0] * 8},
        extra={"fluency_nll": [1.0] * 8},
    )
    after = scored(
        IDS,
        [1.0] * 8,
        [model_after] * 8,
        [rouge_after] * 8,
        judges={"oracle": judge_after},
        extra={"fluency_nll": [fluency_after] * 8},
    )
    return compare(before, after, PromotionParams(bootstrap_samples=500), seed=0)


GATE = PromotionParams(min_prompts=5)


def test_gate_promotes_a_clear_improvement_on_the_judge():
    decision = decide(gate_metrics([0.0] * 7 + [1.0]), GATE)
    assert decision.promoted and decision.decision == "promoted"
    assert [c.name for c in decision.checks] == [
        "min_prompts",
        "judge_toxicity_improvement",
        "judge_significant",
        "rougeL_drop",
        "fluency",
        "champion",
    ]
    assert all(r.startswith("pass: ") for r in decision.reasons)
    assert "oracle: mean toxicity 1.0000 -> 0.1250, fell by 87.5%" in decision.reasons[1]


def test_gate_refuses_when_only_the_reward_model_improved():
    """PPO fooled the reward model (0.9 -> 0.1) but the judge finds every insult still there."""
    metrics = gate_metrics([1.0] * 8)
    assert metrics["improvement_pct"]["reward_model"]["toxicity_mean"] == pytest.approx(88.9, abs=0.1)
    decision = decide(metrics, GATE)
    assert not decision.promoted
    failed = {c.name for c in decision.checks if not c.passed}
    assert failed == {"judge_toxicity_improvement", "judge_significant"}
    assert "fail: oracle: mean toxicity 1.0000 -> 1.0000, fell by 0.0% (at least 50% required)" in decision.reasons


def test_gate_refuses_too_few_prompts_a_rouge_drop_and_lost_fluency():
    decision = decide(gate_metrics([0.0] * 8, rouge_after=0.5, fluency_after=2.0), PromotionParams())
    failed = {c.name for c in decision.checks if not c.passed}
    assert failed == {"min_prompts", "rougeL_drop", "fluency"}
    assert "fail: 8 test dialogues evaluated (at least 100 required)" in decision.reasons
    assert any("ROUGE-L 0.6000 -> 0.5000" in r for r in decision.reasons)
    assert any("fluency NLL under the reference policy 1.000 -> 2.000" in r for r in decision.reasons)
    relaxed = decide(
        gate_metrics([0.0] * 8, rouge_after=0.5, fluency_after=2.0),
        PromotionParams(min_prompts=8, max_rougeL_drop=0.2, max_fluency_nll_rise=1.5),
    )
    assert relaxed.promoted


def test_gate_refuses_an_insignificant_judged_change():
    decision = decide(gate_metrics([0.0, 1.0] * 4, judge_before=[1.0, 0.0] * 4), GATE)
    assert {c.name for c in decision.checks if not c.passed} == {"judge_toxicity_improvement", "judge_significant"}
    assert any("does not lie below 0" in r for r in decision.reasons)


def test_gate_without_baseline_toxicity_on_the_judge_rejects():
    decision = decide(gate_metrics([0.0] * 8, judge_before=[0.0] * 8), GATE)
    assert not decision.promoted and any("no toxicity to improve on" in r for r in decision.reasons)


def test_gate_compares_the_candidate_with_the_champion_on_the_same_prompts():
    metrics = gate_metrics([0.0] * 6 + [1.0] * 2)  # the oracle: 0.25 after
    good = {"version": "3", "judge": "oracle", "test_sha": "t", "n": 8, "judge_toxicity": 0.125, "rougeL": 0.6}
    worse = decide(metrics, GATE, champion=good, test_sha="t")
    assert not worse.promoted and [c.name for c in worse.checks if not c.passed] == ["champion"]
    assert "oracle toxicity 0.2500 vs 0.1250" in worse.reasons[0] and "champion keeps the alias" in worse.reasons[0]
    assert decide(metrics, GATE, champion={**good, "judge_toxicity": 0.5}, test_sha="t").promoted
    other_prompts = decide(metrics, GATE, champion={**good, "judge_toxicity": 0.5}, test_sha="u")
    assert not other_prompts.promoted and "not comparable" in other_prompts.reasons[0]
    other_judge = decide(metrics, GATE, champion={**good, "judge": "ngram", "judge_toxicity": 0.5}, test_sha="t")
    assert not other_judge.promoted and "judged by 'ngram'" in other_judge.reasons[0]
    unjudged = decide(metrics, GATE, champion={"version": "1"}, test_sha="t")
    assert unjudged.promoted and "carries no judged numbers" in unjudged.checks[-1].detail


def test_gate_needs_numbers_of_its_judge():
    with pytest.raises(DetoxError, match="promotion.judge is 'ngram'"):
        decide(gate_metrics([0.0] * 8), PromotionParams(judge="ngram"))


def facts_frames(candidate_summaries: list[str], n: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The baseline summarises n generated test dialogues with their references (faithful); the candidate
    with ``candidate_summaries``; the built-in facts judge fills ``invented`` for both; the oracle falls."""
    from detox.common.params import BuiltinCorpus
    from detox.data.corpus import generate_corpus
    from detox.judges.facts import generator_facts

    test = generate_corpus(BuiltinCorpus(), seed=3)["test"].head(n)
    ids, dialogues, references = list(test["id"]), list(test["dialogue"]), list(test["summary"])
    finder = generator_facts()

    def frame(summaries: list[str], toxicity: float, judged: float) -> pd.DataFrame:
        invented = [bool(finder.invented(d, x)) for d, x in zip(dialogues, summaries, strict=True)]
        extra = {"fluency_nll": [1.0] * n, "invented": invented}
        return scored(
            ids,
            [0.0] * n,
            [toxicity] * n,
            responses=summaries,
            dialogues=dialogues,
            judges={"oracle": [judged] * n},
            extra=extra,
        )

    return frame(references, 0.9, 1.0), frame(candidate_summaries, 0.1, 0.0)


def test_gate_refuses_a_candidate_that_invents_more_facts():
    from detox.common.params import BuiltinCorpus
    from detox.data.corpus import generate_corpus

    references = list(generate_corpus(BuiltinCorpus(), seed=3)["test"].head(40)["summary"])
    cfg = PromotionParams(min_prompts=5, bootstrap_samples=500)
    # half of the candidate's summaries are another dialogue's reference: other names, days, requests
    inventing = references[20:] + references[1:20] + references[:1]
    before, after = facts_frames(inventing)
    metrics = compare(before, after, cfg, seed=0)
    assert metrics["before"]["quality"]["invented_share"] == 0.0
    assert metrics["after"]["quality"]["invented_share"] > 0.9
    assert metrics["invented_diff"]["ci_low"] > 0
    decision = decide(metrics, cfg)
    assert not decision.promoted
    assert [c.name for c in decision.checks if not c.passed] == ["invented_facts"]
    assert (
        "summaries with invented facts 0.0% -> " in decision.reasons[0] and "significantly more" in decision.reasons[0]
    )
    # the same candidate passes when the gate is told not to look, and a faithful candidate passes the check
    assert decide(metrics, PromotionParams(min_prompts=5, refuse_more_invented=False)).promoted
    faithful = decide(compare(*facts_frames(references), cfg, seed=0), cfg)
    assert faithful.promoted and faithful.checks[-2].name == "invented_facts"
    assert "not significantly more" in faithful.checks[-2].detail


def test_the_report_shows_invented_facts_with_their_paired_ci():
    from detox.common.params import BuiltinCorpus
    from detox.data.corpus import generate_corpus

    references = list(generate_corpus(BuiltinCorpus(), seed=3)["test"].head(40)["summary"])
    before, after = facts_frames(references[:30] + references[31:] + references[30:31])
    cfg = PromotionParams(min_prompts=5, bootstrap_samples=200)
    metrics = {**compare(before, after, cfg, seed=0), "facts_judge": "facts"}
    text = render_report(metrics, decide(metrics, cfg), reward_diff_table(before, after), 2, {}, "m", "oracle")
    diff = metrics["invented_diff"]
    assert "Invented facts (the facts judge `facts`)" in text
    assert f"0.0% -> {metrics['after']['quality']['invented_share']:.1%}" in text
    assert f"paired diff {diff['mean']:+.4f} (95% CI [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]" in text


# --------------------------------------------------------------------------- table and report


def test_reward_diff_table_columns_order_and_sorting():
    before = scored(["a", "b", "c", "d"], [1.0, 2.0, 0.5, 3.0], [0] * 4, responses=["ba", "bb", "bc", "bd"])
    after = scored(["a", "b", "c", "d"], [1.5, 1.0, 3.5, 3.0], [0] * 4, responses=["aa", "ab", "ac", "ad"])
    table = reward_diff_table(before, after)
    assert (
        list(table.columns[:6])
        == TABLE_COLUMNS
        == ["dialogue", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"]
    )
    assert list(table.columns[6:]) == [
        "reference",
        "group",
        "reward_model_toxicity_before",
        "reward_model_toxicity_after",
        "oracle_toxicity_before",
        "oracle_toxicity_after",
    ]
    assert table["reference"].tolist() == [f"reference {i}" for i in "cadb"]
    assert set(table["group"]) == {"all"}  # data without a heated flag
    assert table["reward_diff"].tolist() == pytest.approx([3.0, 0.5, 0.0, -1.0])
    # each row keeps its own pair together
    assert table["response_before"].tolist() == ["bc", "ba", "bd", "bb"]
    assert table["response_after"].tolist() == ["ac", "aa", "ad", "ab"]
    assert table["dialogue"].tolist() == [f"#Person1#: dialogue {i}" for i in "cadb"]
    assert (table["reward_after"] - table["reward_before"]).tolist() == pytest.approx(table["reward_diff"].tolist())
    heated = {"heated": [True, False, False, True]}
    grouped = reward_diff_table(
        scored(list("abcd"), [1.0, 2.0, 0.5, 3.0], [0] * 4, extra=heated),
        scored(list("abcd"), [1.5, 1.0, 3.5, 3.0], [0] * 4, extra=heated),
    )
    assert grouped["group"].tolist() == ["calm", "heated", "heated", "calm"]  # rows c, a, d, b


def test_reward_diff_table_shows_the_first_sample_of_each_prompt():
    before = scored(list("aabb"), [1.0, 9.0, 2.0, 9.0], [0] * 4, responses=["a0", "a1", "b0", "b1"], samples=[0, 1] * 2)
    after = scored(list("aabb"), [2.0, 0.0, 2.5, 0.0], [0] * 4, responses=["A0", "A1", "B0", "B1"], samples=[0, 1] * 2)
    table = reward_diff_table(before, after)
    assert table["response_after"].tolist() == ["A0", "B0"] and table["reward_diff"].tolist() == [1.0, 0.5]


def test_markdown_escapes_pipes_and_line_breaks():
    assert escape_cell("a | b\nc\r\nd") == "a \\| b<br>c<br>d"
    assert escape_cell("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"  # text, never HTML; only <br> is a tag
    assert escape_cell(0.123456) == "0.1235"
    frame = pd.DataFrame({"dialogue": ["#Person1#: x | y\n#Person2#: z"], "reward_diff": [1.0]})
    lines = markdown_table(frame).splitlines()
    assert lines == ["| dialogue | reward_diff |", "|---|---|", "| #Person1#: x \\| y<br>#Person2#: z | 1.0000 |"]
    unescaped = [i for i, ch in enumerate(lines[2]) if ch == "|" and lines[2][i - 1] != "\\"]
    assert len(unescaped) == 3  # exactly two cells


def test_reward_diff_files_and_html_escaping(tmp_path):
    before = scored(["a", "b"], [1.0, 2.0], [0, 0], dialogues=["<script>x</script>", "p | q\nr"])
    after = scored(["a", "b"], [2.0, 1.0], [0, 0], dialogues=["<script>x</script>", "p | q\nr"])
    table = reward_diff_table(before, after)
    paths = write_reward_diff(table, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["parquet"]), table)
    markdown = paths["md"].read_text()
    assert "| p \\| q<br>r |" in markdown
    page = paths["html"].read_text()
    assert "&lt;script&gt;" in page and "<script>" not in page and page.startswith("<!DOCTYPE html>")
    assert html_table(table, "t").count("<tr") == 3  # header + 2 rows
    # a dialogue's line breaks are line breaks on the page, not the two characters "\n"
    assert "<td>p | q<br>r</td>" in page and "\\n" not in page
    for column in ("reference", "group", "reward_model_toxicity_before", "oracle_toxicity_after"):
        assert f"<th>{column.replace('_', '_<wbr>')}</th>" in page  # a long name may wrap after an underscore
    assert "<td>reference a</td>" in page
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="columns"):
        write_reward_diff(table.drop(columns="dialogue"), tmp_path)


def test_reward_diff_page_keeps_text_columns_readable():
    """The automatic table layout would give the room to the long headers of the number columns and squeeze
    the dialogue to a word a line: each text column has a least width, the dialogue the widest."""
    dialogue = "#Person1#: " + "a rather long turn of a quarrel " * 3 + "\n#Person2#: no"
    table = pd.DataFrame(
        {
            "dialogue": [dialogue],
            "response_before": ["x " * 40],
            "reward_before": [1.0],
            "group": ["heated"],
            "reward_model_toxicity_before": [0.5],
        }
    )
    page = html_table(table, "t")
    widths = {int(i): float(em) for i, em in re.findall(r"td:nth-child\((\d+)\)\{min-width:([\d.]+)em\}", page)}
    # by position: dialogue, response (the default width), group (as wide as "heated" needs); no number column
    assert widths == {1: TEXT_COLUMN_EM["dialogue"], 2: 10, 4: 3}
    assert "overflow-wrap:break-word" in page  # a garbled word too long for its column wraps


def test_figures_label_summaries_and_keep_the_legend_off_the_data():
    rng = np.random.default_rng(0)
    n = 40
    heated = np.arange(n) % 4 == 0
    before = pd.DataFrame({"reward": rng.normal(size=n), "toxicity": rng.uniform(size=n), "heated": heated})
    after = pd.DataFrame({"reward": rng.normal(size=n), "toxicity": rng.uniform(size=n), "heated": heated})
    assert plot_rewards(before, after).axes[0].get_ylabel() == "summaries"  # k of them per test dialogue
    figure = plot_toxicity(before, after)
    FigureCanvasAgg(figure).draw()
    [ax] = figure.axes
    [legend] = figure.legends
    assert ax.get_legend() is None
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())  # no corner of the data hidden
    assert [t.get_text() for t in legend.get_texts()] == [
        "30 summaries of calm dialogues",
        "10 summaries of heated dialogues",
        "no change",
    ]


def test_plots_and_report(tmp_path):
    turns = [f"#Person1#: hi {i}\n#Person2#: <ho> & bye" for i in "abcdef"]
    before = scored(
        list("abcdef"),
        [0, 1, 2, -1, 3, 0],
        [0.9, 0.1, 0.2, 0.95, 0.05, 0.6],
        dialogues=turns,
        judges={"oracle": [1, 0, 0, 1, 0, 1]},
        extra={"why:oracle": ["idiot", "", "", "rat", "", "pig"]},
    )
    after = scored(
        list("abcdef"),
        [2, 1, 3, 1, 3, 2],
        [0.1, 0.1, 0.1, 0.3, 0.05, 0.2],
        dialogues=turns,
        judges={"oracle": [1, 0, 0, 0, 0, 0]},
        extra={"why:oracle": ["idiot in 'xidiot'", "", "", "", "", ""]},
        responses=["glued xidiot", "b", "c", "d", "e", "f"],
    )
    after["heated"] = [True, False, False, True, False, True]
    before["heated"] = after["heated"]
    history = pd.DataFrame(
        {
            "step": [0, 1, 2],
            "env/reward_mean": [0.1, 0.5, 0.9],
            "objective/kl": [0.0, 0.2, 0.4],
            "env/toxicity_mean": [0.5, 0.3, 0.2],
        }
    )
    cfg = PromotionParams(bootstrap_samples=200, report_rows=2, min_prompts=1)
    metrics = compare(before, after, cfg, seed=0)
    paths = write_plots(before, after, history, tmp_path, metrics)
    assert {p.name for p in paths.values()} == set(PLOT_FILES.values())
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert set(write_plots(before, after, None, tmp_path / "no_history")) == {"rewards", "toxicity"}

    decision = decide(metrics, cfg)
    table = reward_diff_table(before, after)
    disagreed = disagreements(before, after)
    files = write_disagreements(disagreed, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(files["parquet"]), disagreed)
    reports = write_report(tmp_path / "reports", paths, metrics, decision, table, 2, "m", "oracle", disagreed)
    assert {k: p.name for k, p in reports.items()} == REPORT_FILES
    report = reports["md"].read_text()
    assert report == render_report(
        metrics, decision, table, 2, {k: f"../{p.name}" for k, p in paths.items()}, "m", "oracle", disagreed
    )
    assert f"**Promotion: {decision.decision}**, decided on the judge `oracle`" in report
    first_screen = report[: report.index("## Quality")]
    # each judge's numbers beside the reward model's, in the first screen
    assert (
        "| reward model (what PPO optimised: not independent) | 3 (50.0%) | 0 (0.0%) | 100.0% fewer |" in first_screen
    )
    assert "| judge `oracle` | 3 (50.0%) | 1 (16.7%) | 66.7% fewer |" in first_screen
    assert "| oracle | after | 0 | 1 | 0 | 5 | 83.3% |" in first_screen  # the reward-hacking counts
    assert "| oracle | glued xidiot | 0.1000 | 1.0000 | idiot in 'xidiot' |" in first_screen
    assert "Largest reward gains (top 2)" in report and "Largest reward losses (bottom 2)" in report
    assert markdown_table(table.head(2)[TABLE_COLUMNS]) in report
    # links relative to the report that reach the figures
    for key, path in paths.items():
        assert f"![{key}](../{path.name})" in report and (reports["md"].parent / f"../{path.name}").resolve() == path
    assert "heated dialogues (3): toxic summaries reward model 100.0% -> 0.0%, oracle 100.0% -> 33.3%" in report

    page = reports["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    # self-contained: every image embedded as a data URI, nothing loaded from a file or the network
    assert page.count('<img src="data:image/png;base64,') == len(paths)
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page and "url(" not in page and "@import" not in page
    embedded = sources[list(paths).index("training")]
    assert base64.b64decode(embedded.split(",", 1)[1]) == paths["training"].read_bytes()
    # markdown rendered: tables and headings are HTML, no markdown table row or escaped <br> is left
    assert (
        page.count("<table>") == len(re.findall(r"^\|---", report, re.M))
        and "<h2>Toxicity, judge by judge</h2>" in page
    )
    assert not re.search(r"^\|", page, re.M) and "&lt;br&gt;" not in page
    # the dialogues' line breaks in the gains/losses tables; their text is text, never a tag
    assert "<td>#Person1#: hi d<br>#Person2#: &lt;ho&gt; &amp; bye</td>" in page and "<ho>" not in page
    assert "| #Person1#: hi d<br>#Person2#: &lt;ho&gt; &amp; bye |" in report  # GitHub renders both the same
    assert "<td>judge <code>oracle</code></td>" in page
    again = write_report(tmp_path / "again", paths, metrics, decision, table, 2, "m", "oracle", disagreed)
    assert again["html"].read_bytes() == reports["html"].read_bytes()  # deterministic


def test_plot_data_files_have_the_declared_fields_and_are_deterministic(tmp_path):
    heated = {"heated": [True, False, True, False]}
    before = scored(
        list("aabb"),
        [1.0, -1.0, 2.0, 0.5],
        [0.9, 0.1, 0.8, 0.2],
        samples=[0, 1, 0, 1],
        judges={"oracle": [1, 0, 1, 0], "ngram": [0.7, 0.2, 0.6, 0.1]},
        extra=heated,
    )
    after = scored(
        list("aabb"),
        [2.0, -0.5, 2.0, 1.5],
        [0.1, 0.1, 0.6, 0.2],
        samples=[0, 1, 0, 1],
        judges={"oracle": [0, 0, 1, 0], "ngram": [0.3, 0.2, 0.9, 0.1]},
        extra=heated,
    )
    metrics = compare(before, after, PromotionParams(bootstrap_samples=100), seed=0)
    paths = write_plot_data(before, after, metrics, "ngram", tmp_path)
    assert {k: p.name for k, p in paths.items()} == PLOT_DATA
    samples = pd.read_csv(paths["samples"], sep="\t")
    assert list(samples.columns) == SAMPLE_FIELDS and len(samples) == 4  # one row per summary
    assert samples["id"].tolist() == list("aabb") and samples["sample"].tolist() == [0, 1, 0, 1]
    assert samples["group"].tolist() == ["heated", "calm", "heated", "calm"]
    assert samples["reward_diff"].tolist() == pytest.approx([1.0, 0.5, 0.0, 1.0])
    assert samples["toxicity_before"].tolist() == pytest.approx([0.9, 0.1, 0.8, 0.2])
    assert samples["judge_toxicity_after"].tolist() == pytest.approx([0.3, 0.2, 0.9, 0.1])  # the promotion judge's
    judges = pd.read_csv(paths["judges"], sep="\t")
    assert list(judges.columns) == JUDGE_FIELDS
    assert judges["label"].tolist() == [
        "reward_model before",
        "reward_model after",
        "oracle before",
        "oracle after",
        "ngram before",
        "ngram after",
    ]
    assert judges["role"].tolist() == ["trained against"] * 2 + ["judge"] * 2 + ["promotion judge"] * 2
    assert judges["toxic_share"].tolist() == pytest.approx([0.5, 0.25, 0.5, 0.25, 0.5, 0.25])
    assert judges["toxic_count"].tolist() == [2, 1, 2, 1, 2, 1] and set(judges["summaries"]) == {4}
    first = {k: p.read_bytes() for k, p in paths.items()}
    write_plot_data(before, after, metrics, "ngram", tmp_path)
    assert {k: p.read_bytes() for k, p in paths.items()} == first  # same inputs, same bytes
    assert b"\r" not in first["samples"] and first["samples"].endswith(b"\n")
    with pytest.raises(ValueError, match="judge 'nope'"):
        write_plot_data(before, after, metrics, "nope", tmp_path)


# --------------------------------------------------------------------------- MLflow: the registry


@pytest.fixture(scope="module")
def dialogues() -> list[str]:
    return tiny_corpus()["test"]["dialogue"].tolist()


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, dialogues):
    """A random tiny T5 and its tokenizer, exported as the pyfunc model's artifact folder."""
    model, tokenizer = tiny_t5(TEMPLATE)
    tokenizer.padding_side = "right"
    return (
        model,
        tokenizer,
        export_policy(model, tokenizer, tmp_path_factory.mktemp("policy"), TEMPLATE, GENERATION, EVAL_SEED),
    )


EVAL_PARAMS = {"eval": {"num_samples": 8, "seed": EVAL_SEED}, "promotion": {"judge": "oracle"}}


def evaluate_into(tracker, trained, before, after, model, root, name, params=EVAL_PARAMS):
    """One evaluation as the evaluate stage logs it: its own run, then the logging and the registry."""
    cfg = PromotionParams(bootstrap_samples=200, min_prompts=8)
    metrics = compare(before, after, cfg, 0)
    decision = decide(metrics, cfg, champion_evidence(MODEL_NAME), "t")
    metrics["promotion"] = decision.as_dict()
    report = root / name / "report.md"
    report.parent.mkdir()
    report.write_text(f"# report of {name}\n")
    with evaluation_run(tracker, trained, params, tags={"dvc.lock.ppo": "0123456789ab"}):
        record = EvaluationRecord(
            metrics,
            {"reward_mean": 0.0},
            tables={
                "evaluate/reward_diff.json": reward_diff_table(before, after),
                "evaluate/disagreements.json": disagreements(before, after),
            },
            artifacts={"evaluate": [report]},
            timings={"evaluate": {"samples_per_second": 5.0}},
        )
        registered = log_evaluation(
            tracker,
            record,
            Registration(model, MODEL_NAME, decision.promoted, decision.reasons, evidence(metrics, cfg, "t")),
        )
    return registered, decision, metrics, tracker.run_id


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_policy, dialogues):
    """A PPO run, then three evaluations in a fresh SQLite store: the first promoted, the second of a run
    this store does not have, the third of the same PPO run again, with other data; and snapshots of
    the PPO run and the first evaluation taken before the later ones."""
    root = tmp_path_factory.mktemp("mlflow")
    patch = pytest.MonkeyPatch()
    patch.chdir(root)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    previous_uri = mlflow.get_tracking_uri()
    try:
        patch.delenv("DVC_EXP_NAME", raising=False)
        training = Tracker("detox-test")
        with training.run("ppo", params={"ppo": {"steps": 2}}):
            training.set_tags({"lineage.sft.model": "detox-sft/1"})
            for step in range(2):
                training.log_metrics({"env/reward_mean": 1.0 + step}, step=step)
            (root / "history.tsv").write_text("step\n0\n1\n")
            training.log_artifact(root / "history.tsv", "ppo")
        (root / "ppo").mkdir()
        (root / "ppo" / RUN_FILE).write_text(json.dumps(training.record()))
        run = read_run_record(root / "ppo")
        client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
        ppo_before = run_snapshot(client, run["run_id"])

        config = model_config(TEMPLATE, GENERATION, EVAL_SEED)
        model = PolicyModel(
            Summarizer(),
            tiny_policy[2],
            config,
            signature(config),
            pd.DataFrame({"dialogue": dialogues[:1]}),
            description="the test policy",
            version_description="evaluated on 8 crafted dialogues",
        )
        ids = [f"p{i}" for i in range(8)]
        before = scored(ids, [0.0] * 8, [0.9] * 8, judges={"oracle": [1.0] * 8})
        good = scored(ids, [1.0, 1.2, 0.9, 1.1] * 2, [0.1] * 8, judges={"oracle": [0.0] * 8})
        bad = scored(ids, [-1.0] * 8, [0.95] * 8, judges={"oracle": [1.0] * 8})
        # better than the baseline by every number, but the oracle finds more insults than in the champion's
        worse = scored(ids, [1.0] * 8, [0.1] * 8, judges={"oracle": [0.0] * 6 + [1.0] * 2})
        results = [evaluate_into(Tracker("detox-test"), run, before, good, model, root, "first")]
        first_before = run_snapshot(client, results[0][3])
        results.append(
            evaluate_into(
                Tracker("detox-test"),
                {"run_id": "0" * 32, "experiment": "detox-test"},
                before,
                bad,
                model,
                root,
                "second",
            )
        )
        results.append(
            evaluate_into(
                Tracker("detox-test"),
                run,
                before,
                worse,
                model,
                root,
                "third",
                params={**EVAL_PARAMS, "eval": {"num_samples": 6, "seed": 7}},
            )
        )
        yield {
            "root": root,
            "run_id": run["run_id"],
            "results": results,
            "client": client,
            "ppo_before": ppo_before,
            "first_before": first_before,
        }
    finally:
        mlflow.set_tracking_uri(previous_uri)
        patch.undo()


def test_registry_versions_aliases_and_promotion_tags(registry):
    client = registry["client"]
    (first, first_decision, *_), (second, second_decision, *_), (third, third_decision, *_) = registry["results"]
    assert (first.version, second.version, third.version) == ("1", "2", "3")
    assert first_decision.promoted and not second_decision.promoted and not third_decision.promoted
    assert first.aliases == (CANDIDATE, CHAMPION) and second.aliases == (CANDIDATE,) and third.aliases == (CANDIDATE,)
    assert str(client.get_model_version_by_alias(MODEL_NAME, CANDIDATE).version) == "3"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"  # a rejected one never takes it
    tags_1, tags_2 = client.get_model_version(MODEL_NAME, "1").tags, client.get_model_version(MODEL_NAME, "2").tags
    assert tags_1["promotion.decision"] == "promoted"
    assert tags_2["promotion.decision"] == "rejected"
    assert (
        "fail: oracle: mean toxicity 1.0000 -> 1.0000, fell by 0.0% (at least 50% required)"
        in tags_2["promotion.reasons"]
    )
    assert "pass:" not in tags_2["promotion.reasons"]
    # the judged numbers travel with the version as plain text, and the champion's decide the third candidate
    assert tags_1["evidence.judge"] == "oracle" and tags_1["evidence.test_sha"] == "t"
    assert float(tags_1["evidence.judge_toxicity"]) == 0.0 and tags_1["evidence.n"] == "8"
    assert champion_evidence(MODEL_NAME)["version"] == "1"
    assert [c.name for c in third_decision.checks if not c.passed] == ["champion"]
    assert "champion keeps the alias" in client.get_model_version(MODEL_NAME, "3").tags["promotion.reasons"]
    # the registered model says what it is (once: a description edited in the UI stays), each version its own
    assert client.get_registered_model(MODEL_NAME).description == "the test policy"
    assert client.get_model_version(MODEL_NAME, "3").description == "evaluated on 8 crafted dialogues"


def test_evidence_tags_of_older_versions_are_read_as_they_were_written():
    from detox.tracking.registry import evidence_tag, evidence_value

    assert evidence_value('"oracle"') == "oracle" and evidence_value("null") is None  # JSON, as tagged before
    assert evidence_value(evidence_tag("oracle")) == "oracle" and float(evidence_value(evidence_tag(0.25))) == 0.25


def test_each_evaluation_is_a_run_of_its_own_linked_to_the_ppo_run(registry):
    client = registry["client"]
    metrics, run_id = registry["results"][0][2], registry["results"][0][3]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate · workspace"
    assert run_id != registry["run_id"]
    # a child of the PPO run (MLflow's parent-run link), and named by it
    assert run.data.tags["mlflow.parentRunId"] == registry["run_id"] == run.data.tags["ppo.run_id"]
    assert run.data.tags["lineage.sft.model"] == "detox-sft/1" and run.data.tags["dvc.lock.ppo"] == "0123456789ab"
    assert run.data.tags["stage"] == "evaluate" and run.data.tags["evaluate.promotion"] == "promoted"
    assert run.data.tags["evaluate.model_version"] == "1"
    assert run.data.params["eval.num_samples"] == "8" and run.data.params["promotion.judge"] == "oracle"
    # A few judged numbers, one chart section per source; all of them in the artifact evaluate/evaluate.json.
    assert run.data.metrics["results/oracle/improvement_pct"] == pytest.approx(100.0)
    assert run.data.metrics["results/oracle/toxic_share_after"] == 0.0
    assert run.data.metrics["results/reward_model/toxicity_mean_before"] == pytest.approx(0.9)
    assert run.data.metrics["results/quality/reward_mean_after"] == pytest.approx(metrics["after"]["reward_mean"])
    assert run.data.metrics["results/promotion/n_dialogues"] == 8
    assert run.data.metrics["timing/evaluate.samples_per_second"] == 5.0
    assert not [k for k in run.data.metrics if k.startswith(("evaluate/", "baseline/", "env/"))]
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluate")}
    assert {"evaluate/reward_diff.json", "evaluate/disagreements.json", "evaluate/report.md"} <= artifacts
    logged = json.loads(
        Path(client.download_artifacts(run_id, "evaluate/reward_diff.json", str(registry["root"]))).read_text()
    )
    assert logged["columns"][:6] == TABLE_COLUMNS and len(logged["data"]) == 8
    assert {"reference", "group", "reward_model_toxicity_before", "oracle_toxicity_after"} <= set(logged["columns"])
    full = json.loads(
        Path(client.download_artifacts(run_id, "evaluate/evaluate.json", str(registry["root"]))).read_text()
    )
    assert full["reward_diff"]["mean"] == pytest.approx(metrics["reward_diff"]["mean"])
    baseline = json.loads(
        Path(client.download_artifacts(run_id, "evaluate/baseline.json", str(registry["root"]))).read_text()
    )
    assert baseline == {"reward_mean": 0.0}
    # The registered version's source is this run's model, which carries the judged numbers, no timings.
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == run_id
    assert version.tags["ppo.run_id"] == registry["run_id"] and version.tags["lineage.sft.model"] == "detox-sft/1"
    logged_model = client.get_logged_model(version.source.removeprefix("models:/"))
    model_metrics = {m.key: m.value for m in logged_model.metrics}
    assert model_metrics["results/oracle/toxic_share_after"] == 0.0
    assert not [key for key in model_metrics if not key.startswith("results/")]
    assert logged_model.params["eval.num_samples"] == "8"
    # MLflow opens the experiment as a machine-learning one, not on its GenAI overview.
    assert client.get_experiment_by_name("detox-test").tags["mlflow.experimentKind"] == "custom_model_development"


def test_later_evaluations_leave_the_ppo_run_and_the_first_evaluation_as_they_were(registry):
    client = registry["client"]
    assert run_snapshot(client, registry["run_id"]) == registry["ppo_before"]
    assert run_snapshot(client, registry["results"][0][3]) == registry["first_before"]
    # the PPO run holds only what the ppo stage logged: no evaluation's params, metrics, tables or model
    ppo = registry["ppo_before"]
    assert set(ppo["artifacts"]) == {"ppo/history.tsv"} and not ppo["models"]
    assert set(ppo["metrics"]) == {"env/reward_mean"} and set(ppo["params"]) == {"ppo.steps"}
    # the third evaluation, of the same PPO run on other data, has a run, a table and numbers of its own
    third = client.get_run(registry["results"][2][3])
    assert third.data.tags["mlflow.parentRunId"] == registry["run_id"]
    assert third.data.params["eval.num_samples"] == "6"
    table = json.loads(
        Path(
            client.download_artifacts(third.info.run_id, "evaluate/reward_diff.json", str(registry["root"] / "third"))
        ).read_text()
    )
    assert len(table["data"]) == 8  # not appended to the first evaluation's
    models = client.search_logged_models([third.info.experiment_id], f"source_run_id = '{third.info.run_id}'")
    [third_model] = models
    third_metrics = {m.key: m.value for m in third_model.metrics}
    assert third_metrics["results/oracle/toxic_share_after"] == pytest.approx(0.25)
    assert len(third_model.metrics) == len(third_metrics), "one value per metric: no earlier evaluation's"


def test_a_record_naming_a_run_this_store_lacks_gets_an_evaluation_run_without_a_parent(registry):
    client = registry["client"]
    other = client.get_run(client.get_model_version(MODEL_NAME, "2").run_id)
    assert other.info.run_name == "evaluate · workspace" and other.data.tags["ppo.run_id"] == "0" * 32
    assert "mlflow.parentRunId" not in other.data.tags


def test_a_failed_evaluation_ends_its_run_failed_and_registers_nothing(registry, tmp_path):
    client = registry["client"]
    config = model_config(TEMPLATE, GENERATION, EVAL_SEED)
    broken = PolicyModel(Summarizer(), tmp_path / "no-such-policy", config, signature(config))
    tracker = Tracker("detox-test")
    with pytest.raises(Exception):  # noqa: B017 - whichever error loading a missing policy folder raises
        with evaluation_run(tracker, {"run_id": registry["run_id"], "experiment": "detox-test"}, EVAL_PARAMS):
            record = EvaluationRecord({"n": 1}, {}, tables={"evaluate/t.json": pd.DataFrame({"a": [1]})})
            log_evaluation(tracker, record, Registration(broken, MODEL_NAME, True, ["pass: x"]))
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert not client.search_logged_models([run.info.experiment_id], f"source_run_id = '{tracker.run_id}'")
    assert client.get_run(registry["run_id"]).info.status == "FINISHED"
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")) == [1, 2, 3]
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"


# --------------------------------------------------------------------------- the stage


def test_the_look_of_the_report_and_the_statistics_rerun_only_the_evaluate_stage():
    """The baseline and ppo stages import no styling, report, table, figure, statistics or promotion module."""
    from test_pipeline import closure

    evaluate_only = {
        f"src/detox/evaluate/{name}.py" for name in ("pages", "report", "tables", "figures", "statistics", "promotion")
    }
    assert evaluate_only <= closure(ROOT / "stages" / "evaluate.py")
    for stage in ("baseline", "ppo", "sft", "reward"):
        assert not closure(ROOT / "stages" / f"{stage}.py") & evaluate_only, stage
    assert "src/detox/evaluate/scoring.py" not in closure(ROOT / "stages" / "ppo.py")


def test_stage_without_a_trained_policy_says_to_run_ppo(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "validation.json").write_text('{"success": true}')
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "evaluate.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: evaluate cannot start, its inputs are missing: ")
    assert "models/ppo/ppo_policy.json (made by ppo)" in message and "` first, or `dvc repro evaluate`" in message
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "metrics").iterdir()] == ["validation.json"]
    assert not (tmp_path / "reports").exists()


def test_embedded_store_lives_at_the_dvc_project_root(tmp_path, monkeypatch):
    """`dvc exp run --temp` runs stages in a scratch copy but sets DVC_ROOT to the real project."""
    from detox.tracking.store import artifact_location, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifact_location("exp") == (tmp_path / "mlartifacts" / "exp").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000" and artifact_location("exp") is None
