"""The one place that knows MLflow.

By default runs go to an embedded store, ``sqlite:///mlflow.db`` beside
``params.yaml`` (artifacts under ``mlartifacts/``); ``MLFLOW_TRACKING_URI`` points
them at a tracking server instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"


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

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._mlflow.end_run(status=status)

    def record(self) -> dict[str, str | None]:
        """What later stages need to find this run again."""
        return {"run_id": self.run_id, "experiment": self.experiment, "tracking_uri": tracking_uri()}


def _artifact_location(experiment: str) -> str | None:
    """With the embedded store, artifacts go to ./mlartifacts beside mlflow.db; a server decides its own."""
    if os.environ.get("MLFLOW_TRACKING_URI") is not None:
        return None
    return (Path("mlartifacts") / experiment).resolve().as_uri()
