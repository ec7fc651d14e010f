"""What ties an MLflow run to the DVC experiment, git commit and ``dvc.lock`` entry it came from.

A run that a stage starts is named ``<stage> · <experiment>`` (``sft · bushy-vats``) under
``dvc exp run``, which sets ``DVC_EXP_NAME``, and ``<stage> · workspace`` under ``dvc repro`` or
by hand. It carries the tags:

- ``dvc.exp_name``: the DVC experiment's name (``DVC_EXP_NAME``); absent outside an experiment;
- ``git.commit``: the commit the code and params are based on: the experiment's baseline
  (``DVC_EXP_BASELINE_REV``) under ``dvc exp run``, else ``git rev-parse HEAD`` in the project;
  absent where the project is not a git repository. The workspace may differ from it by
  uncommitted changes (an experiment's params always do).

When evaluate reopens the PPO run, DVC has already written the ppo stage's entry to
``dvc.lock``, so the evaluation adds (:func:`evaluation_tags`):

- ``dvc.lock.ppo``: a short md5 of that entry (its deps, params and outs as canonical JSON):
  the same value for two runs exactly when DVC saw the same inputs and outputs;
- ``dvc.lock.ppo.models/ppo``: the md5 that DVC recorded for the output ``models/ppo``, the
  value in the ``models/ppo`` column of ``dvc exp show``;
- ``evaluate.dvc.exp_name``, ``evaluate.git.commit``: the experiment and commit of the
  evaluation, which differ from the training's when an experiment changed only what evaluate
  reads and DVC reused the PPO policy (and so its run).

The sft and reward runs carry only the first two: their own ``dvc.lock`` entries are written
after the runs end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

WORKSPACE = "workspace"  # the run-name suffix outside a DVC experiment
LOCK_FILE = "dvc.lock"
LOCK_KEYS = ("deps", "params", "outs")  # what a stage's entry records; "cmd" is left out
SHORT = 12  # hex digits of an entry's md5 in its tag


def experiment_name() -> str | None:
    """The DVC experiment being run (``DVC_EXP_NAME``), or None under ``dvc repro`` or by hand."""
    return os.environ.get("DVC_EXP_NAME") or None


def git_commit(root: str | Path = ".") -> str | None:
    """The commit the run is based on: ``DVC_EXP_BASELINE_REV`` under ``dvc exp run``, else ``HEAD`` of
    the git repository at ``root``; None when there is none (no repository, no commit, no git)."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def run_name(stage: str) -> str:
    """``ppo · <experiment>``, or ``ppo · workspace`` outside a DVC experiment."""
    return f"{stage} · {experiment_name() or WORKSPACE}"


def run_tags(root: str | Path = ".", prefix: str = "") -> dict[str, str]:
    """``dvc.exp_name`` and ``git.commit``, each only when known; ``prefix`` goes before each key."""
    tags = {"dvc.exp_name": experiment_name(), "git.commit": git_commit(root)}
    return {f"{prefix}{key}": value for key, value in tags.items() if value}


def lock_entry(stage: str, root: str | Path = ".") -> dict[str, Any] | None:
    """The ``dvc.lock`` entry of ``stage`` (None without a lock file or an entry, or an unreadable one)."""
    try:
        lock = yaml.safe_load((Path(root) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    entry = (lock or {}).get("stages", {}).get(stage) if isinstance(lock, dict) else None
    return entry if isinstance(entry, dict) else None


def entry_hash(entry: Mapping[str, Any]) -> str:
    """A short md5 of an entry's deps, params and outs as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps({key: entry.get(key) for key in LOCK_KEYS}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return hashlib.md5(canonical.encode("utf-8")).hexdigest()[:SHORT]


def lock_tags(stage: str, root: str | Path = ".") -> dict[str, str]:
    """``dvc.lock.<stage>`` (:func:`entry_hash`) and ``dvc.lock.<stage>.<out>`` (each output's md5 as
    recorded); empty when ``dvc.lock`` has no entry for ``stage``."""
    entry = lock_entry(stage, root)
    if entry is None:
        return {}
    tags = {f"dvc.lock.{stage}": entry_hash(entry)}
    for out in entry.get("outs") or []:
        if isinstance(out, dict) and out.get("path") and out.get("md5"):
            tags[f"dvc.lock.{stage}.{out['path']}"] = str(out["md5"])
    return tags


def evaluation_tags(trained_by: str, root: str | Path = ".") -> dict[str, str]:
    """Tags for a training run that an evaluation reopens: the ``dvc.lock`` entry of the stage that
    trained it (``trained_by``), and the evaluation's own experiment and commit (``evaluate.*``)."""
    return {**lock_tags(trained_by, root), **run_tags(root, prefix="evaluate.")}
