"""Checkpoints of a PPO run, outside DVC's outputs, and what a checkpoint must match to be resumed.

A run killed and restarted with the same command and the same params resumes from the last
checkpoint; a run with other params, models or number of processes (another fingerprint) starts
afresh. A finished run removes its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from detox.common.io import atomic_file, sha256_tree
from detox.common.params import Params

log = logging.getLogger(__name__)


def fingerprint(params: Params, *model_dirs: Path, processes: int = 1) -> str:
    """Identifies a training configuration: what a checkpoint must match to be resumed.

    The number of processes is part of it: each step's data (``ppo.batch_size`` per process)
    and random draws (seeded per process) depend on it, so a run resumed with another number
    would not continue the one it resumes.
    """
    digest = hashlib.sha256()
    # How long to train, how often to checkpoint and when to stop early do not change the
    # steps already taken, so a run extended with more ppo.steps still resumes.
    ppo = params.ppo.model_dump(
        exclude={"steps", "checkpoint_every", "max_kl", "eval_every", "eval_prompts", "select", "patience", "collapse"}
    )
    relevant = {
        "seed": params.seed,
        "ppo": ppo,
        "prompt": params.prompt.model_dump(),
        "reward": params.reward.model_dump(),
        "processes": processes,
    }
    digest.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    for directory in model_dirs:  # contents, not sizes: a re-fetched model has the same sizes
        digest.update(sha256_tree(directory).encode())
    return digest.hexdigest()[:16]


def latest_checkpoint(directory: Path, expected: str) -> dict[str, Any] | None:
    files = sorted(directory.glob("step_*.pt"))
    if not files:
        return None
    state = torch.load(files[-1], map_location="cpu", weights_only=True)
    if state["fingerprint"] != expected:
        log.warning(
            "ignoring checkpoints in %s: they were made with other params, models or number of "
            "processes; starting afresh",
            directory,
        )
        return None
    return state


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = 2) -> None:
    path = directory / f"step_{state['step']:06d}.pt"
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(directory.glob("step_*.pt"))[:-keep]:
        old.unlink()


def resume_or_clear(directory: Path, expected: str, main: bool) -> dict[str, Any] | None:
    """The last checkpoint with fingerprint ``expected``; without one, the main process clears ``directory``."""
    checkpoint = latest_checkpoint(directory, expected)
    if checkpoint is None and main:
        shutil.rmtree(directory, ignore_errors=True)
    return checkpoint
