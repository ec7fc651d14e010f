"""The one place that knows MLflow (besides the pyfunc model class in :mod:`detox.serving`).

By default runs go to an embedded store, ``sqlite:///mlflow.db`` beside
``params.yaml`` (artifacts under ``mlartifacts/``); ``MLFLOW_TRACKING_URI`` points
them at a tracking server instead.

Model registry: every evaluated policy is registered as a new version of
``tracking.registered_model`` and gets the alias ``candidate``; the alias
``champion`` moves to it only when the promotion gate passed. The version tags
``promotion.decision`` and ``promotion.reasons`` say why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from detox.errors import DetoxError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"
CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAME = "model"  # the logged model's name inside its run
# What the pyfunc model imports: detox.serving -> detox.generation, detox.params.
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "sentencepiece", "protobuf", "pandas",
                      "numpy", "pydantic", "pyyaml", "tqdm")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


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

    Only the main process of a multi-process run talks to MLflow.
    """

    def __init__(self, experiment: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.experiment = experiment
        self.run_id: str | None = None
        if enabled:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri())
            self._mlflow = mlflow

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

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            flat = {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(params).items()}
            self._mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifacts(str(directory), artifact_path)

    def log_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """A table the MLflow UI shows in its artifact view and its evaluation tab (``*.json``)."""
        if self.enabled:
            self._mlflow.log_table(data=table, artifact_file=artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_policy_model(
        self,
        python_model: Any,
        policy_dir: str | Path,
        config: Mapping[str, Any],
        signature: Any,
        registered_model: str,
        input_example: pd.DataFrame | None = None,
    ) -> str | None:
        """Log a pyfunc model into this run; register it as a new version of ``registered_model`` (returned).

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
                artifacts={"policy": str(policy_dir)},
                model_config=dict(config),
                signature=signature,
                input_example=input_example,
                code_paths=[str(code)],
                pip_requirements=pip_requirements(),
                registered_model_name=registered_model,
            )
        return str(info.registered_model_version)

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
            except self._mlflow.exceptions.MlflowException:
                log.warning("MLflow run %s is not in %s: logging into a new run of experiment %r",
                            run_id, tracking_uri(), self.experiment)
            else:
                self.start(run_id=run_id)
                if tags:
                    self.set_tags(tags)
                return status
        self.start(tags={**(tags or {}), **({"ppo_run_id": run_id} if run_id else {})})
        return None

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
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


def apply_promotion(registered_model: str, version: str, promoted: bool, reasons: Sequence[str]) -> RegisteredVersion:
    """Alias the version ``candidate`` (and ``champion`` when promoted); tag the decision and its reasons."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    client.set_model_version_tag(registered_model, version, "promotion.decision",
                                 "promoted" if promoted else "rejected")
    client.set_model_version_tag(registered_model, version, "promotion.reasons", "; ".join(reasons))
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


def log_evaluation(
    run: Mapping[str, Any],
    experiment: str,
    metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Any],
    table: pd.DataFrame,
    artifacts: Mapping[str, Sequence[Path]],
    model: PolicyModel,
    registered_model: str,
    promoted: bool,
    reasons: Sequence[str],
) -> RegisteredVersion:
    """Log an evaluation into the training run ``run`` (a run record) and register its policy.

    Metrics go under ``evaluate/`` and ``baseline/``, the reward diff table to
    ``evaluate/reward_diff.json`` (``log_table``), ``artifacts`` maps artifact folders to
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
        tracker.log_table(table, "evaluate/reward_diff.json")
        for folder, paths in artifacts.items():
            for path in paths:
                (tracker.log_artifacts if Path(path).is_dir() else tracker.log_artifact)(path, folder)
        version = tracker.log_policy_model(model.python_model, model.policy_dir, model.config, model.signature,
                                           registered_model, model.input_example)
        registered = apply_promotion(registered_model, version, promoted, reasons)
        tracker.set_tags({"evaluate.model_version": version, "evaluate.status": "finished"})
    except BaseException:
        tracker.set_tags({"evaluate.status": "failed"})
        tracker.end(status=previous or "FAILED")
        raise
    tracker.end(status=previous or "FINISHED")
    return registered


def _artifact_location(experiment: str) -> str | None:
    """With the embedded store, artifacts go to ./mlartifacts beside mlflow.db; a server decides its own."""
    if os.environ.get("MLFLOW_TRACKING_URI") is not None:
        return None
    return (Path("mlartifacts") / experiment).resolve().as_uri()
