"""The evaluate stage's library: paired statistics, the reward diff table, the promotion gate,
reports and plots, the MLflow registry, and the pyfunc model (loaded and served).

The statistics are checked on numbers worked out by hand. The registry and the pyfunc
model run against a temporary SQLite store with a tiny random T5 (nothing trained but
its SentencePiece tokenizer, well under a second).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from detox.builtin.corpus import generate_corpus
from detox.builtin.models import train_t5_tokenizer
from detox.comparison import (
    TABLE_COLUMNS, bootstrap_ci, check_paired, compare, decide, improvement_pct, paired_tests, reward_diff_table,
)
from detox.errors import DetoxError
from detox.generation import build_prompts, generate_summaries
from detox.params import BuiltinCorpus, GenerationParams, PromotionParams, PromptParams
from detox.report import (
    PLOT_FILES, escape_cell, html_table, markdown_table, render_report, write_plots, write_reward_diff,
)
from detox.serving import Summarizer, export_policy, model_config, signature
from detox.tracking import CANDIDATE, CHAMPION, RUN_FILE, PolicyModel, Tracker, log_evaluation, read_run_record

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = PromptParams().template
GENERATION = GenerationParams(max_new_tokens=8, batch_size=2)
EVAL_SEED = 1234
MODEL_NAME = "detox-test-summarizer"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine they make generation far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scored(ids, rewards, toxicity, rouge_l=None, responses=None, dialogues=None) -> pd.DataFrame:
    """A frame shaped like score_policy's output."""
    n = len(ids)
    rouge_l = rouge_l if rouge_l is not None else [0.5] * n
    return pd.DataFrame({
        "id": ids,
        "dialogue": dialogues or [f"#Person1#: dialogue {i}" for i in ids],
        "reference": [f"reference {i}" for i in ids],
        "response": responses or [f"response {i}" for i in ids],
        "reward": np.asarray(rewards, dtype=np.float32),
        "toxicity": np.asarray(toxicity, dtype=np.float32),
        "rouge1": rouge_l, "rouge2": rouge_l, "rougeL": rouge_l,
    })


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
    before = scored(["a", "b", "c", "d"], [1.0, 2.0, -1.0, 0.0], [0.1, 0.9, 0.8, 0.2], [0.6, 0.6, 0.4, 0.4])
    after = scored(["a", "b", "c", "d"], [2.0, 3.0, 1.0, 2.0], [0.05, 0.3, 0.4, 0.05], [0.5, 0.5, 0.4, 0.4])
    metrics = compare(before, after, PromotionParams(bootstrap_samples=200), seed=0)
    assert metrics["n"] == 4
    assert metrics["before"]["toxicity_mean"] == pytest.approx(0.5)
    assert metrics["after"]["toxicity_mean"] == pytest.approx(0.2)
    assert metrics["improvement_pct"]["toxicity_mean"] == pytest.approx(60.0)  # (0.5 - 0.2) / 0.5
    std_before, std_after = np.std([0.1, 0.9, 0.8, 0.2], ddof=1), np.std([0.05, 0.3, 0.4, 0.05], ddof=1)
    assert metrics["improvement_pct"]["toxicity_std"] == pytest.approx((std_before - std_after) / std_before * 100,
                                                                      rel=1e-5)
    assert (metrics["before"]["toxic_share"], metrics["after"]["toxic_share"]) == (0.5, 0.0)
    assert metrics["rouge_drop"]["rougeL"] == pytest.approx(0.05)
    diff = metrics["reward_diff"]  # diffs 1, 1, 2, 2
    assert diff["mean"] == pytest.approx(1.5)
    assert 1.0 <= diff["ci_low"] <= 1.5 <= diff["ci_high"] <= 2.0
    assert diff["increased_share"] == 1.0 and diff["decreased_share"] == 0.0
    assert metrics["toxicity_diff"]["mean"] == pytest.approx(-0.3)
    noise = compare(before, after.assign(reward=before["reward"] + np.float32(2e-5)), PromotionParams(), seed=0)
    assert noise["reward_diff"]["increased_share"] == 0.0  # float32 scoring noise is no change
    json.dumps(metrics, allow_nan=False)  # valid JSON for DVC


def test_a_stale_baseline_is_refused_with_the_fix():
    evaluated = scored(["a", "b", "c"], [0, 0, 0], [0, 0, 0])
    with pytest.raises(DetoxError, match=r"stale: 1 of 3 rows.*row 1: id 'x' vs 'b'.*dvc repro baseline"):
        check_paired(scored(["a", "x", "c"], [0, 0, 0], [0, 0, 0]), evaluated)
    with pytest.raises(DetoxError, match=r"2 scored rows but 3 test rows.*dvc repro baseline"):
        check_paired(scored(["a", "b"], [0, 0], [0, 0]), evaluated)
    regenerated = scored(["a", "b", "c"], [0, 0, 0], [0, 0, 0], dialogues=["same", "other", "text"])
    with pytest.raises(DetoxError, match="stale"):  # same ids, other dialogues: data was regenerated
        check_paired(regenerated, evaluated)


# --------------------------------------------------------------------------- promotion gate


def gate_metrics(toxicity_after: float, rouge_after: float, rewards_after: list[float]) -> dict:
    before = scored(list("abcdefgh"), [0.0] * 8, [0.4] * 8, [0.6] * 8)
    after = scored(list("abcdefgh"), rewards_after, [toxicity_after] * 8, [rouge_after] * 8)
    return compare(before, after, PromotionParams(bootstrap_samples=500), seed=0)


def test_gate_promotes_a_clear_improvement():
    decision = decide(gate_metrics(0.1, 0.58, [1.0, 1.5, 2.0, 1.0, 1.2, 0.8, 1.1, 1.3]), PromotionParams())
    assert decision.promoted and decision.decision == "promoted"
    assert [c.name for c in decision.checks] == ["toxicity_improvement", "rougeL_drop", "reward_significant"]
    assert len(decision.reasons) == 3 and all(r.startswith("pass: ") for r in decision.reasons)
    assert "75.0%" in decision.reasons[0]  # (0.4 - 0.1) / 0.4


def test_gate_refuses_a_toxicity_regression_and_says_why():
    decision = decide(gate_metrics(0.6, 0.6, [1.0] * 8), PromotionParams())
    assert not decision.promoted and decision.decision == "rejected"
    assert decision.reasons == ["fail: mean toxicity fell by -50.0% (at least 50% required)"]
    assert decision.as_dict()["checks"]["toxicity_improvement"]["passed"] is False


def test_gate_refuses_a_rouge_drop_and_an_insignificant_reward():
    decision = decide(gate_metrics(0.1, 0.5, [1.0, -1.0] * 4), PromotionParams())
    failed = {c.name for c in decision.checks if not c.passed}
    assert failed == {"rougeL_drop", "reward_significant"}
    assert any("ROUGE-L 0.6000 -> 0.5000" in r for r in decision.reasons)
    assert any("does not lie above 0" in r for r in decision.reasons)
    relaxed = decide(gate_metrics(0.1, 0.5, [1.0, -1.0] * 4), PromotionParams(max_rougeL_drop=0.2,
                                                                                require_significant=False))
    assert relaxed.promoted and [c.name for c in relaxed.checks] == ["toxicity_improvement", "rougeL_drop"]


def test_gate_without_baseline_toxicity_rejects():
    before = scored(["a", "b"], [0, 0], [0, 0])
    decision = decide(compare(before, before, PromotionParams(bootstrap_samples=100), 0), PromotionParams())
    assert not decision.promoted and "no toxicity to improve on" in decision.reasons[0]


# --------------------------------------------------------------------------- table and report


def test_reward_diff_table_columns_order_and_sorting():
    before = scored(["a", "b", "c", "d"], [1.0, 2.0, 0.5, 3.0], [0] * 4, responses=["ba", "bb", "bc", "bd"])
    after = scored(["a", "b", "c", "d"], [1.5, 1.0, 3.5, 3.0], [0] * 4, responses=["aa", "ab", "ac", "ad"])
    table = reward_diff_table(before, after)
    assert list(table.columns) == TABLE_COLUMNS == ["dialogue", "response_before", "response_after",
                                                    "reward_before", "reward_after", "reward_diff"]
    assert table["reward_diff"].tolist() == pytest.approx([3.0, 0.5, 0.0, -1.0])
    # each row keeps its own pair together
    assert table["response_before"].tolist() == ["bc", "ba", "bd", "bb"]
    assert table["response_after"].tolist() == ["ac", "aa", "ad", "ab"]
    assert table["dialogue"].tolist() == [f"#Person1#: dialogue {i}" for i in "cadb"]
    assert (table["reward_after"] - table["reward_before"]).tolist() == pytest.approx(table["reward_diff"].tolist())


def test_markdown_escapes_pipes_and_line_breaks():
    assert escape_cell("a | b\nc\r\nd") == "a \\| b<br>c<br>d"
    assert escape_cell(0.123456) == "0.1235"
    frame = pd.DataFrame({"dialogue": ["#Person1#: x | y\n#Person2#: z"], "reward_diff": [1.0]})
    lines = markdown_table(frame).splitlines()
    assert lines == ["| dialogue | reward_diff |", "|---|---|",
                     "| #Person1#: x \\| y<br>#Person2#: z | 1.0000 |"]
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
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="columns"):
        write_reward_diff(table.drop(columns="dialogue"), tmp_path)


def test_plots_and_report(tmp_path):
    before = scored(list("abcdef"), [0, 1, 2, -1, 3, 0], [0.9, 0.1, 0.2, 0.95, 0.05, 0.6])
    after = scored(list("abcdef"), [2, 1, 3, 1, 3, 2], [0.1, 0.1, 0.1, 0.3, 0.05, 0.2])
    after["heated"] = [True, False, False, True, False, True]
    before["heated"] = after["heated"]
    history = pd.DataFrame({"step": [0, 1, 2], "env/reward_mean": [0.1, 0.5, 0.9], "objective/kl": [0.0, 0.2, 0.4],
                            "env/toxicity_mean": [0.5, 0.3, 0.2]})
    paths = write_plots(before, after, history, tmp_path)
    assert {p.name for p in paths.values()} == set(PLOT_FILES.values())
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert set(write_plots(before, after, None, tmp_path / "no_history")) == {"rewards", "toxicity"}

    cfg = PromotionParams(bootstrap_samples=200, report_rows=2)
    metrics = compare(before, after, cfg, seed=0)
    decision = decide(metrics, cfg)
    table = reward_diff_table(before, after)
    report = render_report(metrics, decision, table, 2, {k: f"../plots/{p.name}" for k, p in paths.items()}, "m")
    assert f"**Promotion: {decision.decision}**" in report
    assert f"| toxicity mean | {metrics['before']['toxicity_mean']:.4f} | {metrics['after']['toxicity_mean']:.4f}" \
        in report
    assert "Largest reward gains (top 2)" in report and "Largest reward losses (bottom 2)" in report
    assert markdown_table(table.head(2)) in report and markdown_table(table.tail(2)) in report
    assert "![training](../plots/ppo_training.png)" in report
    assert "heated dialogues (3)" in report


# --------------------------------------------------------------------------- MLflow: registry and pyfunc model


@pytest.fixture(scope="module")
def dialogues() -> list[str]:
    corpus = generate_corpus(BuiltinCorpus(train_size=30, validation_size=5, test_size=5, num_topics=4), 3)
    return corpus["test"]["dialogue"].tolist()


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, dialogues):
    """A random tiny T5 and its tokenizer, exported as the pyfunc model's artifact folder."""
    corpus = generate_corpus(BuiltinCorpus(train_size=30, validation_size=5, test_size=5, num_topics=4), 3)
    texts = [TEMPLATE.format(dialogue="")] + corpus["train"]["dialogue"].tolist() + corpus["train"]["summary"].tolist()
    tokenizer, _ = train_t5_tokenizer(texts, 250)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=2, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config).eval()
    tokenizer.padding_side = "right"
    return model, tokenizer, export_policy(model, tokenizer, tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_policy, dialogues):
    """Two evaluations logged and registered in a fresh SQLite store: the first promoted, the second not."""
    root = tmp_path_factory.mktemp("mlflow")
    patch = pytest.MonkeyPatch()
    patch.chdir(root)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    previous_uri = mlflow.get_tracking_uri()
    try:
        training = Tracker("detox-test")
        training.start(tags={"stage": "ppo"})
        training.log_metrics({"env/reward_mean": 1.0}, step=0)
        (root / "ppo").mkdir()
        (root / "ppo" / RUN_FILE).write_text(json.dumps(training.record()))
        training.end()
        run = read_run_record(root / "ppo")

        config = model_config(TEMPLATE, GENERATION, EVAL_SEED)
        model = PolicyModel(Summarizer(), tiny_policy[2], config, signature(config),
                            pd.DataFrame({"dialogue": dialogues[:1]}))
        before = scored(list("abcd"), [0.0] * 4, [0.4] * 4)
        good = scored(list("abcd"), [1.0, 1.2, 0.9, 1.1], [0.1] * 4)
        bad = scored(list("abcd"), [-1.0] * 4, [0.6] * 4)
        cfg = PromotionParams(bootstrap_samples=200)
        results = []
        for after, run_record in ((good, run), (bad, {"run_id": "0" * 32, "experiment": "detox-test"})):
            metrics = compare(before, after, cfg, 0)
            decision = decide(metrics, cfg)
            table = reward_diff_table(before, after)
            report = root / "report.md"
            report.write_text("# report\n")
            registered = log_evaluation(run_record, "detox-test", metrics, {"reward_mean": 0.0}, table,
                                        {"evaluate": [report]}, model, MODEL_NAME, decision.promoted,
                                        decision.reasons)
            results.append((registered, decision, metrics))
        yield {"root": root, "run_id": run["run_id"], "results": results,
               "client": mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")}
    finally:
        mlflow.set_tracking_uri(previous_uri)
        patch.undo()


def test_registry_versions_aliases_and_promotion_tags(registry):
    client = registry["client"]
    (first, first_decision, _), (second, second_decision, _) = registry["results"]
    assert (first.version, second.version) == ("1", "2")
    assert first_decision.promoted and not second_decision.promoted
    assert first.aliases == (CANDIDATE, CHAMPION) and second.aliases == (CANDIDATE,)
    assert str(client.get_model_version_by_alias(MODEL_NAME, CANDIDATE).version) == "2"
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"  # a rejected one never takes it
    tags_1, tags_2 = client.get_model_version(MODEL_NAME, "1").tags, client.get_model_version(MODEL_NAME, "2").tags
    assert tags_1["promotion.decision"] == "promoted"
    assert tags_2["promotion.decision"] == "rejected"
    assert "fail: mean toxicity fell by -50.0% (at least 50% required)" in tags_2["promotion.reasons"]
    assert "pass:" not in tags_2["promotion.reasons"]


def test_evaluation_is_logged_into_the_training_run(registry):
    client = registry["client"]
    run = client.get_run(registry["run_id"])
    metrics = registry["results"][0][2]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["evaluate/reward_diff.mean"] == pytest.approx(metrics["reward_diff"]["mean"])
    assert run.data.metrics["evaluate/improvement_pct.toxicity_mean"] == pytest.approx(75.0)
    assert run.data.metrics["baseline/reward_mean"] == 0.0
    assert "env/reward_mean" in run.data.metrics  # the training run's own metrics are still there
    assert run.data.tags["evaluate.promotion"] == "promoted"
    assert run.data.tags["evaluate.model_version"] == "1"
    assert run.data.tags["evaluate.status"] == "finished"  # (the failure test below runs later)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}
    assert {"evaluate/reward_diff.json", "evaluate/report.md"} <= artifacts
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluate/reward_diff.json",
                                                       str(registry["root"]))).read_text())
    assert logged["columns"] == TABLE_COLUMNS
    # a run record naming a run this store does not have: a new run, tagged with the missing id
    version_2 = client.get_model_version(MODEL_NAME, "2")
    other = client.get_run(version_2.run_id)
    assert other.info.run_id != run.info.run_id and other.data.tags["ppo_run_id"] == "0" * 32


def test_a_failed_evaluation_leaves_the_training_run_finished_and_registers_nothing(registry, tmp_path):
    client = registry["client"]
    config = model_config(TEMPLATE, GENERATION, EVAL_SEED)
    broken = PolicyModel(Summarizer(), tmp_path / "no-such-policy", config, signature(config))
    metrics = {"n": 1}
    with pytest.raises(Exception):
        log_evaluation({"run_id": registry["run_id"], "experiment": "detox-test"}, "detox-test", metrics, {},
                       pd.DataFrame({"a": [1]}), {}, broken, MODEL_NAME, True, ["pass: x"])
    run = client.get_run(registry["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["evaluate.status"] == "failed"
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")) == [1, 2]
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == "1"


def test_pyfunc_model_summarizes_a_dialogue_dataframe(registry, tiny_policy, dialogues):
    model, tokenizer, _ = tiny_policy
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    frame = pd.DataFrame({"dialogue": dialogues[:3]})
    summaries = loaded.predict(frame)
    expected = generate_summaries(model, tokenizer, build_prompts(dialogues[:3], TEMPLATE), GENERATION, EVAL_SEED)
    assert summaries == expected  # the same summaries as the evaluate stage generates
    assert len(summaries) == 3 and all(isinstance(s, str) and s for s in summaries)
    assert loaded.predict(dialogues[:3]) == expected  # a plain list of strings works too
    greedy = loaded.predict(frame, params={"do_sample": False})
    assert greedy == generate_summaries(model, tokenizer, build_prompts(dialogues[:3], TEMPLATE),
                                        GENERATION.model_copy(update={"do_sample": False}), 0)
    assert loaded.predict(frame, params={"seed": 7}) != summaries
    with_ids = pd.DataFrame({"id": ["x", "y", "z"], "dialogue": dialogues[:3]})
    assert loaded.predict(with_ids) == expected  # the dialogue column is found by name
    with pytest.raises(Exception, match="'dialogue' column"):
        loaded.predict(pd.DataFrame({"id": ["x"], "text": ["hello"]}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registry, tiny_policy, dialogues):
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # the scoring server (uvicorn) lives beside this Python
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{registry['root']}/mlflow.db", "OMP_NUM_THREADS": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = bin_dir / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{MODEL_NAME}/1", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=registry["root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not come up: {server.stderr.read().decode()[-2000:]}"
                            if server.poll() is not None else "mlflow models serve did not come up in 60 s")
            time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"dialogue": d} for d in dialogues[:2]]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
        model, tokenizer, _ = tiny_policy
        assert predictions == generate_summaries(model, tokenizer, build_prompts(dialogues[:2], TEMPLATE),
                                                 GENERATION, EVAL_SEED)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=20)


# --------------------------------------------------------------------------- the stage


def test_stage_without_a_trained_policy_says_to_run_ppo(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "models/ppo/ppo_policy.json: not found; run `dvc repro ppo`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "reports").exists()


def test_embedded_store_lives_at_the_dvc_project_root(tmp_path, monkeypatch):
    """`dvc exp run --temp` runs stages in a scratch copy but sets DVC_ROOT to the real project."""
    from detox.tracking import _artifact_location, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert _artifact_location("exp") == (tmp_path / "mlartifacts" / "exp").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000" and _artifact_location("exp") is None
