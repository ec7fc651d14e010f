"""The MLflow run of a stage: :class:`Tracker`, and the run record a training stage leaves beside its model.

Creating an enabled :class:`Tracker` first checks the store (:func:`detox.tracking.store.preflight`).
:meth:`Tracker.run` spans a stage's work: the run is started before it and ended after it,
FINISHED, or KILLED when interrupted, or FAILED on any error, after removing a logged model that
the error left half-written. A server lost in the middle of a run, once MLflow's own retries
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``) are spent, raises
:class:`~detox.common.errors.TrackingError` and the tracker makes no further calls.

Each stage writes only its own run: a training stage (sft, reward, ppo) leaves a run record
(:data:`RUN_FILE`) in its model folder; every evaluation of the PPO policy is a run of its own
(``evaluate · <experiment>``), a child of the PPO run it evaluated
(:func:`detox.tracking.results.evaluation_run`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from detox.common.errors import TrackingError
from detox.tracking import provenance
from detox.tracking.registry import PolicyModel, discard_unfinished_models, log_model
from detox.tracking.store import (
    artifact_location,
    disk_full,
    failure_reason,
    is_connection_failure,
    is_remote,
    preflight,
    tracking_uri,
    ui_url,
)

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
# The experiment kind the MLflow UI (3.x) reads to choose its layout; the value is the UI's
# "machine learning" kind (its other values: genai_development, and *_inferred guesses). MLflow
# 3.17's UI ignores it in favour of its GenAI / model training switch (see store.ui_url), but the
# tag still names the experiment's kind in the API and in UIs that read it.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

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
            if not (is_remote(tracking_uri()) and is_connection_failure(exc)):
                raise
            self.lost = True
            raise lost_server(method.__name__, exc) from None

    return call  # type: ignore[return-value]


def lost_server(what: str, exc: BaseException) -> TrackingError:
    """The error of a tracking server lost in ``what``, after MLflow's own retries."""
    return TrackingError(
        f"lost the MLflow tracking server at {tracking_uri()} (MLFLOW_TRACKING_URI) in {what}: {failure_reason(exc)}, "
        "after MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT). Bring it back and "
        "run the stage again: a PPO run resumes from its last checkpoint in checkpoints/ppo/ into the same MLflow run."
    )


def ensure_experiment(name: str) -> str:
    """The id of the MLflow experiment ``name``, created when missing, and marked as a machine-learning
    experiment (tag ``mlflow.experimentKind``). A kind chosen by hand (in the UI) is left as it is; one
    the UI only inferred is replaced. The UI of MLflow 3.17 opens on runs only with the URL parameter of
    :func:`detox.tracking.store.ui_url`."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        return mlflow.create_experiment(
            name, artifact_location=artifact_location(name), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    kind = experiment.tags.get(EXPERIMENT_KIND_TAG, "")
    if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
        mlflow.MlflowClient(tracking_uri()).set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment.experiment_id


# Hand-written, not pandas.json_normalize: that turns numpy scalars into Python ones (numeric_metrics would then
# log numbers it skips today) and puts top-level keys first; the keys and values logged must stay as they are.
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
    fails within seconds, before any work, when it does not, and that a local store can be written and
    belongs to this project (:func:`~detox.tracking.store.preflight`).
    """

    def __init__(self, experiment: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.experiment = experiment
        self.run_id: str | None = None
        self._link: str | None = None  # the run's page in the MLflow UI
        self.lost = False  # the server stopped answering: no further calls
        if enabled:
            import mlflow

            preflight(experiment)
            mlflow.set_tracking_uri(tracking_uri())
            self._mlflow = mlflow

    @_guarded
    def start(
        self,
        run_id: str | None = None,
        stage: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        """Start a new run, or reopen ``run_id`` (a resumed training run keeps its run and its name).

        A new run of ``stage`` is named after the DVC experiment (``ppo · <experiment>``) and tagged
        ``stage``, ``dvc.exp_name`` and ``git.commit`` (:mod:`detox.tracking.provenance`); with
        ``parent_run_id`` it is that run's child (MLflow's ``mlflow.parentRunId``), which is not written to.
        """
        mlflow = self._mlflow
        experiment_id = ensure_experiment(self.experiment)
        run_tags = dict(tags or {})
        if run_id is None:
            run_tags = {**({"stage": stage} if stage else {}), **provenance.run_tags(), **run_tags}
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=provenance.run_name(stage) if stage and run_id is None else None,
            tags=run_tags,
            parent_run_id=parent_run_id,
        )
        self.run_id = run.info.run_id
        self._link = f"'{run.info.run_name}': {ui_url(f'experiments/{run.info.experiment_id}/runs/{self.run_id}')}"

    @contextlib.contextmanager
    def run(
        self,
        stage: str,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[Tracker]:
        """The run of a stage's work, started (or reopened: ``run_id``) before it and ended after it.

        ``params`` are logged when the run is new. The run ends FINISHED; KILLED when interrupted
        (Ctrl-C, SIGTERM); FAILED on any other error (:meth:`fail`), which is raised on: a full disk
        as a :class:`TrackingError` that says where (the stage's outputs are replaced atomically, so
        the previous ones are still there).
        """
        self.start(run_id=run_id, stage=stage, tags=tags, parent_run_id=parent_run_id)
        try:
            if params is not None and run_id is None:
                self.log_params(params)
            yield self
        except BaseException as exc:
            ended = self.fail(exc)
            full = disk_full(exc) if isinstance(exc, Exception) else None
            if full is not None:
                run = "was ended FAILED without a half-written model" if ended else "is left RUNNING (see the log)"
                raise TrackingError(
                    f"no space left on the disk of {full}; free some space there (or set MLFLOW_TRACKING_URI to "
                    f"a store on another disk) and run the stage again: its previous outputs are kept, and MLflow "
                    f"run {self.run_id} {run}"
                ) from exc
            raise
        self.end()
        self.announce()

    def fail(self, exc: BaseException) -> bool:
        """End the run KILLED (``exc`` interrupted the stage) or FAILED, never leaving it RUNNING; whether
        it could be ended.

        A logged model that ``exc`` left half-written is deleted first, with its artifacts: on a full
        disk that frees the space the status update needs. Errors of this clean-up are logged, not
        raised, so that ``exc`` is what the stage reports.
        """
        if not self.enabled or self.lost or self.run_id is None:
            return False
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            for model_id in discard_unfinished_models(self.run_id):
                log.warning(
                    "deleted the logged model %s of run %s, which the failure left unfinished", model_id, self.run_id
                )
        except Exception as error:  # the store itself may be what failed
            log.error("could not delete the unfinished logged models of run %s: %s", self.run_id, failure_reason(error))
        try:
            self._mlflow.end_run(status=status)
        except Exception as error:
            log.error(
                "MLflow run %s is left RUNNING (%s); once the store can be written again, end it with "
                "`mlflow.MlflowClient().set_terminated('%s', 'FAILED')`",
                self.run_id,
                failure_reason(error),
                self.run_id,
            )
            return False
        return True

    def announce(self) -> None:
        """Log where the run is in the MLflow UI (a link that opens the UI on runs, not on GenAI traces)."""
        if self._link is not None and not self.lost:
            log.info("MLflow run %s", self._link)

    @_guarded
    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(params).items()}
        self._mlflow.log_params(flat)

    @_guarded
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """Metrics of this run at ``step``; with ``model_id``, also of that logged model (MLflow 3)."""
        if metrics:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id)

    @_guarded
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self._mlflow.log_dict(dict(data), artifact_file)

    @_guarded
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path)

    @_guarded
    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifacts(str(directory), artifact_path)

    @_guarded
    def log_table(self, table: pd.DataFrame, artifact_file: str) -> None:
        """A table the MLflow UI shows in its artifact view and its evaluation tab (``*.json``)."""
        self._mlflow.log_table(data=table, artifact_file=artifact_file)

    @_guarded
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @_guarded
    def tags_of(self, run_id: str) -> dict[str, str] | None:
        """The tags of the run ``run_id``, or None when this store has no such run."""
        try:
            return dict(self._mlflow.get_run(run_id).data.tags)
        except self._mlflow.exceptions.MlflowException as exc:
            if is_connection_failure(exc):
                raise
            return None

    @_guarded
    def log_model(self, model: PolicyModel, registered_model: str, step: int = 0) -> Any:
        """Log ``model`` into this run and register it as a new version of ``registered_model``; MLflow's
        ``ModelInfo`` (``registered_model_version``, ``model_id``), or None when disabled. The model
        carries the run's metrics logged at ``step``."""
        return log_model(model, registered_model, step=step)

    @_guarded
    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._mlflow.end_run(status=status)

    def record(self) -> dict[str, str | None]:
        """What later stages need to find this run again."""
        return {"run_id": self.run_id, "experiment": self.experiment, "tracking_uri": tracking_uri()}
