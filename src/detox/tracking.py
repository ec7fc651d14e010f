"""The one place that knows MLflow (besides the pyfunc model class in :mod:`detox.serving`).

By default runs go to an embedded store, ``sqlite:///mlflow.db`` beside
``params.yaml`` (artifacts under ``mlartifacts/``), also for experiments that DVC
runs in a scratch copy (``dvc exp run --temp``, queued runs); ``MLFLOW_TRACKING_URI`` points
them at a tracking server instead (docs/scaling-out.md).

A server that is down fails fast: :class:`Tracker` asks an ``http(s)`` server one
question with a short timeout and no retries before any run starts, and raises
:class:`~detox.errors.TrackingError` (the fix in its message) when it gets no
answer. A server lost in the middle of a run, once MLflow's own retries
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``) are spent,
raises the same error and the tracker makes no further calls.

Model registry: every evaluated policy is registered as a new version of
``tracking.registered_model`` and gets the alias ``candidate``; the alias
``champion`` moves to it only when the promotion gate passed. The version tags
``promotion.decision`` and ``promotion.reasons`` say why.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pandas as pd

from detox.errors import DetoxError, TrackingError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"
CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAME = "model"  # the logged model's name inside its run
# What the pyfunc model imports: detox.serving -> detox.generation, detox.params.
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "sentencepiece", "protobuf", "pandas",
                      "numpy", "pydantic", "pyyaml", "tqdm")
PREFLIGHT_TIMEOUT_S = 5.0  # connect and read, one try: a live server answers in milliseconds


def project_root() -> Path:
    """The DVC project's root. DVC sets ``DVC_ROOT`` for stage commands, and to the real
    project (not its scratch copy) for ``dvc exp run --temp`` and queued experiments, so
    the embedded store of every experiment is the one beside ``params.yaml``."""
    return Path(os.environ.get("DVC_ROOT") or ".")


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if os.environ.get("DVC_ROOT"):
        return f"sqlite:///{(project_root() / 'mlflow.db').resolve()}"
    return DEFAULT_TRACKING_URI


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _how_to_fix(uri: str) -> str:
    url = urlparse(uri)
    host = url.hostname if url.hostname in ("127.0.0.1", "localhost") else "0.0.0.0"
    port = url.port or (443 if url.scheme == "https" else 80)
    return (f"Start the server (e.g. `mlflow server --host {host} --port {port} --backend-store-uri "
            "sqlite:///mlflow-server.db --artifacts-destination ./mlartifacts-server`), correct MLFLOW_TRACKING_URI, "
            "or unset MLFLOW_TRACKING_URI to log to the embedded store (sqlite:///mlflow.db beside params.yaml).")


def check_tracking_server(experiment: str = "Default", uri: str | None = None,
                          timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` within ``timeout`` seconds when an ``http(s)`` tracking URI does not answer.

    One ``GET /api/2.0/mlflow/experiments/get-by-name`` without retries, with the credentials MLflow
    would use (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, ``MLFLOW_TRACKING_TOKEN``). Any other
    store (``sqlite:``, a local path, ``databricks``) is left to MLflow.
    """
    uri = uri or tracking_uri()
    if not is_remote(uri):
        return
    from mlflow.tracking._tracking_service.utils import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/get-by-name", "GET",
                                max_retries=0, backoff_factor=0, backoff_jitter=0, timeout=timeout,
                                raise_on_status=False, params={"experiment_name": experiment})
    except Exception as exc:  # requests' and MLflow's exceptions come in many classes; all mean "no answer"
        raise TrackingError(f"cannot reach the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI): "
                            f"{_reason(exc)}. {_how_to_fix(uri)}") from None
    if response.status_code == 200:
        return
    try:
        error_code = response.json().get("error_code")
    except ValueError:
        error_code = None
    if response.status_code == 404 and error_code == "RESOURCE_DOES_NOT_EXIST":
        return  # a new experiment: created by the first run
    if response.status_code in (401, 403):
        raise TrackingError(f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) refused this client "
                            f"(HTTP {response.status_code}): set MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, to credentials it accepts, "
                            "or unset MLFLOW_TRACKING_URI to log to the embedded store.")
    raise TrackingError(f"{uri} (MLFLOW_TRACKING_URI) answered HTTP {response.status_code} to an MLflow API "
                        f"request ({error_code or 'not an MLflow error'}): is it an MLflow tracking server, and is "
                        f"the URI its root? {_how_to_fix(uri)}")


def _reason(exc: BaseException) -> str:
    """A short, one-line cause of a failed HTTP request (refused, timed out, unknown host)."""
    text = " ".join(str(e) for e in _chain(exc))
    for pattern, reason in ((r"Connection refused", "connection refused (nothing listens on that port)"),
                            (r"Read timed out", "no answer within the timeout"),
                            (r"timed out", "the connection timed out"),
                            (r"Name or service not known|nodename nor servname|Temporary failure in name resolution"
                             r"|getaddrinfo failed", "the host name does not resolve"),
                            (r"No route to host|Network is unreachable", "no route to the host"),
                            (r"SSL|certificate", "TLS handshake failed (MLFLOW_TRACKING_INSECURE_TLS or "
                                                 "MLFLOW_TRACKING_SERVER_CERT_PATH may help)")):
        if re.search(pattern, text):
            return reason
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:200]}"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_connection_failure(exc: BaseException) -> bool:
    """True when ``exc`` (an MLflow or requests error) means the tracking server could not be reached."""
    import requests

    return any(isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))
               for e in _chain(exc))


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """A Tracker call: a no-op when disabled or once the server is lost; a lost server -> TrackingError."""

    @functools.wraps(method)
    def call(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled or self.lost:
            return None
        try:
            return method(self, *args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            if not (is_remote(tracking_uri()) and _is_connection_failure(exc)):
                raise
            self.lost = True
            raise _lost(method.__name__, exc) from None

    return call  # type: ignore[return-value]


def _lost(what: str, exc: BaseException) -> TrackingError:
    return TrackingError(
        f"lost the MLflow tracking server at {tracking_uri()} (MLFLOW_TRACKING_URI) in {what}: {_reason(exc)}, "
        "after MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT). Bring it back and "
        "run the stage again: a PPO run resumes from its last checkpoint in checkpoints/ppo/ into the same MLflow run."
    )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ppo": {"kl": {"target": 6}}}`` -> ``{"ppo.kl.target": 6}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """A thin handle on one MLflow run; every method is a no-op when ``enabled`` is False.

    Only the main process of a multi-process run talks to MLflow. Creating an enabled tracker
    checks that a tracking server (``MLFLOW_TRACKING_URI=http(s)://...``) answers, so a stage
    fails within seconds, before any work, when it does not (:func:`check_tracking_server`).
    """

    def __init__(self, experiment: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.experiment = experiment
        self.run_id: str | None = None
        self.lost = False  # the server stopped answering: no further calls
        if enabled:
            import mlflow

            check_tracking_server(experiment)
            check_local_store()
            mlflow.set_tracking_uri(tracking_uri())
            self._mlflow = mlflow

    @_guarded
    def start(self, run_id: str | None = None, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Start a new run, or reopen ``run_id`` (a resumed training run keeps its run)."""
        if not self.enabled:
            return
        mlflow = self._mlflow
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is None:
            experiment_id = mlflow.create_experiment(
                self.experiment, artifact_location=_artifact_location(self.experiment))
        else:
            experiment_id = experiment.experiment_id
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                               run_name=run_name, tags=dict(tags or {}))
        self.run_id = run.info.run_id

    @_guarded
    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            flat = {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(params).items()}
            self._mlflow.log_params(flat)

    @_guarded
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    @_guarded
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path)

    @_guarded
    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifacts(str(directory), artifact_path)

    @_guarded
    def log_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """A table the MLflow UI shows in its artifact view and its evaluation tab (``*.json``)."""
        if self.enabled:
            self._mlflow.log_table(data=table, artifact_file=artifact_file)

    @_guarded
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @_guarded
    def log_policy_model(
        self,
        python_model: Any,
        policy_dir: str | Path,
        config: Mapping[str, Any],
        signature: Any,
        registered_model: str,
        input_example: pd.DataFrame | None = None,
        artifact: str = "policy",
    ) -> str | None:
        """Log a pyfunc model into this run; register it as a new version of ``registered_model`` (returned).

        ``policy_dir`` becomes the model's artifact named ``artifact`` (a policy, or the reward model).
        The ``detox`` package travels with the model (``code_paths``), so its class is importable wherever
        the model is loaded or served.
        """
        if not self.enabled:
            return None
        import mlflow.pyfunc

        import detox

        with tempfile.TemporaryDirectory(prefix="detox-code-") as tmp:
            code = Path(tmp) / "detox"
            shutil.copytree(Path(detox.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=python_model,
                artifacts={artifact: str(policy_dir)},
                model_config=dict(config),
                signature=signature,
                input_example=input_example,
                code_paths=[str(code)],
                pip_requirements=pip_requirements(),
                registered_model_name=registered_model,
            )
        return str(info.registered_model_version)

    @_guarded
    def reopen(self, run_id: str | None, tags: Mapping[str, str] | None = None) -> str | None:
        """Reopen ``run_id`` when this store has it and return its status before; else start a new run.

        A models/ppo/ checked out from a DVC remote may name a run recorded in another store: then
        the new run (status None returned) is tagged ``ppo_run_id`` with the missing id.
        """
        if not self.enabled:
            return None
        if run_id is not None:
            try:
                status = self._mlflow.get_run(run_id).info.status
            except self._mlflow.exceptions.MlflowException as exc:
                if _is_connection_failure(exc):
                    raise
                log.warning("MLflow run %s is not in %s: logging into a new run of experiment %r",
                            run_id, tracking_uri(), self.experiment)
            else:
                self.start(run_id=run_id)
                if tags:
                    self.set_tags(tags)
                return status
        self.start(tags={**(tags or {}), **({"ppo_run_id": run_id} if run_id else {})})
        return None

    @_guarded
    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._mlflow.end_run(status=status)

    def record(self) -> dict[str, str | None]:
        """What later stages need to find this run again."""
        return {"run_id": self.run_id, "experiment": self.experiment, "tracking_uri": tracking_uri()}


def read_run_record(model_dir: str | Path) -> dict[str, Any]:
    """The run record a training stage left in ``model_dir`` (run id, experiment, tracking URI)."""
    path = Path(model_dir) / RUN_FILE
    if not path.is_file():
        raise DetoxError(f"{path}: not found; the ppo stage writes it: run `dvc repro ppo`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetoxError(f"{path}: not valid JSON ({exc}); run `dvc repro -f ppo` to rewrite it") from None
    if not isinstance(record, dict):
        raise DetoxError(f"{path}: expected a JSON object with run_id and experiment; run `dvc repro -f ppo`")
    return record


def numeric_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metrics dict, flattened (``before.reward_mean``); booleans as 0/1, None dropped."""
    flat = flatten(tree)
    return {f"{prefix}{k}": float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and v != v)}


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc model, from what is installed here (local tags like +cpu dropped)."""
    pins = []
    for package in MODEL_REQUIREMENTS:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{package}=={re.sub(r'[+].*$', '', version)}")
    return pins


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    aliases: tuple[str, ...]


EVIDENCE_TAG = "evidence."  # the judged numbers a version was promoted or rejected on


def tag_version(registered_model: str, version: str, tags: Mapping[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, str(value))


def version_with_content(registered_model: str, sha256: str) -> Any | None:
    """The newest version of ``registered_model`` whose model folder had this content hash (tag ``sha256``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    try:
        found = client.search_model_versions(f"name = '{registered_model}' and tags.sha256 = '{sha256}'")
    except mlflow.exceptions.MlflowException as exc:
        if _is_connection_failure(exc):
            raise
        return None
    return max(found, key=lambda v: int(v.version), default=None)


def lineage_tags(models: Mapping[str, tuple[Path, str]]) -> dict[str, str]:
    """Run tags naming the registered versions a training started from, found by content hash.

    ``models`` maps a role (``sft``, ``reward``) to (model folder, registered model name). A folder no
    version was registered for (a hub model used as it is, or one checked out from a DVC remote
    without its runs) is tagged ``unregistered``; its hash is recorded either way.
    """
    from detox.io import sha256_tree

    tags: dict[str, str] = {}
    for role, (folder, name) in models.items():
        sha = sha256_tree(folder)
        version = version_with_content(name, sha)
        tags[f"lineage.{role}.sha256"] = sha
        tags[f"lineage.{role}.model"] = f"{name}/{version.version}" if version else "unregistered"
        if version is not None and version.run_id:
            tags[f"lineage.{role}.run_id"] = version.run_id
    return tags


def champion_evidence(registered_model: str) -> dict[str, Any] | None:
    """The judged numbers of the version aliased ``champion`` (from its ``evidence.*`` tags); None without one.

    A champion registered before versions carried evidence gives ``{"version": ...}`` alone.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    try:
        version = client.get_model_version_by_alias(registered_model, CHAMPION)
    except mlflow.exceptions.MlflowException as exc:
        if _is_connection_failure(exc):
            raise
        return None  # no such model yet, or no champion alias
    evidence: dict[str, Any] = {"version": str(version.version)}
    for key, value in version.tags.items():
        if key.startswith(EVIDENCE_TAG):
            try:
                evidence[key[len(EVIDENCE_TAG):]] = json.loads(value)
            except ValueError:  # a tag set by hand
                evidence[key[len(EVIDENCE_TAG):]] = value
    return evidence


def apply_promotion(registered_model: str, version: str, promoted: bool, reasons: Sequence[str],
                    evidence: Mapping[str, Any] | None = None) -> RegisteredVersion:
    """Alias the version ``candidate`` (and ``champion`` when promoted); tag the decision, its reasons and
    the judged numbers (``evidence.*``) that a later challenger is compared with."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    client.set_model_version_tag(registered_model, version, "promotion.decision",
                                 "promoted" if promoted else "rejected")
    client.set_model_version_tag(registered_model, version, "promotion.reasons", "; ".join(reasons))
    for key, value in (evidence or {}).items():
        client.set_model_version_tag(registered_model, version, f"{EVIDENCE_TAG}{key}", json.dumps(value))
    client.set_registered_model_alias(registered_model, CANDIDATE, version)
    if promoted:
        client.set_registered_model_alias(registered_model, CHAMPION, version)
    aliases = client.get_model_version(registered_model, version).aliases
    return RegisteredVersion(registered_model, version, tuple(sorted(aliases)))


@dataclass(frozen=True)
class PolicyModel:
    """A pyfunc model to log and register: the class instance, its policy folder, config and signature."""

    python_model: Any
    policy_dir: Path
    config: Mapping[str, Any]
    signature: Any
    input_example: pd.DataFrame | None = None
    artifact: str = "policy"  # the artifact's name in the pyfunc model (``reward`` for the reward model)


def log_training(
    tracker: Tracker,
    stage: str,
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    metrics: Mapping[str, Any],
    artifacts: Sequence[Path],
    model: PolicyModel | None,
    registered_model: str,
    version_tags: Mapping[str, Any],
) -> str | None:
    """One training stage's MLflow run: its params, a metric per epoch (``<stage>/epoch/train_loss`` at step =
    epoch), the final metrics, ``artifacts`` (plots) and the model, registered as a new version of
    ``registered_model`` and tagged with ``version_tags`` (the folder's ``sha256`` among them, which later
    runs find it by: :func:`lineage_tags`). Returns the version, or None when no model was logged."""
    tracker.start(run_name=stage, tags={"stage": stage})
    version = None
    try:
        tracker.log_params(params)
        for row in history:
            tracker.log_metrics({f"{stage}/epoch/{key}": value for key, value in row.items()
                                 if key != "epoch" and value is not None}, step=int(row["epoch"]))
        tracker.log_metrics(numeric_metrics(metrics, f"{stage}/"))
        for path in artifacts:
            tracker.log_artifact(path, stage)
        if model is not None and tracker.enabled:
            version = tracker.log_policy_model(model.python_model, model.policy_dir, model.config, model.signature,
                                               registered_model, model.input_example, artifact=model.artifact)
            if version is not None:
                tag_version(registered_model, version, version_tags)
                tracker.set_tags({f"{stage}.model_version": f"{registered_model}/{version}"})
    except BaseException:
        tracker.end(status="FAILED")
        raise
    tracker.end()
    return version


def log_evaluation(
    run: Mapping[str, Any],
    experiment: str,
    metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    artifacts: Mapping[str, Sequence[Path]],
    model: PolicyModel,
    registered_model: str,
    promoted: bool,
    reasons: Sequence[str],
    evidence: Mapping[str, Any] | None = None,
) -> RegisteredVersion:
    """Log an evaluation into the training run ``run`` (a run record) and register its policy.

    Metrics go under ``evaluate/`` and ``baseline/``, ``tables`` (artifact file -> frame, e.g. the
    reward diff table to ``evaluate/reward_diff.json``) through ``log_table``, ``artifacts`` maps artifact folders to
    files or folders. The new model version is aliased ``candidate`` (and ``champion``
    when ``promoted``) and tagged with the decision and its reasons. A failure leaves the
    training run in the status it had (tagged ``evaluate.status: failed``), not FAILED: the
    training did not fail.
    """
    decision = "promoted" if promoted else "rejected"
    if run.get("tracking_uri") not in (None, tracking_uri()):
        log.warning("the training run was recorded in %s; logging the evaluation to %s",
                    run["tracking_uri"], tracking_uri())
    tracker = Tracker(run.get("experiment") or experiment)
    previous = tracker.reopen(run.get("run_id"), tags={"evaluate.promotion": decision, "evaluate.status": "running"})
    try:
        tracker.log_metrics(numeric_metrics(metrics, "evaluate/"))
        tracker.log_metrics(numeric_metrics(baseline_metrics, "baseline/"))
        for artifact_file, table in tables.items():
            tracker.log_table(table, artifact_file)
        for folder, paths in artifacts.items():
            for path in paths:
                (tracker.log_artifacts if Path(path).is_dir() else tracker.log_artifact)(path, folder)
        version = tracker.log_policy_model(model.python_model, model.policy_dir, model.config, model.signature,
                                           registered_model, model.input_example)
        try:
            registered = apply_promotion(registered_model, version, promoted, reasons, evidence)
        except Exception as exc:
            if not (is_remote(tracking_uri()) and _is_connection_failure(exc)):
                raise
            tracker.lost = True
            raise _lost("apply_promotion", exc) from None
        if tracker.run_id is not None and version is not None:  # the version shows what it was trained from
            run_tags = tracker._mlflow.get_run(tracker.run_id).data.tags
            tag_version(registered_model, version, {k: v for k, v in run_tags.items() if k.startswith("lineage.")})
        tracker.set_tags({"evaluate.model_version": version, "evaluate.status": "finished"})
    except BaseException:
        tracker.set_tags({"evaluate.status": "failed"})
        tracker.end(status=previous or "FAILED")
        raise
    tracker.end(status=previous or "FINISHED")
    return registered


def _artifact_location(experiment: str) -> str | None:
    """With a local store (sqlite or a folder), artifacts go to mlartifacts/ beside params.yaml (the DVC
    project's root, also for `dvc exp run --temp`); a tracking server decides its own.

    Decided from the URI, not from whether ``MLFLOW_TRACKING_URI`` is set: ``mlflow.set_tracking_uri``
    sets that variable, so after the first tracker it is always set.
    """
    if urlparse(tracking_uri()).scheme in ("http", "https", "databricks"):
        return None
    return (project_root() / "mlartifacts" / experiment).resolve().as_uri()


def preflight(experiment: str = "Default") -> None:
    """Before any work: a tracking server answers, or the local store and its artifact folder can be written."""
    check_tracking_server(experiment)
    check_local_store()


def _local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI writes to (``sqlite:///x.db``, ``file:///x``, a path)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path
        return Path(path) if path and path != ":memory:" else None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def _probe_writable(path: Path, is_file: bool) -> str | None:
    """None when ``path`` (a file, or a folder to create files in) can be written; else why not."""
    import sqlite3

    if is_file and path.is_dir():
        return "it is a folder, not a database file"
    if is_file and path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5) as conn:
                conn.execute("BEGIN IMMEDIATE")  # takes the write lock; refused on a read-only file
                conn.rollback()
        except sqlite3.Error as exc:
            return f"sqlite: {exc}"
        if not os.access(path, os.W_OK):
            return "no write permission"
        return None
    folder = path.parent if is_file else path
    while not folder.exists():
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".detox-write-check-", dir=folder)
    except OSError as exc:
        return f"cannot create files in {folder}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(probe)
    return None


def check_local_store(uri: str | None = None) -> None:
    """Raise :class:`TrackingError` (one line) when a local store or its artifact folder cannot be written.

    Runs before any work, so a read-only ``mlflow.db`` stops a stage at once instead of after training."""
    uri = uri or tracking_uri()
    path = _local_store_path(uri)
    if path is None:
        return
    checks = [(path, urlparse(uri).scheme == "sqlite")]
    if urlparse(uri).scheme == "sqlite":
        checks.append((project_root() / "mlartifacts", False))
    for target, is_file in checks:
        reason = _probe_writable(target.resolve() if not target.is_absolute() else target, is_file)
        if reason:
            raise TrackingError(f"the MLflow store {target} cannot be written ({reason}); make it writable "
                                "(e.g. chmod u+w), or set MLFLOW_TRACKING_URI to a store this user can write")
