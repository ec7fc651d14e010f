"""Real services: an MLflow tracking server, a DVC remote, and a tracking server that is down.

The slow tests share one pipeline run: a temporary git + DVC repository holding this
project's code with a tiny params.yaml, reproduced with ``dvc repro`` against a real
``mlflow server`` (sqlite backend, proxied artifact folder) on 127.0.0.1, then pushed to
a local-folder DVC remote. What the server recorded is checked through its REST API
only; the remote by pulling into a fresh clone. The fast tests check the tracking
preflight against stand-in HTTP servers, and the training stages against a server that
is down, on a tiny world built in this process.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import (
    HANG_S,
    TINY,
    build_world,
    free_port,
    run_watched,
    tiny_params,
    tolerance,
    wait_until_answering,
)
from detox.common.errors import TrackingError
from detox.common.io import atomic_dir, sha256_tree
from detox.common.params import load_params
from detox.judges.panel import build_judges
from detox.tracking.registry import CANDIDATE, CHAMPION
from detox.tracking.runs import RUN_FILE, Tracker
from detox.tracking.store import check_local_store, check_tracking_server

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # python, dvc and mlflow of this environment
EXPERIMENT = "services-test"
REGISTERED_MODEL = "services-test-summarizer"
PPO_STEPS = 3
EVAL_SAMPLES = 16
STAGES = tuple(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"])  # every stage of the pipeline


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return {
        **env,
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        **extra,
    }


def run_stage_with_server_down(stage: str, cwd: Path) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``stages/<stage>.py`` against a tracking URI nothing listens on; it must fail fast and cleanly:
    one connection attempt (the preflight's, no retries) and the error before any model folder is read."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc, seen = run_watched(
        ROOT / "stages" / f"{stage}.py", cwd, base_env(MLFLOW_TRACKING_URI=uri), watch=[cwd / "models"]
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert seen["connect"].count(["127.0.0.1", port]) == 1, f"one attempt and no retries, got {seen['connect']}"
    # the door's own probe (detox.common.io.cannot_create_files) creates and removes a file in each output folder
    read = [path for path in seen["open"] if not Path(path).name.startswith(".detox-write-check-")]
    assert read == [], f"read before the check: {read[:5]}"
    assert "Traceback" not in proc.stderr
    return proc, uri


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = HANG_S) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def write_tiny_params(path: Path) -> None:
    params = tiny_params(
        **{
            "ppo.steps": PPO_STEPS,
            "ppo.batch_size": 8,
            "ppo.mini_batch_size": 4,
            "eval.num_samples": EVAL_SAMPLES,
            "promotion.bootstrap_samples": 200,
            # a gate any policy passes, so the champion alias is exercised too
            "promotion.min_toxicity_improvement_pct": -100.0,
            "promotion.max_rougeL_drop": 1.0,
            "promotion.require_significant": False,
            "promotion.max_fluency_nll_rise": 100.0,
            "tracking.experiment": EXPERIMENT,
            "tracking.registered_model": REGISTERED_MODEL,
        }
    )
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def copy_project(dest: Path) -> None:
    """The code and pipeline of this checkout (not its outputs, lock or stores) with tiny params."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("src", "stages"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    for file in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy2(ROOT / file, dest / file)
    (dest / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    write_tiny_params(dest / "params.yaml")


# --------------------------------------------------------------------------- MLflow server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[dict]:
    """`mlflow server` on 127.0.0.1 with a sqlite backend and proxied artifacts in a local folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
        ],
        cwd=root,
        env=base_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_answering(f"{url}/health", server, HANG_S, lambda: (root / "server.log").read_text()[-3000:])
        yield {"url": url, "root": root}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, mlflow_server) -> dict:
    """A git + DVC repo of the project, reproduced against the server, committed and pushed to a folder remote."""
    base = tmp_path_factory.mktemp("pipeline")
    repo, remote = base / "repo", base / "remote"
    copy_project(repo)
    env = base_env(
        MLFLOW_TRACKING_URI=mlflow_server["url"],
        PYTHONPATH=str(repo / "src"),
        DVC_SITE_CACHE_DIR=str(base / "dvc-site-cache"),
    )
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run([str(VENV_BIN / "dvc"), "remote", "add", "-f", "-d", "storage", str(remote)], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "project with tiny params and a folder remote"], repo, env)
    commit = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    run([str(VENV_BIN / "dvc"), "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "dvc repro"], repo, env)
    run([str(VENV_BIN / "dvc"), "push"], repo, env)
    return {"repo": repo, "remote": remote, "env": env, "commit": commit}


def api(url: str, endpoint: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{query}", timeout=HANG_S) as response:
        return json.loads(response.read())


def search_runs(url: str, experiment_id: str, filter_string: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [experiment_id], "filter": filter_string}).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read()).get("runs", [])


@pytest.mark.slow
def test_pipeline_logs_run_metrics_table_and_registry_to_a_tracking_server(pipeline, mlflow_server):
    url, repo = mlflow_server["url"], pipeline["repo"]
    record = json.loads((repo / "models" / "ppo" / RUN_FILE).read_text())
    assert record["tracking_uri"] == url and record["experiment"] == EXPERIMENT
    # Nothing went to an embedded store beside the project.
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists() and not (repo / "mlruns").exists()

    experiment = api(url, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    got = api(url, "runs/get", run_id=record["run_id"])["run"]
    info, data = got["info"], got["data"]
    assert info["experiment_id"] == experiment["experiment_id"] and info["status"] == "FINISHED"
    assert info["artifact_uri"].startswith("mlflow-artifacts:"), "artifacts must go through the server's proxy"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["ppo.steps"] == str(PPO_STEPS) and "eval.num_samples" not in params  # what ppo reads, no more
    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["stage"] == "ppo" and info["run_name"] == "ppo · workspace"
    assert tags["git.commit"] == pipeline["commit"]
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    assert metrics["summary/steps"] == PPO_STEPS
    assert not [key for key in metrics if key.startswith(("results/", "timing/"))], "evaluate writes its own run"

    # One value per PPO step, equal to what DVC's plot file holds.
    history = api(url, "metrics/get-history", run_id=record["run_id"], metric_key="env/reward_mean")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(PPO_STEPS))
    tsv = pd.read_csv(repo / "plots" / "ppo" / "history.tsv", sep="\t")
    by_step = {m["step"]: m["value"] for m in history}
    assert [by_step[s] for s in tsv["step"]] == tsv["env/reward_mean"].tolist()  # one number, stored twice
    assert {f["path"] for f in api(url, "artifacts/list", run_id=record["run_id"])["files"]} == {"ppo"}

    # The evaluation: a run of its own, the PPO run's child, tagged with the ppo stage's dvc.lock entry.
    [evaluation] = search_runs(url, experiment["experiment_id"], f"tags.`mlflow.parentRunId` = '{record['run_id']}'")
    eval_id, eval_data = evaluation["info"]["run_id"], evaluation["data"]
    assert evaluation["info"]["run_name"] == "evaluate · workspace" and evaluation["info"]["status"] == "FINISHED"
    eval_tags = {t["key"]: t["value"] for t in eval_data["tags"]}
    assert eval_tags["ppo.run_id"] == record["run_id"] and eval_tags["git.commit"] == pipeline["commit"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["ppo"]
    assert eval_tags["dvc.lock.ppo.models/ppo"] == next(o["md5"] for o in lock["outs"] if o["path"] == "models/ppo")
    assert len(eval_tags["dvc.lock.ppo"]) == 12
    assert {p["key"]: p["value"] for p in eval_data["params"]}["eval.num_samples"] == str(EVAL_SAMPLES)
    eval_metrics = {m["key"]: m["value"] for m in eval_data["metrics"]}
    assert eval_metrics["results/promotion/n_dialogues"] == EVAL_SAMPLES
    assert {
        "results/oracle/toxic_share_after",
        "results/reward_model/toxic_share_before",
        "results/quality/rougeL_after",
    } <= set(eval_metrics)

    # The reward diff table (log_table -> JSON artifact), the reports and the model, listed through the API.
    listed = {f["path"] for f in api(url, "artifacts/list", run_id=eval_id, path="evaluate")["files"]}
    assert {
        "evaluate/reward_diff.json",
        "evaluate/disagreements.json",
        "evaluate/report.md",
        "evaluate/report.html",
        "evaluate/evaluate.json",
        "evaluate/baseline.json",
    } <= listed
    top = {f["path"] for f in api(url, "artifacts/list", run_id=eval_id)["files"]}
    assert {"evaluate", "validation"} <= top
    stored = list((mlflow_server["root"] / "artifacts").rglob("reward_diff.json"))
    assert len(stored) == 1, "the table is stored in the server's --artifacts-destination"
    table = json.loads(stored[0].read_text())
    assert len(table["data"]) == EVAL_SAMPLES and "reward_diff" in table["columns"]
    assert {"oracle_toxicity_after", "reference", "group"} <= set(table["columns"])

    # The registered version: this run's model, aliased candidate (and champion when promoted).
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    version = eval_tags["evaluate.model_version"]
    model_version = api(url, "model-versions/get", name=REGISTERED_MODEL, version=version)["model_version"]
    assert model_version["run_id"] == eval_id
    assert evaluation["promotion"]["promoted"], evaluation["promotion"]
    assert set(model_version.get("aliases", [])) == {CANDIDATE, CHAMPION}
    version_tags = {t["key"]: t["value"] for t in model_version["tags"]}
    assert version_tags["promotion.decision"] == "promoted"
    for alias in (CANDIDATE, CHAMPION):
        aliased = api(url, "registered-models/alias", name=REGISTERED_MODEL, alias=alias)["model_version"]
        assert aliased["version"] == version


# --------------------------------------------------------------------------- DVC remote


@pytest.mark.slow
def test_dvc_pull_into_a_fresh_clone_leaves_nothing_to_reproduce(pipeline, tmp_path):
    repo, env = pipeline["repo"], pipeline["env"]
    assert any(p.is_file() for p in pipeline["remote"].rglob("*")), "dvc push put nothing in the remote"
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    env = {**env, "PYTHONPATH": str(clone / "src")}
    env.pop("MLFLOW_TRACKING_URI")  # nothing may run, so nothing may need the server
    dvc = str(VENV_BIN / "dvc")
    assert not (clone / "models").exists() and not (clone / "data").exists()
    assert "storage" in run([dvc, "remote", "list"], clone, env).stdout  # the remote came with the clone

    run([dvc, "pull"], clone, env)
    for path in (
        "data/raw/train.parquet",
        "data/scored/ppo.parquet",
        "models/policy/config.json",
        "models/ppo/" + RUN_FILE,
        "reports/reward_diff.parquet",
    ):
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    status = run([dvc, "status"], clone, env)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    repro = run([dvc, "repro"], clone, env)
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in repro.stdout, repro.stdout
    assert "Running stage" not in repro.stdout
    assert "Data and pipelines are up to date." in repro.stdout
    assert run(["git", "status", "--porcelain"], clone, env).stdout == ""


LOAD_AS_HF_USERS_DO = """
import json, sys
import torch
from peft import AutoPeftModelForSeq2SeqLM
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline, set_seed

ppo, merged, dialogue = sys.argv[1:4]
set_seed(0)  # the folder's generation_config samples, as evaluate did (the tiny policy's greedy choice is padding)
summary = pipeline("summarization", model=merged, trust_remote_code=True)(dialogue)[0]["summary_text"]
adapter = AutoPeftModelForSeq2SeqLM.from_pretrained(ppo).eval()
plain = AutoModelForSeq2SeqLM.from_pretrained(merged).eval()
tokenizer = AutoTokenizer.from_pretrained(merged)
ids = tokenizer(plain.config.prompt_template.format(dialogue=dialogue), return_tensors="pt").input_ids
start = torch.tensor([[plain.config.decoder_start_token_id]])
with torch.no_grad():
    logits = plain(input_ids=ids, decoder_input_ids=start).logits
    gap = (adapter(input_ids=ids, decoder_input_ids=start).logits - logits).abs().max().item()
print(json.dumps({"summary": summary, "gap": gap, "scale": logits.abs().max().item()}))
"""


@pytest.mark.slow
def test_the_reproduced_models_load_as_hugging_face_users_load_them_from_another_directory(pipeline, tmp_path):
    repo = pipeline["repo"]
    dialogue = pd.read_parquet(repo / "data" / "raw" / "test.parquet")["dialogue"].iloc[0]
    env = {k: v for k, v in pipeline["env"].items() if k != "PYTHONPATH"}  # nothing of the project's code
    got = run(
        [
            sys.executable,
            "-c",
            LOAD_AS_HF_USERS_DO,
            str(repo / "models" / "ppo"),
            str(repo / "models" / "merged"),
            dialogue,
        ],
        tmp_path,
        env,
    )
    result = json.loads(got.stdout.strip().splitlines()[-1])
    assert result["summary"].strip(), "pipeline('summarization') wrote nothing"
    # the same policy: apart only by the rounding of merged weights, on dot products up to d_ff long
    d_ff = TINY["policy"]["builtin"]["d_ff"]
    assert result["gap"] < tolerance(torch.float32, d_ff, result["scale"]), (
        "the PEFT adapter on its base and the merged model must be the same policy"
    )
    card = (repo / "models" / "merged" / "README.md").read_text()
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    oracle_after = evaluation["after"]["toxicity"]["oracle"]["toxic_share"]
    assert card.startswith("---\n") and f"value: {round(oracle_after, 4)}" in card


# --------------------------------------------------------------------------- a server that is down


@pytest.fixture(scope="module")
def fetched_project(tmp_path_factory) -> Path:
    """A project folder with tiny params, validated data, trained models and judges, ready for the ppo stage."""
    root = tmp_path_factory.mktemp("fetched")
    write_tiny_params(root / "params.yaml")
    params = load_params(root / "params.yaml")
    build_world(params, root)  # in this process: no interpreter start per stage
    with atomic_dir(root / "models" / "judges") as scratch:  # ppo and evaluate score with the judges
        build_judges(params, scratch)
    (root / "metrics").mkdir()
    for name in ("validation.json", "validation_labelled.json"):
        (root / "metrics" / name).write_text('{"success": true}')  # as the validate stage leaves them
    return root


def test_ppo_stage_with_tracking_server_down_fails_fast_and_writes_nothing(fetched_project):
    proc, uri = run_stage_with_server_down("ppo", fetched_project)
    message = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, proc.stderr
    assert f"cannot reach the MLflow tracking server at {uri}" in message[0]
    assert "connection refused" in message[0] and "mlflow server" in message[0]
    assert "unset MLFLOW_TRACKING_URI" in message[0]
    assert "ppo:" not in proc.stderr, "no training step may run before the check"
    assert not (fetched_project / "models" / "ppo").exists()
    assert not list((fetched_project / "models").glob(".ppo*")), "no scratch folder left behind"
    assert not (fetched_project / "metrics" / "ppo.json").exists()
    assert not (fetched_project / "plots" / "ppo").exists()
    assert not (fetched_project / "checkpoints").exists()
    assert not (fetched_project / "mlflow.db").exists()


@pytest.mark.parametrize(("stage", "model"), [("sft", "policy"), ("reward", "reward")])
def test_training_stages_with_tracking_server_down_fail_fast_and_keep_their_model(fetched_project, stage, model):
    before = sha256_tree(fetched_project / "models" / model)
    proc, uri = run_stage_with_server_down(stage, fetched_project)
    assert f"cannot reach the MLflow tracking server at {uri}" in proc.stderr
    assert "epoch" not in proc.stderr, "no training may run before the check"
    assert sha256_tree(fetched_project / "models" / model) == before
    assert not list((fetched_project / "models").glob(f".{model}*")), "no scratch folder left behind"


# --------------------------------------------------------------------------- the preflight (fast)


class Answer(http.server.BaseHTTPRequestHandler):
    status, body, content_type = 200, b"{}", "application/json"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def stand_in(status: int, body: bytes, content_type: str = "application/json"):
    """A one-answer HTTP server on 127.0.0.1 in a thread; returns (server, uri)."""
    handler = type("Handler", (Answer,), {"status": status, "body": body, "content_type": content_type})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def no_tracking_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_tracker_refuses_a_closed_port_at_once_with_the_fix(no_tracking_env, connections):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    no_tracking_env.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingError) as caught:
        Tracker("anything")
    assert len(connections.to(port)) == 1, "one attempt, no retries"
    message = str(caught.value)
    assert uri in message and "connection refused" in message
    assert "mlflow server" in message and "unset MLFLOW_TRACKING_URI" in message
    assert "\n" not in message


def test_a_server_that_never_answers_times_out_in_seconds(connections):
    with socket.socket() as sock:  # accepts connections (the kernel's backlog) and never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        with pytest.raises(TrackingError, match="no answer within the timeout"):
            check_tracking_server(uri=f"http://127.0.0.1:{port}", timeout=1.0)
    assert connections.to(port) == [1.0], "one attempt, waiting at most the given timeout, and no retry"


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (200, b'{"experiment": {}}', "application/json", None),
        (404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}', "application/json", None),  # a new experiment
        (404, b"<html>Not Found</html>", "text/html", "is it an MLflow tracking server"),
        (401, b"", "text/plain", "MLFLOW_TRACKING_USERNAME"),
        (503, b"", "text/plain", "answered HTTP 503"),
    ],
)
def test_preflight_reads_the_servers_answer(status, body, content_type, expected):
    server, uri = stand_in(status, body, content_type)
    try:
        if expected is None:
            check_tracking_server(uri=uri)
        else:
            with pytest.raises(TrackingError, match=expected):
                check_tracking_server(uri=uri)
    finally:
        server.shutdown()
        server.server_close()


def test_local_stores_are_not_asked_over_http(tmp_path):
    check_tracking_server(uri=f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")
    check_tracking_server(uri=str(tmp_path / "mlruns"))


def test_a_local_store_that_cannot_be_written_stops_the_preflight(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    check_local_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # a new store in a writable place is fine
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(TrackingError, match=r"folder.db cannot be written \(it is a folder, not a database file\)"):
        check_local_store(f"sqlite:///{tmp_path / 'folder.db'}")
    with pytest.raises(TrackingError, match=r"/proc/detox/mlflow.db cannot be written \(cannot create files in /proc"):
        check_local_store("sqlite:////proc/detox/mlflow.db")
    (tmp_path / "locked.db").write_bytes(b"this is not a database")
    with pytest.raises(TrackingError, match=r"locked.db cannot be written \(sqlite: file is not a database\)"):
        check_local_store(f"sqlite:///{tmp_path / 'locked.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'folder.db'}")
    with pytest.raises(TrackingError) as err:
        Tracker("x")
    assert "\n" not in str(err.value) and "set MLFLOW_TRACKING_URI to a store this user can write" in str(err.value)


def test_artifacts_go_under_the_project_even_after_mlflow_set_the_uri(tmp_path, monkeypatch):
    """`dvc exp run --temp` runs in a scratch copy that DVC deletes; DVC_ROOT names the real project."""
    import mlflow

    project, scratch = tmp_path / "project", tmp_path / "scratch"
    project.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))
    first = Tracker("first")  # sets MLFLOW_TRACKING_URI, as mlflow.set_tracking_uri does
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{project.resolve()}/mlflow.db"
    second = Tracker("second")
    for tracker in (first, second):
        tracker.start()
        (scratch / "note.txt").write_text(tracker.experiment)
        tracker.log_artifact(scratch / "note.txt", "notes")
        tracker.end()
        uri = mlflow.get_run(tracker.run_id).info.artifact_uri
        assert uri.startswith((project / "mlartifacts" / tracker.experiment).resolve().as_uri()), uri
    assert not (scratch / "mlruns").exists() and not (scratch / "mlartifacts").exists()
    assert len(list((project / "mlartifacts").rglob("note.txt"))) == 2
    mlflow.set_tracking_uri(None)


def test_a_server_lost_after_the_check_gives_one_tracking_error_then_silence(no_tracking_env, connections):
    server, uri = stand_in(404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}')
    no_tracking_env.setenv("MLFLOW_TRACKING_URI", uri)
    no_tracking_env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries, bounded for the test
    tracker = Tracker("lost-server")
    server.shutdown()
    server.server_close()
    port, checked = server.server_address[1], len(connections.to(server.server_address[1]))  # the preflight's
    with pytest.raises(TrackingError, match=f"lost the MLflow tracking server at {uri}"):
        tracker.start()
    assert tracker.lost and len(connections.to(port)) == checked + 1, "one attempt, no retries"
    tracker.log_metrics({"x": 1.0}, step=0)  # no-ops from here on: a failing stage unwinds at once
    tracker.end(status="KILLED")
    assert len(connections.to(port)) == checked + 1, "nothing more was sent to the lost server"


@pytest.mark.slow
def test_evaluate_stage_with_tracking_server_down_fails_before_scoring(pipeline, tmp_path):
    """Checked before minutes of generation: the outputs of the last good run stay as they were."""
    project = tmp_path / "project"
    shutil.copytree(pipeline["repo"], project, ignore=shutil.ignore_patterns(".git", ".dvc"))
    outputs = (
        "data/scored/ppo.parquet",
        "metrics/evaluate.json",
        "reports/report.md",
        "reports/report.html",
        "reports/reward_diff.parquet",
        "plots/evaluate/samples.tsv",
    )
    before = {path: (project / path).read_bytes() for path in outputs}
    proc, uri = run_stage_with_server_down("evaluate", project)
    assert f"error: cannot reach the MLflow tracking server at {uri}" in proc.stderr
    assert "evaluate:" not in proc.stderr, "no scoring may start before the check"
    assert {path: (project / path).read_bytes() for path in outputs} == before
    assert not list(project.rglob(".*.tmp")) and not list((project / "reports").glob(".figures.*"))
