"""The MLflow run of a stage: its status when the stage fails (a full disk in the middle of logging a
model), the links it logs into the UI, and a project copied with its store (``cp -a``).

Against real SQLite stores in temporary folders; the failures are injected into MLflow's own
artifact copy and store.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import sqlalchemy.exc
from mlflow.store.artifact import local_artifact_repo
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from detox.common.errors import TrackingError
from detox.common.params import GenerationParams
from detox.serve.summarizer import Summarizer, model_config, signature
from detox.tracking import relocate
from detox.tracking.registry import PolicyModel
from detox.tracking.runs import Tracker
from detox.tracking.store import check_artifact_location

EXPERIMENT = "tracking-test"
REGISTERED = "tracking-test-model"
CONFIG = model_config("Summarize: {dialogue}", GenerationParams(max_new_tokens=4), 0)
# What a store's writes raise when SQLite cannot grow its file or journal.
DISK_FULL = sqlalchemy.exc.OperationalError("UPDATE ...", {}, sqlite3.OperationalError("database or disk is full"))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with an embedded store of its own, as the stages see it (by its absolute path:
    MLflow keeps one store per URI in a process, so a relative one would stay with the first folder)."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    for name in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    yield root
    mlflow.set_tracking_uri(None)


def policy_folder(path: Path, files: int = 6) -> Path:
    """A model folder whose files the logged model copies (their content does not matter here)."""
    path.mkdir(parents=True)
    for i in range(files):
        (path / f"part-{i}.bin").write_bytes(os.urandom(4096))
    return path


def model(folder: Path) -> PolicyModel:
    return PolicyModel(Summarizer(), folder, CONFIG, signature(CONFIG))


def store_tables(db: Path) -> dict[str, list]:
    with sqlite3.connect(db) as conn:
        return {
            "runs": conn.execute("SELECT status FROM runs").fetchall(),
            "logged_models": conn.execute("SELECT status, lifecycle_stage FROM logged_models").fetchall(),
            "model_versions": conn.execute("SELECT version FROM model_versions").fetchall(),
        }


@pytest.mark.parametrize("failure", ["disk full", "error"])
def test_a_failure_in_the_middle_of_logging_a_model_leaves_the_run_failed_and_no_half_model(
    project, monkeypatch, caplog, failure
):
    """The disk fills up after half of the model's files are copied, and from then on SQLite cannot write
    either, until the half-copied files are gone (the space they took is what the status update needs);
    or any error half-way through the copy."""
    copied: list[Path] = []

    def copy_half_then_fail(src_dir: str, dst_dir: str) -> None:
        for i, path in enumerate(sorted(p for p in Path(src_dir).rglob("*") if p.is_file())):
            if i == 3:
                if failure == "disk full":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(dst_dir) / path.name))
                raise RuntimeError("the copy broke")
            target = Path(dst_dir) / path.relative_to(src_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(target)

    def disk_full() -> bool:
        return failure == "disk full" and any(p.exists() for p in copied)

    def refuse_when_full(name: str) -> None:
        real = getattr(SqlAlchemyStore, name)

        def write(self, *args, **kwargs):
            if disk_full():
                raise DISK_FULL
            return real(self, *args, **kwargs)

        monkeypatch.setattr(SqlAlchemyStore, name, write)

    monkeypatch.setattr(local_artifact_repo, "shutil_copytree_without_file_permissions", copy_half_then_fail)
    for name in ("finalize_logged_model", "delete_logged_model", "update_run_info", "set_tag", "log_batch"):
        refuse_when_full(name)
    tracker = Tracker(EXPERIMENT)
    with caplog.at_level("WARNING", logger="detox.tracking.runs"), pytest.raises(Exception) as raised:
        with tracker.run("reward"):
            tracker.log_metrics({"reward/heldout.accuracy": 0.9})
            tracker.log_model(model(policy_folder(project / "folder")), REGISTERED)
    if failure == "disk full":  # said in one line, with where and what to do
        assert raised.type is TrackingError and "\n" not in str(raised.value)
        assert str(raised.value).startswith(f"no space left on the disk of {project / 'mlartifacts'}")
        assert f"run {tracker.run_id} was ended FAILED" in str(raised.value)
    else:
        assert raised.type is RuntimeError and str(raised.value) == "the copy broke"

    assert copied and not disk_full(), "the half-copied files are deleted"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert not client.search_logged_models([run.info.experiment_id], f"source_run_id = '{tracker.run_id}'")
    tables = store_tables(project / "mlflow.db")
    assert tables["runs"] == [("FAILED",)]
    assert [stage for _, stage in tables["logged_models"]] == ["deleted"]
    assert "PENDING" not in str(tables["logged_models"]) and not tables["model_versions"]
    assert not [p for p in (project / "mlartifacts").rglob("*") if p.is_file() and "models" in p.parts]
    assert "deleted the logged model" in caplog.text


def test_an_interrupted_run_is_killed_an_error_fails_it_and_a_finished_one_logs_its_link(project, caplog):
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    statuses = {}
    for what, exc in (("interrupted", KeyboardInterrupt()), ("killed", SystemExit(143)), ("broken", ValueError())):
        tracker = Tracker(EXPERIMENT)
        with pytest.raises(type(exc)):
            with tracker.run("sft"):
                raise exc
        statuses[what] = client.get_run(tracker.run_id).info.status
    assert statuses == {"interrupted": "KILLED", "killed": "KILLED", "broken": "FAILED"}
    tracker = Tracker(EXPERIMENT)
    with caplog.at_level("INFO", logger="detox.tracking.runs"), tracker.run("sft"):
        pass
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    link = (
        f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}"
        "?workflowType=machine_learning"
    )
    assert f"MLflow run 'sft · workspace': {link}" in caplog.text


# --------------------------------------------------------------------------- a copied project


def registered_project(root: Path) -> str:
    """A project with one run, an artifact and a registered model in its embedded store; the version."""
    tracker = Tracker(EXPERIMENT)
    with tracker.run("reward"):
        (root / "note.txt").write_text("from the original")
        tracker.log_artifact(root / "note.txt", "notes")
        info = tracker.log_model(model(policy_folder(root / "folder", files=2)), REGISTERED)
    mlflow.set_tracking_uri(None)
    return str(info.registered_model_version)


def run_relocate(cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return subprocess.run(
        [sys.executable, "-m", "detox.tracking.relocate"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_copied_project_is_refused_until_relocated_then_reads_and_writes_only_its_own_store(project, monkeypatch):
    version = registered_project(project)
    copy = project.parent / "copy"
    shutil.copytree(project, copy, symlinks=True)  # what `cp -a` does
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    with pytest.raises(TrackingError) as refused:
        Tracker(EXPERIMENT)
    message = str(refused.value)
    assert "\n" not in message and f"{project / 'mlartifacts'}" in message
    assert "python -m detox.tracking.relocate" in message

    done = run_relocate(copy)
    assert done.returncode == 0, done.stderr
    assert f"moved from {project} to {copy}" in done.stdout
    assert run_relocate(copy).stdout.strip().endswith("nothing to do")
    check_artifact_location(EXPERIMENT)
    with sqlite3.connect(copy / "mlflow.db") as conn:
        stored = [
            value
            for table, column in relocate.LOCATION_COLUMNS
            for (value,) in conn.execute(f"SELECT {column} FROM {table}")
        ]
    assert stored and not [value for value in stored if str(project) in value]

    shutil.rmtree(project)  # from here on only the copy exists
    tracker = Tracker(EXPERIMENT)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED}/{version}"))
    assert local.is_relative_to(copy / "mlartifacts") and (local / "MLmodel").is_file()
    assert sorted(p.name for p in (local / "artifacts" / "folder").iterdir()) == ["part-0.bin", "part-1.bin"]
    with tracker.run("reward"):
        (copy / "note.txt").write_text("from the copy")
        tracker.log_artifact(copy / "note.txt", "notes")
    uri = mlflow.get_run(tracker.run_id).info.artifact_uri
    assert uri.startswith((copy / "mlartifacts" / EXPERIMENT).as_uri())
    assert not project.exists(), "nothing was written into the original"
    assert sorted(p.read_text() for p in (copy / "mlartifacts").rglob("note.txt")) == [
        "from the copy",
        "from the original",
    ]


def test_an_experiment_given_its_own_artifact_location_is_left_alone(project):
    elsewhere = (project.parent / "big-disk" / "artifacts").as_uri()
    mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").create_experiment(EXPERIMENT, artifact_location=elsewhere)
    check_artifact_location(EXPERIMENT)
    assert run_relocate(project).returncode == 1  # no mlartifacts/ here: nothing of ours to re-point


def test_relocate_outside_an_embedded_store_says_where_to_run_it(tmp_path):
    done = run_relocate(tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: sqlite:///mlflow.db: not an embedded store")
    assert "Traceback" not in done.stderr
