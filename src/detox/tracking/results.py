"""What the training and evaluate stages log into their MLflow runs (:class:`~detox.tracking.runs.Tracker`).

A training stage logs its epochs, final metrics, plots and model (:func:`log_training`); every
evaluation of the PPO policy is a run of its own (``evaluate · <experiment>``, :func:`evaluation_run`),
a child of the PPO run it evaluated, into which :func:`log_evaluation` logs an
:class:`EvaluationRecord` and registers the policy (:class:`Registration`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from detox.common.errors import DetoxError
from detox.tracking.registry import PolicyModel, RegisteredVersion, apply_promotion, tag_version
from detox.tracking.runs import RUN_FILE, Tracker, flatten, lost_server
from detox.tracking.store import is_connection_failure, is_remote, tracking_uri

log = logging.getLogger(__name__)

# An evaluate run names the PPO run it evaluated (also when that run is in another store, so
# that it cannot be its parent), and the stage that trained it.
TRAINED_RUN_TAG = "ppo.run_id"
LINEAGE_TAG = "lineage."


def numeric_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metrics dict, flattened (``before.reward_mean``); booleans as 0/1, None dropped."""
    flat = flatten(tree)
    return {
        f"{prefix}{k}": float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float)) and not (isinstance(v, float) and v != v)
    }


def log_training(
    tracker: Tracker,
    stage: str,
    history: Sequence[Mapping[str, float]],
    metrics: Mapping[str, Any],
    artifacts: Sequence[Path],
    model: PolicyModel | None,
    registered_model: str,
    version_tags: Mapping[str, Any],
) -> str | None:
    """What a training stage logs into its run (:meth:`Tracker.run`) once it trained: a metric per epoch
    (``<stage>/epoch/train_loss`` at step = epoch), the final metrics, ``artifacts`` (plots) and the model,
    registered as a new version of ``registered_model`` and tagged with ``version_tags`` (the folder's
    ``sha256`` among them, which later runs find it by: :func:`lineage_tags`). Returns the version, or
    None when no model was logged."""
    for row in history:
        tracker.log_metrics(
            {f"{stage}/epoch/{key}": value for key, value in row.items() if key != "epoch" and value is not None},
            step=int(row["epoch"]),
        )
    tracker.log_metrics(numeric_metrics(metrics, f"{stage}/"))
    for path in artifacts:
        tracker.log_artifact(path, stage)
    if model is None or not tracker.enabled:
        return None
    info = tracker.log_model(model, registered_model)
    version = None if info is None else str(info.registered_model_version)
    if version is not None:
        tag_version(registered_model, version, version_tags)
        tracker.set_tags({f"{stage}.model_version": f"{registered_model}/{version}"})
    return version


# The judged numbers and the model they describe are logged at this step, which no other metric uses:
# a model logged at step s carries the run's metrics of step s (MLflow 3), so the registered policy
# carries its results, not the timings.
RESULTS_STEP = -1
RESULT_QUALITY = {
    "rougeL": ("rougeL",),
    "reward_mean": ("reward_mean",),
    "fluency_nll": ("quality", "fluency_nll"),
    "distinct_2": ("quality", "distinct_2"),
}


def result_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers of an evaluation a reviewer looks at first, one chart section per source in the
    MLflow UI: ``results/<judge or reward_model>/{toxic_share,toxicity_mean}_{before,after}`` and
    ``improvement_pct`` (of the mean toxicity), ``results/quality/{rougeL,reward_mean,fluency_nll,
    distinct_2}_{before,after}``, ``results/promotion/{promoted,n_dialogues}``. All the numbers are in
    the run's artifact ``evaluate/evaluate.json``."""

    def dig(tree: Any, *keys: str) -> Any:
        for key in keys:
            tree = tree.get(key) if isinstance(tree, Mapping) else None
        return tree

    results: dict[str, Any] = {}
    sources = list(dig(metrics, "before", "toxicity") or {})
    for source in sources:
        for key in ("toxic_share", "toxicity_mean"):
            for side in ("before", "after"):
                results[f"results/{source}/{key}_{side}"] = dig(metrics, side, "toxicity", source, key)
        results[f"results/{source}/improvement_pct"] = dig(metrics, "improvement_pct", source, "toxicity_mean")
    for name, path in RESULT_QUALITY.items():
        for side in ("before", "after"):
            results[f"results/quality/{name}_{side}"] = dig(metrics, side, *path)
    results["results/promotion/promoted"] = dig(metrics, "promotion", "promoted")
    results["results/promotion/n_dialogues"] = metrics.get("n")
    return numeric_metrics(results)


@contextlib.contextmanager
def evaluation_run(
    tracker: Tracker, trained: Mapping[str, Any], params: Mapping[str, Any], tags: Mapping[str, str] | None = None
) -> Iterator[Tracker]:
    """A new run ``evaluate · <experiment>`` for one evaluation of the policy that the run record
    ``trained`` describes, spanning the evaluation (:meth:`Tracker.run`).

    It is a child of that training run when this store has it, and is tagged with its id
    (:data:`TRAINED_RUN_TAG`) and its ``lineage.*`` tags either way; ``params`` are the ones the
    evaluation reads, ``tags`` e.g. the ``dvc.lock`` entry of the trained policy
    (:func:`detox.tracking.provenance.lock_tags`). The training run is only read.
    """
    if trained.get("tracking_uri") not in (None, tracking_uri()):
        log.warning(
            "the training run was recorded in %s; logging the evaluation to %s", trained["tracking_uri"], tracking_uri()
        )
    run_id = trained.get("run_id")
    trained_tags = tracker.tags_of(run_id) if run_id else None
    if run_id and trained_tags is None and tracker.enabled:
        log.warning(
            "MLflow run %s is not in %s: the evaluation run names it in its tag %s but cannot be its child",
            run_id,
            tracking_uri(),
            TRAINED_RUN_TAG,
        )
    link = {TRAINED_RUN_TAG: run_id} if run_id else {}
    lineage = {k: v for k, v in (trained_tags or {}).items() if k.startswith(LINEAGE_TAG)}
    with tracker.run(
        "evaluate",
        tags={**(tags or {}), **link, **lineage},
        params=params,
        parent_run_id=run_id if trained_tags is not None else None,
    ) as run:
        yield run


@dataclass(frozen=True)
class EvaluationRecord:
    """What an evaluation logs besides its model: its numbers, tables, files and timings."""

    metrics: Mapping[str, Any]  # metrics/evaluate.json
    baseline_metrics: Mapping[str, Any]  # metrics/baseline.json
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # artifact file -> frame (log_table)
    artifacts: Mapping[str, Sequence[Path]] = field(default_factory=dict)  # artifact folder -> files or folders
    timings: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # stage -> {key: seconds or rate}


@dataclass(frozen=True)
class Registration:
    """The policy an evaluation registers, and the promotion decision on it."""

    model: PolicyModel
    registered_model: str
    promoted: bool
    reasons: Sequence[str]
    evidence: Mapping[str, Any] | None = None  # the judged numbers the version carries as tags


def log_evaluation(tracker: Tracker, record: EvaluationRecord, registration: Registration) -> RegisteredVersion | None:
    """Log an evaluation into its own run (:func:`evaluation_run`) and register its policy.

    The judged before/after numbers go to metrics under ``results/`` (:func:`result_metrics`), and
    to the logged model (its metrics in the MLflow UI); all of ``record.metrics`` and
    ``record.baseline_metrics`` go to the artifacts ``evaluate/evaluate.json`` and ``evaluate/baseline.json``;
    ``record.timings`` (``{"evaluate": {...}, "baseline": {...}}``) to metrics ``timing/<stage>.<key>``.
    ``record.tables`` (e.g. the reward diff table to ``evaluate/reward_diff.json``) go through ``log_table``.
    The new model version (whose source run is the evaluation's) is aliased ``candidate`` (and ``champion``
    when ``registration.promoted``), tagged with the decision, its reasons, the run's lineage and the training
    run it came from. Returns None when the tracker is disabled.
    """
    metrics, model, registered_model = record.metrics, registration.model, registration.registered_model
    promoted, reasons, evidence = registration.promoted, registration.reasons, registration.evidence
    tables, artifacts, timings = record.tables, record.artifacts, record.timings
    tracker.log_dict(metrics, "evaluate/evaluate.json")
    tracker.log_dict(record.baseline_metrics, "evaluate/baseline.json")
    for artifact_file, table in tables.items():
        tracker.log_table(table, artifact_file)
    for folder, paths in artifacts.items():
        for path in paths:
            (tracker.log_artifacts if Path(path).is_dir() else tracker.log_artifact)(path, folder)
    tracker.log_metrics(
        {f"timing/{stage}.{key}": value for stage, numbers in timings.items() for key, value in numbers.items()}
    )
    info = tracker.log_model(model, registered_model, step=RESULTS_STEP)
    if info is None:  # the tracker is disabled
        return None
    tracker.log_metrics(result_metrics(metrics), step=RESULTS_STEP, model_id=info.model_id)
    version = str(info.registered_model_version)
    try:
        registered = apply_promotion(registered_model, version, promoted, reasons, evidence)
        run_tags = tracker.tags_of(tracker.run_id) or {}
        tag_version(
            registered_model,
            version,
            {k: v for k, v in run_tags.items() if k.startswith(LINEAGE_TAG) or k == TRAINED_RUN_TAG},
        )
    except Exception as exc:
        if not (is_remote(tracking_uri()) and is_connection_failure(exc)):
            raise
        tracker.lost = True
        raise lost_server("apply_promotion", exc) from None
    tracker.set_tags({"evaluate.model_version": version, "evaluate.promotion": "promoted" if promoted else "rejected"})
    return registered


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
