"""A new DVC project on the tiny world: its first run is `dvc exp run --temp`; experiments that rerun only
evaluate leave the workspace's MLflow runs as they were; every stage fails under `dvc repro` once, keeps
its previous outputs, and the fix reruns nothing (slow: minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from conftest import HANG_S, run_snapshot
from detox.common.io import sha256_file, sha256_tree
from test_services import EXPERIMENT, REGISTERED_MODEL, VENV_BIN, base_env, copy_project, run

DVC = str(VENV_BIN / "dvc")

# For each stage: an invalid value of a key only that stage (and what follows it) reads, and its outputs.
BREAKS = [
    ("fetch", "data.builtin.train_size", 1, ["data/raw", "data/labelled", "models/base", "metrics/fetch.json"]),
    ("validate", "validation.labelled.min_rows", 1, ["reports/validation", "metrics/validation.json"]),
    ("sft", "sft.epochs", 0, ["models/policy", "metrics/sft.json", "plots/sft/history.tsv"]),
    ("reward", "reward.train.epochs", 0, ["models/reward", "metrics/reward.json", "plots/reward"]),
    ("judges", "judges.ngram.C", -1.0, ["models/judges", "metrics/judges.json"]),
    ("baseline", "generation.top_p", 0.0, ["data/scored/baseline.parquet", "metrics/baseline.json"]),
    ("ppo", "ppo.steps", 0, ["models/ppo", "metrics/ppo.json", "plots/ppo/history.tsv"]),
    (
        "evaluate",
        "promotion.confidence",
        2.0,
        [
            "reports/report.md",
            "reports/report.html",
            "reports/figures",
            "metrics/evaluate.json",
            "plots/evaluate/samples.tsv",
        ],
    ),
]


def digest(path: Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def set_param(params_file: Path, dotted: str, value) -> None:
    raw = yaml.safe_load(params_file.read_text())
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A new project whose first run is a temporary experiment, then `dvc repro` in the workspace."""
    repo = tmp_path_factory.mktemp("failures") / "repo"
    copy_project(repo)
    env = base_env(PYTHONPATH=str(repo / "src"))
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "a new project"], repo, env)
    run([DVC, "exp", "run", "--temp"], repo, env)
    run([DVC, "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "dvc repro"], repo, env)
    return repo, env


@pytest.mark.slow
def test_a_temporary_experiment_first_leaves_its_artifacts_in_the_project(project):
    repo, env = project
    assert not (repo / "mlruns").exists()
    stored = list((repo / "mlartifacts").rglob("MLmodel"))
    assert stored, "the registered models' files must be under the project's mlartifacts/"
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        first = client.get_model_version(REGISTERED_MODEL, "1")  # registered by the temporary experiment
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{first.version}")
        dialogue = pd.read_parquet(repo / "data" / "raw" / "test.parquet")["dialogue"].iloc[0]
        [summary] = model.predict(pd.DataFrame({"dialogue": [dialogue]}))
        run_ = client.get_run(first.run_id)  # the experiment's evaluate run, which registered it
        ppo = client.get_run(run_.data.tags["mlflow.parentRunId"])  # the PPO run it evaluated
    finally:
        mlflow.set_tracking_uri(None)
    assert isinstance(summary, str) and summary
    # The runs are named and tagged after the DVC experiment, and lead to its row of `dvc exp show` and back.
    name, tags = run_.data.tags["dvc.exp_name"], run_.data.tags
    assert run_.info.run_name == f"evaluate · {name}" and ppo.info.run_name == f"ppo · {name}"
    assert ppo.data.tags["dvc.exp_name"] == name and tags["ppo.run_id"] == ppo.info.run_id
    assert name in run([DVC, "exp", "list", "--all-commits", "--name-only"], repo, env).stdout.split()
    baseline_commit = run(["git", "rev-parse", "HEAD~1"], repo, env).stdout.strip()
    assert tags["git.commit"] == ppo.data.tags["git.commit"] == baseline_commit
    assert tags["dvc.lock.ppo.models/ppo"] == experiment_row(repo, env, name)["deps"]["models/ppo"]["hash"]


def experiment_row(repo: Path, env: dict[str, str], name: str) -> dict:
    """The data of experiment ``name``'s row in `dvc exp show`."""
    shown = json.loads(run([DVC, "exp", "show", "--json", "-A"], repo, env).stdout)
    rows = [exp for commit in shown for exp in commit.get("experiments") or [] if exp.get("name") == name]
    [row] = [r for exp in rows for r in exp.get("revs") or [] if r.get("data")]
    return row["data"]


@pytest.mark.slow
def test_experiments_that_rerun_only_evaluate_leave_the_workspace_runs_as_they_were(project):
    """`dvc exp run -S eval.num_samples=...` reuses the workspace's PPO policy and its run: each such
    experiment logs an evaluate run of its own, and the workspace's PPO run and evaluation (params,
    metrics with their history, tags, artifacts' bytes, tables, logged model) stay byte for byte."""
    repo, env = project
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    ppo_id = json.loads((repo / "models" / "ppo" / "mlflow_run.json").read_text())["run_id"]
    [workspace_eval] = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{ppo_id}'")
    assert workspace_eval.info.run_name == "evaluate · workspace"
    watched = (ppo_id, workspace_eval.info.run_id)
    before = {run_id: run_snapshot(client, run_id) for run_id in watched}

    for n_dialogues in (8, 12):
        done = run([DVC, "exp", "run", "--temp", "-S", f"eval.num_samples={n_dialogues}"], repo, env, timeout=HANG_S)
        assert "Running stage 'evaluate'" in done.stdout and "Running stage 'ppo'" not in done.stdout, done.stdout
    assert {run_id: run_snapshot(client, run_id) for run_id in watched} == before

    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{ppo_id}'")
    evaluations = {int(r.data.params["eval.num_samples"]): r for r in children if r.info.run_id not in watched}
    assert sorted(evaluations) == [8, 12]
    for n_dialogues, evaluation in evaluations.items():
        name = evaluation.data.tags["dvc.exp_name"]
        assert evaluation.info.run_name == f"evaluate · {name}" and evaluation.info.status == "FINISHED"
        assert evaluation.data.metrics["results/promotion/n_dialogues"] == n_dialogues
        [version] = client.search_model_versions(f"name = '{REGISTERED_MODEL}' and run_id = '{evaluation.info.run_id}'")
        assert version.tags["ppo.run_id"] == ppo_id
        row = experiment_row(repo, env, name)
        assert evaluation.data.tags["dvc.lock.ppo.models/ppo"] == row["deps"]["models/ppo"]["hash"]
        assert row["params"]["params.yaml"]["data"]["eval"]["num_samples"] == n_dialogues


@pytest.mark.slow
def test_a_stage_that_fails_under_dvc_repro_keeps_its_outputs_and_the_fix_reruns_nothing(project):
    repo, env = project
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    for stage, key, bad, outputs in BREAKS:
        before = {path: digest(repo / path) for path in outputs}
        set_param(params_file, key, bad)
        failed = __import__("subprocess").run(
            [DVC, "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=HANG_S
        )
        assert failed.returncode != 0, (stage, failed.stdout[-2000:])
        assert f"Running stage '{stage}'" in failed.stdout, (stage, failed.stdout[-2000:])
        assert key in failed.stderr + failed.stdout, (stage, failed.stderr[-2000:])
        after = {path: digest(repo / path) for path in outputs}
        assert after == before, f"{stage}: a failed run changed or removed its outputs"
        params_file.write_text(original)
        fixed = run([DVC, "repro"], repo, env)
        assert "Running stage" not in fixed.stdout, (stage, fixed.stdout[-2000:])
        status = run([DVC, "status"], repo, env)
        assert "Data and pipelines are up to date." in status.stdout, (stage, status.stdout)


@pytest.mark.slow
def test_a_forced_rerun_on_the_same_machine_reproduces_every_metric(project):
    """Same machine, same seeds: identical metrics and plots (timings live outside DVC: logs/timings/)."""
    repo, env = project
    run([DVC, "repro", "--force"], repo, env)
    diff = run([DVC, "metrics", "diff", "--all"], repo, env)
    changed = [line for line in diff.stdout.splitlines() if line.strip() and not line.startswith(("Path", "-"))]
    assert run([DVC, "metrics", "diff"], repo, env).stdout.strip() == "", diff.stdout
    assert changed, "the full listing shows the metrics themselves"
    # metrics/ and plots/ are committed to git (cache: false): a forced rerun rewrites them byte for byte
    status = run(["git", "status", "--porcelain", "--", "metrics", "plots"], repo, env)
    assert status.stdout.strip() == "", f"a forced rerun changed metrics or plots:\n{status.stdout}"
    assert (repo / "logs" / "timings" / "ppo.json").is_file() and (repo / "logs" / "timings" / "sft.json").is_file()
