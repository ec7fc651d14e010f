"""The names and tags that tie an MLflow run to its DVC experiment, git commit and dvc.lock entry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from detox.tracking import provenance
from detox.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}
LOCK = {
    "schema": "2.0",
    "stages": {
        "ppo": {
            "cmd": "python stages/ppo.py",
            "deps": [{"path": "data/raw", "hash": "md5", "md5": "aaa.dir", "size": 10, "nfiles": 3}],
            "params": {"params.yaml": {"seed": 1, "ppo": {"steps": 3}}},
            "outs": [
                {"path": "metrics/ppo.json", "hash": "md5", "md5": "bbb", "size": 5},
                {
                    "path": "models/ppo",
                    "hash": "md5",
                    "md5": "113a94b06f1d7e509367855c8a318fa4.dir",
                    "size": 311655,
                    "nfiles": 9,
                },
            ],
        },
    },
}


@pytest.fixture
def no_dvc_env(monkeypatch):
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def git_repo(path: Path) -> str:
    """A git repository with one commit at ``path``; its commit id."""
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q"], ["git", "commit", "-q", "--allow-empty", "-m", "one"]):
        subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_run_name_and_tags_inside_a_dvc_experiment(no_dvc_env, tmp_path):
    commit = git_repo(tmp_path / "repo")
    no_dvc_env.setenv("DVC_EXP_NAME", "bushy-vats")
    no_dvc_env.setenv("DVC_EXP_BASELINE_REV", "0123456789abcdef0123456789abcdef01234567")
    assert provenance.run_name("ppo") == "ppo · bushy-vats"
    # The baseline DVC names wins over the repository's HEAD (an experiment's workspace differs from it).
    assert provenance.run_tags(tmp_path / "repo") == {
        "dvc.exp_name": "bushy-vats",
        "git.commit": "0123456789abcdef0123456789abcdef01234567",
    }
    assert commit != "0123456789abcdef0123456789abcdef01234567"


def test_run_name_and_tags_outside_an_experiment(no_dvc_env, tmp_path):
    commit = git_repo(tmp_path / "repo")
    assert provenance.run_name("sft") == "sft · workspace"
    assert provenance.run_tags(tmp_path / "repo") == {"git.commit": commit}
    (tmp_path / "plain").mkdir()
    assert provenance.run_tags(tmp_path / "plain") == {}  # not a git repository: no tag, no error
    no_dvc_env.setenv("PATH", str(tmp_path / "no-such-bin"))  # no git at all
    assert provenance.git_commit(tmp_path / "repo") is None


def test_lock_tags_hash_the_stage_entry_and_name_each_output(tmp_path):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK, sort_keys=False), encoding="utf-8")
    tags = provenance.lock_tags("ppo", tmp_path)
    entry = LOCK["stages"]["ppo"]
    canonical = json.dumps({k: entry[k] for k in ("deps", "params", "outs")}, sort_keys=True, separators=(",", ":"))
    assert tags == {
        "dvc.lock.ppo": hashlib.md5(canonical.encode()).hexdigest()[:12],
        "dvc.lock.ppo.metrics/ppo.json": "bbb",
        "dvc.lock.ppo.models/ppo": "113a94b06f1d7e509367855c8a318fa4.dir",
    }
    # The same inputs and outputs give the same hash whatever the key order and the command;
    # another output md5 gives another.
    reordered = {"outs": entry["outs"], "params": entry["params"], "deps": entry["deps"], "cmd": "other"}
    assert provenance.entry_hash(reordered) == tags["dvc.lock.ppo"]
    changed = json.loads(json.dumps(entry))
    changed["outs"][1]["md5"] = "ccc.dir"
    assert provenance.entry_hash(changed) != tags["dvc.lock.ppo"]
    assert provenance.lock_tags("evaluate", tmp_path) == {}  # no entry yet
    assert provenance.lock_tags("ppo", tmp_path / "elsewhere") == {}  # no dvc.lock
    (tmp_path / "dvc.lock").write_text("stages: [unclosed", encoding="utf-8")
    assert provenance.lock_tags("ppo", tmp_path) == {}


def test_a_run_records_the_params_its_stage_reads_as_dvc_yaml_lists_them(tmp_path):
    params = {
        "seed": 1,
        "eval": {"num_samples": 20, "seed": 3},
        "ppo": {"steps": 9},
        "reward": {"toxic_label": "hate", "batch_size": 8, "train": {"epochs": 3}},
        "tracking": {"experiment": "e", "registered_model": "m", "sft_model": "s"},
    }
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "evaluate": {
                        "cmd": "x",
                        "params": [
                            "eval",
                            "reward.toxic_label",
                            "tracking.experiment",
                            "tracking.registered_model",
                            "missing.key",
                            {"other.yaml": ["a"]},
                        ],
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    assert provenance.stage_params("evaluate", params, tmp_path) == {
        "eval": {"num_samples": 20, "seed": 3},
        "reward": {"toxic_label": "hate"},
        "tracking": {"experiment": "e", "registered_model": "m"},
    }
    assert provenance.stage_params("judges", params, tmp_path) == params  # not in dvc.yaml: all of them
    assert provenance.stage_params("evaluate", params, tmp_path / "elsewhere") == params


def test_each_stage_records_exactly_the_params_dvc_yaml_gives_it():
    """What the project's dvc.yaml lists for evaluate and ppo is what their runs record, no more."""
    from detox.common.params import Params
    from detox.tracking.runs import flatten

    root = Path(__file__).resolve().parents[1]
    params = Params().model_dump(mode="json")
    evaluate = flatten(provenance.stage_params("evaluate", params, root))
    assert {"eval.num_samples", "generation.temperature", "promotion.judge", "reward.toxic_label"} <= set(evaluate)
    assert not [key for key in evaluate if key.startswith(("ppo.", "sft.", "reward.train."))]
    ppo = flatten(provenance.stage_params("ppo", params, root))
    assert "ppo.learning_rate" in ppo and "eval.judges" in ppo
    assert not [key for key in ppo if key.startswith(("eval.num_samples", "generation.", "promotion."))]


def test_a_new_run_is_named_after_the_experiment_and_findable_by_its_tag(no_dvc_env, tmp_path):
    import mlflow

    git_repo(tmp_path)
    no_dvc_env.chdir(tmp_path)
    no_dvc_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    no_dvc_env.setenv("DVC_EXP_NAME", "tidy-mugs")
    no_dvc_env.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    try:
        tracker = Tracker("provenance-test")
        tracker.start(stage="ppo", tags={"policy": "models/policy"})
        tracker.end()
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        run = client.get_run(tracker.run_id)
        assert run.info.run_name == "ppo · tidy-mugs"
        assert {k: run.data.tags[k] for k in ("stage", "dvc.exp_name", "git.commit", "policy")} == {
            "stage": "ppo",
            "dvc.exp_name": "tidy-mugs",
            "git.commit": "a" * 40,
            "policy": "models/policy",
        }
        # What the README says to type into the MLflow search box finds it.
        experiment = client.get_experiment_by_name("provenance-test")
        found = client.search_runs([experiment.experiment_id], "tags.\"dvc.exp_name\" = 'tidy-mugs'")
        assert [r.info.run_id for r in found] == [tracker.run_id]
        # Reopening the run (a resumed training) keeps its name.
        no_dvc_env.setenv("DVC_EXP_NAME", "other")
        tracker.start(run_id=tracker.run_id, stage="ppo")
        tracker.end()
        assert client.get_run(tracker.run_id).info.run_name == "ppo · tidy-mugs"
    finally:
        mlflow.set_tracking_uri(None)


def test_the_experiment_opens_as_a_machine_learning_experiment(no_dvc_env, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    no_dvc_env.chdir(tmp_path)
    no_dvc_env.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        client = mlflow.MlflowClient(uri)
        old = client.create_experiment("made-before")  # an experiment from before the tag
        guessed = client.create_experiment("guessed", tags={EXPERIMENT_KIND_TAG: "genai_development_inferred"})
        chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
        for name in ("made-here", "made-before", "guessed", "chosen"):
            tracker = Tracker(name)
            tracker.start(stage="sft")
            tracker.end()
        kind = {
            name: client.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG)
            for name in ("made-here", "made-before", "guessed", "chosen")
        }
        assert kind == {
            "made-here": EXPERIMENT_KIND,
            "made-before": EXPERIMENT_KIND,
            "guessed": EXPERIMENT_KIND,
            "chosen": "genai_development",
        }  # a kind set by hand stays
        assert old and guessed and chosen
    finally:
        mlflow.set_tracking_uri(None)


def ui_bundle() -> str:
    """The installed MLflow UI's main JavaScript bundle (minified)."""
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not bundle.is_dir():
        pytest.skip("this MLflow has no UI bundle")
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in bundle.glob("main.*.js"))


def test_the_experiment_kind_is_one_the_installed_mlflow_ui_knows():
    text = ui_bundle()
    assert EXPERIMENT_KIND_TAG in text and f'"{EXPERIMENT_KIND}"' in text


def test_run_links_carry_the_url_parameter_that_opens_the_installed_ui_on_runs(no_dvc_env):
    """The UI takes its GenAI / machine-learning layout from the URL parameter, else from the browser's
    localStorage (default GenAI); the links the project gives set the parameter to the UI's own value."""
    import re

    from detox.tracking.store import UI_WORKFLOW, UI_WORKFLOW_PARAM, ui_url

    text = ui_bundle()
    # The provider of the layout: an enum with the value, the URL parameter read by that name and
    # accepted when it is one of the enum's values, and the stored choice with GenAI as its default.
    enum = re.search(r'(\w)\.GENAI="genai",\1\.MACHINE_LEARNING="(\w+)"', text)
    assert enum and enum.group(2) == UI_WORKFLOW
    read = re.search(r'\.get\("(\w+)"\);return \w===\w\.GENAI\|\|\w===\w\.MACHINE_LEARNING\?\w:\w', text)
    assert read and read.group(1) == UI_WORKFLOW_PARAM
    assert re.search(r'key:"mlflow\.workflowType",version:1,initialValue:\w', text)

    assert ui_url("experiments/1/runs/abc") == (
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )
    no_dvc_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000/")
    assert ui_url("models/m/versions/2") == (
        "http://mlflow.internal:5000/#/models/m/versions/2?workflowType=machine_learning"
    )
