"""The model registry: logging a pyfunc model, its versions, their tags and the promotion aliases.

Every evaluated policy is registered as a new version of ``tracking.registered_model`` and
gets the alias ``candidate``; the alias ``champion`` moves to it only when the promotion gate
passed. The version tags ``promotion.decision`` and ``promotion.reasons`` say why, and
``evidence.*`` hold the judged numbers a later challenger is compared with. Trained models
(sft, reward) are registered too and found again by the content hash of their folder
(tag ``sha256``), which gives the PPO run its ``lineage.*`` tags.
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
# What the pyfunc model imports: detox.serving -> detox.generation, detox.params.
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "sentencepiece", "protobuf", "pandas",
                      "numpy", "pydantic", "pyyaml", "tqdm")


@dataclass(frozen=True)
class PolicyModel:
    """A pyfunc model to log and register: the class instance, its policy folder, config and signature."""

    python_model: Any
    policy_dir: Path
    config: Mapping[str, Any]
    signature: Any
    input_example: pd.DataFrame | None = None
    artifact: str = "policy"  # the artifact's name in the pyfunc model (``reward`` for the reward model)


def log_model(model: PolicyModel, registered_model: str, step: int = 0) -> Any:
    """Log ``model`` into the active run and register it as a new version of ``registered_model``.

    ``model.policy_dir`` becomes the model's artifact named ``model.artifact`` (a policy, or the
    reward model). The ``detox`` package travels with the model (``code_paths``), so its class is
    importable wherever the model is loaded or served. MLflow links the run's metrics of ``step`` to
    the logged model. Returns MLflow's ``ModelInfo`` (its ``registered_model_version`` and ``model_id``).
    """
    import mlflow.pyfunc

    import detox

    with tempfile.TemporaryDirectory(prefix="detox-code-") as tmp:
        code = Path(tmp) / "detox"
        shutil.copytree(Path(detox.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
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
        if is_connection_failure(exc):
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
