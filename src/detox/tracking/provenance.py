"""What ties an MLflow run to the DVC experiment, git commit and ``dvc.lock`` entry it came from.

A run that a stage starts is named ``<stage> · <experiment>`` (``sft · bushy-vats``) under
``dvc exp run``, which sets ``DVC_EXP_NAME``, and ``<stage> · workspace`` under ``dvc repro`` or
by hand. It carries the tags:

- ``dvc.exp_name``: the DVC experiment's name (``DVC_EXP_NAME``); absent outside an experiment;
- ``git.commit``: the commit the code and params are based on: the experiment's baseline
  (``DVC_EXP_BASELINE_REV``) under ``dvc exp run``, else ``git rev-parse HEAD`` in the project;
  absent where the project is not a git repository. The workspace may differ from it by
  uncommitted changes (an experiment's params always do).

and the params its stage reads, as ``dvc.yaml`` lists them (:func:`stage_params`).

When evaluate runs, DVC has already written the ppo stage's entry to ``dvc.lock``, so the
evaluate run adds (:func:`lock_tags`):

- ``dvc.lock.ppo``: a short md5 of that entry (its deps, params and outs as canonical JSON):
  the same value for two runs exactly when DVC saw the same inputs and outputs;
- ``dvc.lock.ppo.models/ppo``: the md5 that DVC recorded for the output ``models/ppo``, the
  value in the ``models/ppo`` column of ``dvc exp show``: which PPO policy it evaluated, also
  when an experiment changed only what evaluate reads and DVC reused the policy (and its run).

The training runs carry no ``dvc.lock`` tag: their own entries are written after the runs end.
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
LOCK_FILE, PIPELINE_FILE = "dvc.lock", "dvc.yaml"
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
        proc = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def run_name(stage: str) -> str:
    """``ppo · <experiment>``, or ``ppo · workspace`` outside a DVC experiment."""
    return f"{stage} · {experiment_name() or WORKSPACE}"


def run_tags(root: str | Path = ".") -> dict[str, str]:
    """``dvc.exp_name`` and ``git.commit``, each only when known."""
    tags = {"dvc.exp_name": experiment_name(), "git.commit": git_commit(root)}
    return {key: value for key, value in tags.items() if value}


def stage_params(stage: str, params: Mapping[str, Any], root: str | Path = ".") -> dict[str, Any]:
    """The part of ``params`` (params.yaml as a nested dict) that ``stage`` reads, as ``dvc.yaml`` lists it
    (``eval``, ``reward.toxic_label``, ...): what the stage's MLflow run records. All of ``params`` when
    ``dvc.yaml`` has no such stage (a script run outside the project)."""
    try:
        pipeline = yaml.safe_load((Path(root) / PIPELINE_FILE).read_text(encoding="utf-8"))
        keys = pipeline["stages"][stage]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return dict(params)
    picked: dict[str, Any] = {}
    for key in (k for k in keys if isinstance(k, str)):  # a dict entry names another params file
        *parents, leaf = key.split(".")
        source: Any = params
        for part in parents:
            source = source.get(part) if isinstance(source, Mapping) else None
        if isinstance(source, Mapping) and leaf in source:
            target = picked
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = source[leaf]
    return picked


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
    canonical = json.dumps(
        {key: entry.get(key) for key in LOCK_KEYS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
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
