"""What a PPO run writes: the model folder, the per-step history and timings, the metrics, MLflow's summary."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

from detox.common.io import atomic_dir, atomic_file, write_json, write_text
from detox.common.params import Params
from detox.ppo import stats as names
from detox.ppo.engine import PPOTrainer
from detox.ppo.policy import absolute_base
from detox.ppo.selection import Selection
from detox.serve.model_card import adapter_card
from detox.tracking.registry import lineage_tags
from detox.tracking.runs import RUN_FILE, Tracker

if TYPE_CHECKING:
    from detox.ppo.train import PPOPaths


def lineage(params: Params, paths: PPOPaths) -> dict[str, str]:
    """Tags naming the registered sft and reward versions this run trains from (found by content hash),
    and, for a model used as fetched, where it came from (the fetch manifest)."""
    tags = lineage_tags(
        {"sft": (paths.policy, params.tracking.sft_model), "reward": (paths.reward, params.tracking.reward_model)}
    )
    manifest_path = paths.base_manifest
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for role, key in (("sft", "policy"), ("reward", "reward")):
            source = manifest.get(key, {})
            where = source.get("name") or source.get("path") or "generated here"
            revision = source.get("commit") or source.get("revision")
            tags[f"lineage.{role}.source"] = f"{source.get('source')}: {where}" + (f"@{revision}" if revision else "")
    return tags


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns = ["step"] + sorted({k for row in history for k in row} - {"step"})
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(history)


def summarize_history(history: list[dict[str, float]], stop_reason: str | None) -> dict[str, Any]:
    frame = pd.DataFrame(history)
    head, tail = frame.head(5), frame.tail(5)
    return {
        "steps": int(len(frame)),
        "early_stopped": stop_reason is not None,
        "stop_reason": stop_reason,
        "reward_mean_first5": float(head[names.REWARD_MEAN].mean()),
        "reward_mean_last5": float(tail[names.REWARD_MEAN].mean()),
        "toxicity_mean_first5": float(head[names.TOXICITY_MEAN].mean()),
        "toxicity_mean_last5": float(tail[names.TOXICITY_MEAN].mean()),
        "kl_last5": float(tail[names.KL].mean()),
        "kl_min": float(frame[names.KL].min()),
        "kl_coef_last": float(frame[names.KL_COEF].iloc[-1]),
        "response_length_last5": float(tail[names.RESPONSE_LENGTH].mean()),
        "distinct_2_last5": float(tail[names.DISTINCT_2].mean()),
    }


def history_timings(history: list[dict[str, float]]) -> dict[str, float]:
    """The wall-clock side of a run (MLflow and logs/timings/ppo.json, never DVC's metrics or plots)."""
    frame = pd.DataFrame(history)
    return {
        "seconds_per_step": float(frame[names.TIME_TOTAL].mean()),
        "seconds": float(frame[names.TIME_TOTAL].sum()),
        "tokens_per_second": float(frame[names.TOKENS_PER_SECOND].mean()),
    }


def write_outputs(
    paths: PPOPaths,
    trainer: PPOTrainer,
    tokenizer: PreTrainedTokenizerBase,
    tracker: Tracker,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    selection: Selection | None,
) -> None:
    """The main process's outputs of a finished run (``selection`` when the run evaluated); then no checkpoints."""
    with atomic_dir(paths.out) as out:
        trainer.unwrapped.save(out, base_model=paths.policy, final_dir=paths.out)
        tokenizer.save_pretrained(out)
        manifest = json.loads(paths.base_manifest.read_text("utf-8")) if paths.base_manifest.is_file() else {}
        # PEFT's save_pretrained wrote a blank template README.md: the Hub card replaces it.
        write_text(
            out / "README.md",
            adapter_card(
                manifest,
                absolute_base(paths.policy),
                metrics if "selected_step" in metrics else None,
                trainer.cfg.algorithm,
            ),
        )
        write_json(out / RUN_FILE, tracker.record())
    # DVC's plot holds what a rerun reproduces; the time/* columns go to MLflow (per step) and logs/.
    write_history(
        paths.history, [{k: v for k, v in row.items() if not k.startswith(names.TIMING_PREFIX)} for row in history]
    )
    write_history(
        paths.timings,
        [{k: v for k, v in row.items() if k == "step" or k.startswith(names.TIMING_PREFIX)} for row in history],
    )
    if selection is not None:
        write_history(paths.evaluations, selection.history)
        tracker.log_artifact(paths.evaluations, "ppo")
    write_json(paths.metrics, metrics)
    timings = history_timings(history)
    write_json(paths.timings.with_name("ppo.json"), timings)
    tracker.log_metrics({f"summary/{k}": v for k, v in {**metrics, **timings}.items() if isinstance(v, (int, float))})
    tracker.log_artifact(paths.history, "ppo")
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
