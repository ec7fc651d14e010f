"""The training stages `sft` and `reward`: their library, their scripts, MLflow and the lineage to PPO."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from conftest import HANG_S, TINY, tiny_params
from detox.common.errors import SourceError
from detox.common.io import sha256_tree
from detox.data.fetch import run_fetch
from detox.data.sentences import labelled_sentences
from detox.data.validation.failures import format_failures
from detox.data.validation.inputs import read_labelled
from detox.data.validation.run import validate_dir
from detox.models.check import has_weights
from detox.models.reward_training import classifier_metrics, expected_calibration_error, run_reward
from detox.models.sft import run_sft
from detox.models.training import Schedule, fit
from test_judges import tiny_classifier

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- metrics on known numbers


def test_classifier_metrics_on_a_known_confusion_matrix():
    id2label = {0: "nothate", 1: "hate"}
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p_hate = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.1, 0.4])
    probs = np.stack([1 - p_hate, p_hate], axis=1)
    metrics, curves = classifier_metrics(labels, probs, id2label, toxic_id=1)
    assert metrics["confusion"] == {"true_positive": 2, "false_positive": 1, "true_negative": 4, "false_negative": 1}
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["per_class"]["hate"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert metrics["per_class"]["nothate"] == pytest.approx(
        {"precision": 4 / 5, "recall": 4 / 5, "f1": 4 / 5, "support": 5}
    )
    # ROC-AUC: of the 15 (toxic, clean) pairs, the toxic text scores higher in 13 (0.3 < 0.6 and 0.3 < 0.4)
    assert metrics["roc_auc"] == pytest.approx(13 / 15)
    assert metrics["brier"] == pytest.approx(np.mean((p_hate - labels) ** 2))
    assert list(curves["roc"].columns) == ["fpr", "tpr", "threshold"]
    assert curves["roc"]["tpr"].iloc[-1] == 1.0 and curves["roc"]["fpr"].iloc[-1] == 1.0
    assert curves["calibration"]["count"].sum() == 8
    assert curves["predictions"].values.tolist()[0] == ["hate", "hate"]
    assert curves["predictions"].values.tolist()[3] == ["nothate", "hate"]


def test_expected_calibration_error():
    truth = np.array([1, 0, 1, 0])
    assert expected_calibration_error(truth, np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.5)
    assert expected_calibration_error(truth, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)
    # two bins: [0.95, 0.95] observed 1.0 -> gap 0.05; [0.05, 0.05] observed 0.0 -> gap 0.05
    assert expected_calibration_error(np.array([1, 1, 0, 0]), np.array([0.95, 0.95, 0.05, 0.05])) == pytest.approx(0.05)


class _MeanLength(torch.nn.Module):
    """The smallest model ``fit`` can train: one weight pulled towards each batch's mean length."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, lengths: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": ((self.weight - lengths.float().mean()) ** 2).sum()}


@pytest.mark.parametrize("grouped", [False, True])
def test_group_by_length_batches_examples_of_similar_length(grouped):
    lengths = [1 + (i * 37) % 64 for i in range(512)]  # each length 1..64 eight times, in a scrambled order
    train = [{"input_ids": [0] * n, "labels": [0]} for n in lengths]
    seen: list[list[int]] = []

    def collate(rows):
        seen.append([len(row["input_ids"]) for row in rows])
        return {"lengths": torch.tensor(seen[-1]), "labels": torch.zeros(len(rows))}

    schedule = Schedule(epochs=1, batch_size=8, learning_rate=0.1, group_by_length=grouped)
    fit(_MeanLength(), train, collate, schedule, seed=0)
    assert sorted(n for batch in seen for n in batch) == sorted(lengths)  # every example once, grouped or not
    spread = np.mean([max(batch) - min(batch) for batch in seen])
    # random batches of 8 from 1..64 span about 50 lengths; grouped ones (sorted megabatches of 128) a few
    assert spread < 10 if grouped else spread > 35


# --------------------------------------------------------------------------- the library on a tiny world


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_world")
    run_fetch(tiny_params(), root / "data" / "raw", root / "data" / "labelled", root / "models" / "base")
    return root


def test_builtin_sft_trains_from_scratch_and_records_each_epoch(fetched, tmp_path):
    params = tiny_params(**{"sft.epochs": 2})
    result = run_sft(params, fetched / "models" / "base" / "policy", fetched / "data" / "raw", tmp_path)
    assert result.trained and has_weights(tmp_path)
    assert [row["epoch"] for row in result.fit.history] == [1, 2]
    for row in result.fit.history:
        assert set(row) == {"epoch", "train_loss", "eval_loss", "eval_rougeL"}
    assert result.fit.history[1]["train_loss"] < result.fit.history[0]["train_loss"]
    assert result.metrics["validation_loss"] == result.fit.history[-1]["eval_loss"]
    assert result.metrics["rouge_dialogues"] == 8
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert model.config.model_type == "t5" and model.generation_config.max_new_tokens == params.sft.max_target_tokens
    AutoTokenizer.from_pretrained(tmp_path)


def test_sft_hands_group_by_length_to_the_training_loop(fetched, tmp_path, monkeypatch):
    seen = []

    def fake_fit(model, train, collator, schedule, *args, **kwargs):
        seen.append(schedule)
        raise RuntimeError("stop after the schedule")

    monkeypatch.setattr("detox.models.sft.fit", fake_fit)
    for grouped in (True, False):
        params = tiny_params(**{"sft.group_by_length": grouped})
        with pytest.raises(RuntimeError, match="stop after the schedule"):
            run_sft(params, fetched / "models" / "base" / "policy", fetched / "data" / "raw", tmp_path / str(grouped))
    assert [schedule.group_by_length for schedule in seen] == [True, False]
    assert seen[0].epochs == tiny_params().sft.epochs and seen[0].batch_size == tiny_params().sft.batch_size


def test_a_fetched_policy_is_used_as_it_is_unless_sft_is_enabled(fetched, tmp_path):
    trained = tmp_path / "trained"
    trained.mkdir()
    run_sft(tiny_params(), fetched / "models" / "base" / "policy", fetched / "data" / "raw", trained)
    local = tiny_params(**{"policy.source": "local", "policy.local.path": str(trained)})
    as_is = tmp_path / "as_is"
    as_is.mkdir()
    result = run_sft(local, trained, fetched / "data" / "raw", as_is)
    assert not result.trained and result.metrics == {"trained": False}
    assert sha256_tree(as_is) == sha256_tree(trained)

    lora = tiny_params(
        **{
            "policy.source": "local",
            "policy.local.path": str(trained),
            "sft.enabled": True,
            "sft.method": "lora",
            "sft.learning_rate": 0.01,
        }
    )
    tuned = tmp_path / "lora"
    tuned.mkdir()
    result = run_sft(lora, trained, fetched / "data" / "raw", tuned)
    assert result.trained and 0 < result.metrics["trained_parameters"] < result.metrics["parameters"]
    assert not (tuned / "adapter_config.json").exists(), "the adapters are merged into a plain model folder"
    before = AutoModelForSeq2SeqLM.from_pretrained(trained).state_dict()
    after = AutoModelForSeq2SeqLM.from_pretrained(tuned).state_dict()
    assert set(before) == set(after)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(".q." in key or ".v." in key for key in changed)


def test_sft_false_for_the_builtin_policy_is_refused():
    from detox.common.errors import ParamsError

    with pytest.raises(ParamsError, match="sft.enabled is false, but the builtin policy has no weights"):
        tiny_params(**{"sft.enabled": False})
    with pytest.raises(ParamsError, match="reward.train.enabled is false"):
        tiny_params(**{"reward.train.enabled": False})


def test_builtin_reward_model_trains_and_is_measured_on_held_out_rows(fetched, tmp_path):
    params = tiny_params(**{"reward.train.epochs": 2})
    labelled = fetched / "data" / "labelled" / "labelled.parquet"
    result = run_reward(params, fetched / "models" / "base" / "reward", labelled, tmp_path)
    rows = len(pd.read_parquet(labelled))
    held = result.metrics["heldout"]
    assert result.trained and has_weights(tmp_path)
    assert held["examples"] == round(rows * 0.1) and result.metrics["train_examples"] == rows - held["examples"]
    assert sum(held["confusion"].values()) == held["examples"]
    assert set(held["per_class"]) == {"hate", "nothate"} and 0.0 <= held["roc_auc"] <= 1.0
    assert [row["epoch"] for row in result.fit.history] == [1, 2]
    assert {"train_loss", "eval_loss", "eval_accuracy"} <= set(result.fit.history[0])
    assert len(result.curves["predictions"]) == held["examples"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "nothate", 1: "hate"}


def test_fine_tuning_a_local_classifier_with_other_label_names(tmp_path):
    folder = tiny_classifier(tmp_path / "jigsaw-like", {0: "clean", 1: "toxic"})
    frame = labelled_sentences(400, 9)
    frame["label"] = frame["label"].map({0: "clean", 1: "toxic"})
    frame[["text", "label"]].to_parquet(tmp_path / "labelled.parquet")
    params = tiny_params(
        **{
            "reward.source": "local",
            "reward.local.path": str(folder),
            "reward.train.enabled": True,
            "reward.toxic_label": "toxic",
            "reward.reward_label": "clean",
            "reward.train.epochs": 8,
            "reward.train.batch_size": 16,
            "reward.train.learning_rate": 3e-3,
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    before = run_reward(
        params.model_copy(
            update={
                "reward": params.reward.model_copy(
                    update={"train": params.reward.train.model_copy(update={"enabled": None})}
                )
            }
        ),
        folder,
        tmp_path / "labelled.parquet",
        tmp_path / "as_is",
    )
    assert not before.trained and sha256_tree(tmp_path / "as_is") == sha256_tree(folder)
    result = run_reward(params, folder, tmp_path / "labelled.parquet", out)
    assert result.trained
    assert set(result.metrics["heldout"]["per_class"]) == {"clean", "toxic"}
    assert result.metrics["heldout"]["toxic_label"] == "toxic"
    assert before.metrics["heldout"]["accuracy"] < 0.7 < result.metrics["heldout"]["accuracy"]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label == {0: "clean", 1: "toxic"}

    frame.loc[5, "label"] = "hate"
    frame[["text", "label"]].to_parquet(tmp_path / "labelled.parquet")
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(SourceError, match=r"row 5 has label 'hate'; the model's labels are \['clean', 'toxic'\]"):
        run_reward(params, folder, tmp_path / "labelled.parquet", again)


# --------------------------------------------------------------------------- validation of the labelled data


def bad_labelled(fetched: Path, tmp_path: Path, change) -> str:
    frame = pd.read_parquet(fetched / "data" / "labelled" / "labelled.parquet")
    frame = change(frame)
    frame.to_parquet(tmp_path / "labelled.parquet", index=False)
    params = tiny_params()
    labelled = read_labelled(
        tmp_path / "labelled.parquet", fetched / "models" / "base" / "reward", "hate", params.validation.labelled
    )
    summary = validate_dir(fetched / "data" / "raw", params.validation, tmp_path / "report", labelled)
    assert not summary.success and summary.splits["labelled"].failed >= 1
    assert all(split.success for name, split in summary.splits.items() if name != "labelled")
    return format_failures(summary)


def test_validation_passes_the_fetched_labelled_data(fetched, tmp_path):
    params = tiny_params()
    labelled = read_labelled(
        fetched / "data" / "labelled" / "labelled.parquet",
        fetched / "models" / "base" / "reward",
        "hate",
        params.validation.labelled,
    )
    assert labelled.labels == ("0", "1", "hate", "nothate") and labelled.toxic == ("1", "hate")
    summary = validate_dir(fetched / "data" / "raw", params.validation, tmp_path, labelled)
    assert summary.success and summary.metrics()["splits"]["labelled"]["success"]
    assert (tmp_path / "labelled.json").is_file()


def test_validation_stops_on_a_bad_label(fetched, tmp_path):
    def change(frame):
        frame.loc[7, "label"] = "spam"
        return frame

    message = bad_labelled(fetched, tmp_path, change)
    assert "labelled: expect_column_values_to_be_in_set(label) failed: 1 unexpected" in message
    assert "['spam'] (rows [7])" in message and "'hate', 'nothate'" in message


def test_validation_stops_on_empty_text(fetched, tmp_path):
    def change(frame):
        frame.loc[3, "text"] = "   "
        frame.loc[4, "text"] = None
        return frame

    message = bad_labelled(fetched, tmp_path, change)
    assert "expect_column_values_to_not_match_regex(text) failed: 1 unexpected" in message and "rows [3]" in message
    assert "expect_column_values_to_not_be_null(text) failed: 1 unexpected" in message


def test_validation_stops_on_a_test_summary_in_the_labelled_data(fetched, tmp_path):
    summary = pd.read_parquet(fetched / "data" / "raw" / "test.parquet")["summary"].iloc[0]

    def change(frame):
        frame.loc[11, "text"] = summary
        return frame

    message = bad_labelled(fetched, tmp_path, change)
    assert "expect_column_values_to_not_be_in_set(text) failed: 1 unexpected" in message
    assert "equal to one of the test split's summaries" in message and "rows [11]" in message


def test_validation_stops_on_unbalanced_classes(fetched, tmp_path):
    message = bad_labelled(fetched, tmp_path, lambda frame: frame[frame["label"] == "nothate"].reset_index(drop=True))
    assert "expect_column_mean_to_be_between(toxic)" in message and "class balance" in message


# --------------------------------------------------------------------------- the stage scripts, MLflow, lineage


def run_stage(name: str, root: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DVC_EXP_")}, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, str]:
    """A project after `fetch`, `validate`, `sft` and `reward`, run as scripts, with its own MLflow store."""
    root = tmp_path_factory.mktemp("staged")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for stage in ("fetch", "validate", "sft", "reward"):
        run_stage(stage, root, uri)
    return root, uri


@pytest.mark.slow
def test_training_stages_write_metrics_and_plots(staged):
    root, _ = staged
    sft = json.loads((root / "metrics" / "sft.json").read_text())
    assert sft["trained"] and sft["epochs"] == 1 and sft["validation_rougeL"] is not None
    history = pd.read_csv(root / "plots" / "sft" / "history.tsv", sep="\t")
    assert list(history.columns) == ["epoch", "train_loss", "eval_loss", "eval_rougeL"] and len(history) == 1
    reward = json.loads((root / "metrics" / "reward.json").read_text())
    assert reward["trained"] and reward["heldout"]["examples"] > 0
    roc = pd.read_csv(root / "plots" / "reward" / "roc.tsv", sep="\t")
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    predictions = pd.read_csv(root / "plots" / "reward" / "predictions.csv")
    assert len(predictions) == reward["heldout"]["examples"]
    assert set(pd.read_csv(root / "plots" / "reward" / "calibration.tsv", sep="\t").columns) == {
        "bin",
        "predicted",
        "observed",
        "count",
    }
    validation = json.loads((root / "metrics" / "validation.json").read_text())
    assert validation["success"] and set(validation["splits"]) == {"train", "validation", "test"}
    labelled = json.loads((root / "metrics" / "validation_labelled.json").read_text())
    assert labelled["success"] and labelled["rows"] == len(pd.read_parquet(root / "data/labelled/labelled.parquet"))


@pytest.mark.slow
def test_training_stages_log_runs_and_register_their_models(staged):
    root, uri = staged
    client = mlflow.MlflowClient(uri)
    for stage, name, folder in (("sft", "detox-sft", "policy"), ("reward", "detox-reward", "reward")):
        [version] = client.search_model_versions(f"name = '{name}'")
        assert version.tags["sha256"] == sha256_tree(root / "models" / folder)
        run = client.get_run(version.run_id)
        assert run.data.tags["stage"] == stage and run.info.run_name == f"{stage} · workspace"
        assert run.data.tags[f"{stage}.model_version"] == f"{name}/{version.version}"
        history = client.get_metric_history(run.info.run_id, f"{stage}/epoch/train_loss")
        assert [m.step for m in history] == [1]
    reward_run = client.get_run(client.search_model_versions("name = 'detox-reward'")[0].run_id)
    assert reward_run.data.params["reward.train.epochs"] == "1"
    assert "reward/heldout.roc_auc" in reward_run.data.metrics
    # each registered model says what it is, each version where it came from and how it measured
    assert "sft stage" in client.get_registered_model("detox-sft").description
    assert "reward stage" in client.get_registered_model("detox-reward").description
    sft_version = client.get_model_version("detox-sft", "1")
    assert sft_version.description.startswith("sft · workspace: builtin policy")
    # the precision sft.precision resolved to, as metrics/sft.json has it
    trained_in = json.loads((root / "metrics" / "sft.json").read_text())["precision"]
    assert trained_in in {"fp32", "bf16"} and sft_version.tags["precision"] == trained_in
    assert f"epochs in {trained_in}" in sft_version.description
    assert "held-out accuracy" in client.get_model_version("detox-reward", "1").description


def load_stage(name: str):
    """A stage script as a module, so that a test can watch what its main() calls."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("stage", "train"), [("sft", "run_sft"), ("reward", "run_reward")])
def test_a_training_run_spans_its_training(fetched, tmp_path, monkeypatch, stage, train):
    """MLflow's duration of the run is that of the training: the run starts before it and ends after it."""
    shutil.copytree(fetched / "data", tmp_path / "data")
    shutil.copytree(fetched / "models", tmp_path / "models")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "metrics").mkdir()
    for name in ("validation.json", "validation_labelled.json"):  # as the validate stage leaves them
        (tmp_path / "metrics" / name).write_text('{"success": true}')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    module = load_stage(stage)
    real, span = getattr(module, train), {}

    def watched(*args, **kwargs):
        span["start"] = int(time.time() * 1000)  # MLflow's clock: milliseconds of time.time()
        result = real(*args, **kwargs)
        span["end"] = int(time.time() * 1000)
        return result

    monkeypatch.setattr(module, train, watched)
    try:
        module.main()
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("detox-summaries").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.start_time <= span["start"] < span["end"] <= run.info.end_time


@pytest.mark.slow
def test_the_registered_reward_model_serves_reward_and_toxicity(staged):
    _, uri = staged
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/detox-reward/1")
        out = model.predict(pd.DataFrame({"text": ["You are an idiot.", "Thanks for the help."]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert list(out.columns) == ["reward", "toxicity"] and len(out) == 2
    assert ((out["toxicity"] >= 0) & (out["toxicity"] <= 1)).all()


@pytest.mark.slow
def test_the_ppo_run_names_the_versions_it_trained_from(staged, monkeypatch):
    root, uri = staged
    from detox.ppo.train import PPOPaths, run_ppo
    from test_ppo_engine import TINY_PPO

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    run_ppo(tiny_params(**{**TINY_PPO, "ppo.steps": 1}), PPOPaths())
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("detox-summaries").experiment_id], "tags.stage = 'ppo'")
    tags = run.data.tags
    assert tags["lineage.sft.model"] == "detox-sft/1" and tags["lineage.reward.model"] == "detox-reward/1"
    sft_version = client.get_model_version("detox-sft", "1")
    assert tags["lineage.sft.run_id"] == sft_version.run_id
    assert tags["lineage.reward.sha256"] == sha256_tree(root / "models" / "reward")
    assert tags["lineage.reward.source"] == "builtin: generated here"


# --------------------------------------------------------------------------- what a params change reruns


def rerun_by(param: str) -> set[str]:
    """The stages `dvc repro` reruns after ``param`` changes: those that list it (or a section above it),
    and every stage that depends on what those write, transitively (read from dvc.yaml)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def outs(stage: dict) -> list[str]:
        return [
            next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots")
            for o in stage.get(key, [])
        ]

    dirty = {
        name
        for name, stage in stages.items()
        if any(param == p or param.startswith(f"{p}.") for p in stage.get("params", []))
    }
    changed = True
    while changed:
        written = [path for name in dirty for path in outs(stages[name])]
        more = {
            name
            for name, stage in stages.items()
            if name not in dirty
            and any(
                dep == path or dep.startswith(f"{path}/") or path.startswith(f"{dep}/")
                for dep in stage.get("deps", [])
                for path in written
            )
        }
        changed = bool(more)
        dirty |= more
    return dirty


def test_a_params_change_reruns_only_the_stages_it_touches():
    """The worst case, as if every rerun stage changed all it writes."""
    assert rerun_by("reward.train.epochs") == {"reward", "baseline", "ppo", "evaluate"}
    assert rerun_by("sft.epochs") == {"sft", "baseline", "ppo", "evaluate"}
    assert rerun_by("judges.ngram.C") == {"judges", "baseline", "ppo", "evaluate"}
    assert rerun_by("promotion.judge") == {"evaluate"}
