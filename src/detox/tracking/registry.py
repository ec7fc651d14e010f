"""The model registry: logging a pyfunc model, its versions, their tags and the promotion aliases.

Every evaluated policy is registered as a new version of ``tracking.registered_model`` and
gets the alias ``candidate``; the alias ``champion`` moves to it only when the promotion gate
passed. The version tags ``promotion.decision`` and ``promotion.reasons`` say why, and
``evidence.*`` hold the judged numbers a later challenger is compared with. Trained models
(sft, reward) are registered too and found again by the content hash of their folder
(tag ``sha256``), which gives the PPO run its ``lineage.*`` tags. Each registered model has a
description saying what it is, each version one saying where it came from and how it measured.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from detox.tracking.store import is_connection_failure, tracking_uri

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_NAME = "model"  # the logged model's name inside its run
# What the pyfunc models import: detox.serve.summarizer and reward_model -> detox.models.generation,
# detox.common.params.
MODEL_REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "protobuf",
    "pandas",
    "numpy",
    "pydantic",
    "pyyaml",
    "tqdm",
)


@dataclass(frozen=True)
class PolicyModel:
    """A pyfunc model to log and register: the class instance, its policy folder, config and signature."""

    python_model: Any
    policy_dir: Path
    config: Mapping[str, Any]
    signature: Any
    input_example: pd.DataFrame | None = None
    artifact: str = "policy"  # the artifact's name in the pyfunc model (``reward`` for the reward model)
    description: str = ""  # what the registered model is (set once; a description edited in the UI stays)
    version_description: str = ""  # this version: where it came from, how it measured


def log_model(model: PolicyModel, registered_model: str, step: int = 0) -> Any:
    """Log ``model`` into the active run and register it as a new version of ``registered_model``.

    ``model.policy_dir`` becomes the model's artifact named ``model.artifact`` (a policy, or the
    reward model). The ``detox`` package travels with the model (``code_paths``), so its class is
    importable wherever the model is loaded or served. MLflow links the run's metrics of ``step`` to
    the logged model (those logged before and after it). Returns MLflow's ``ModelInfo`` (its
    ``registered_model_version`` and ``model_id``).
    """
    import mlflow.pyfunc

    import detox

    with tempfile.TemporaryDirectory(prefix="detox-code-") as tmp:
        code = Path(tmp) / "detox"
        shutil.copytree(Path(detox.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=model.python_model,
            artifacts={model.artifact: str(model.policy_dir)},
            model_config=dict(model.config),
            signature=model.signature,
            input_example=model.input_example,
            code_paths=[str(code)],
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model,
            step=step,
        )
    describe(registered_model, str(info.registered_model_version), model.description, model.version_description)
    return info


def describe(registered_model: str, version: str, description: str, version_description: str) -> None:
    """The registered model's description when it has none yet, and the version's."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    if description and not client.get_registered_model(registered_model).description:
        client.update_registered_model(registered_model, description=description)
    if version_description:
        client.update_model_version(registered_model, version, description=version_description)


def discard_unfinished_models(run_id: str) -> list[str]:
    """Delete the logged models of the run ``run_id`` that never became READY (a ``log_model`` that failed
    half-way, e.g. on a full disk), their artifacts first; returns their ids. MLflow marks such a model
    FAILED when it can, and leaves it PENDING when the store cannot be written either."""
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = mlflow.MlflowClient(tracking_uri())
    experiment_id = client.get_run(run_id).info.experiment_id
    unfinished = [
        model
        for model in client.search_logged_models([experiment_id], f"source_run_id = '{run_id}'")
        if model.status != LoggedModelStatus.READY
    ]
    for model in unfinished:
        get_artifact_repository(model.artifact_location).delete_artifacts()  # frees the space before any write
        if model.status != LoggedModelStatus.FAILED:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        client.delete_logged_model(model.model_id)
    return [model.model_id for model in unfinished]


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


def evidence_tag(value: Any) -> str:
    """A value as a tag: text as it is (``oracle``), a number as JSON (``0.0123``)."""
    return value if isinstance(value, str) else json.dumps(value)


def evidence_value(tag: str) -> Any:
    """A tag of :func:`evidence_tag` read back: text, with ``null`` as None; the comparison reads numbers
    with ``float``. Versions tagged before held every value as JSON (``"oracle"`` with its quotes)."""
    if tag == "null" or (len(tag) >= 2 and tag[0] == tag[-1] == '"'):
        return json.loads(tag)
    return tag


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
        if is_connection_failure(exc):
            raise
        return None
    return max(found, key=lambda v: int(v.version), default=None)


def lineage_tags(models: Mapping[str, tuple[Path, str]]) -> dict[str, str]:
    """Run tags naming the registered versions a training started from, found by content hash.

    ``models`` maps a role (``sft``, ``reward``) to (model folder, registered model name). A folder no
    version was registered for (a hub model used as it is, or one checked out from a DVC remote
    without its runs) is tagged ``unregistered``; its hash is recorded either way.
    """
    from detox.common.io import sha256_tree

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
        if is_connection_failure(exc):
            raise
        return None  # no such model yet, or no champion alias
    evidence: dict[str, Any] = {"version": str(version.version)}
    for key, value in version.tags.items():
        if key.startswith(EVIDENCE_TAG):
            evidence[key[len(EVIDENCE_TAG) :]] = evidence_value(value)
    return evidence


def apply_promotion(
    registered_model: str,
    version: str,
    promoted: bool,
    reasons: Sequence[str],
    evidence: Mapping[str, Any] | None = None,
) -> RegisteredVersion:
    """Alias the version ``candidate`` (and ``champion`` when promoted); tag the decision, its reasons and
    the judged numbers (``evidence.*``) that a later challenger is compared with."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    client.set_model_version_tag(
        registered_model, version, "promotion.decision", "promoted" if promoted else "rejected"
    )
    client.set_model_version_tag(registered_model, version, "promotion.reasons", "; ".join(reasons))
    for key, value in (evidence or {}).items():
        if value is not None:  # no tag: the comparison reads a missing number as None
            client.set_model_version_tag(registered_model, version, f"{EVIDENCE_TAG}{key}", evidence_tag(value))
    client.set_registered_model_alias(registered_model, CANDIDATE, version)
    if promoted:
        client.set_registered_model_alias(registered_model, CHAMPION, version)
    aliases = client.get_model_version(registered_model, version).aliases
    return RegisteredVersion(registered_model, version, tuple(sorted(aliases)))
