"""The PPO training run: data order, checkpoints and resume, tracking, outputs.

Checkpoints go to a folder outside DVC's outputs (``checkpoints/ppo/``). A run
killed and restarted with the same command and the same params resumes from the
last checkpoint; a run with other params (another fingerprint) starts afresh. A
finished run removes its checkpoints.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from detox.common.errors import DetoxError
from detox.models.generation import build_prompts
from detox.common.io import atomic_dir, sha256_tree, write_json, write_text
from detox.judges.panel import load_judges
from detox.serve.model_card import adapter_card
from detox.common.params import Params
from detox.ppo.engine import PPOTrainer
from detox.ppo.policy import Seq2SeqPolicy, absolute_base
from detox.ppo.selection import Selection, ValidationSet, evaluate_policy, evaluation_steps
from detox.models.reward import RewardScorer
from detox.tracking.provenance import stage_params
from detox.tracking.registry import lineage_tags
from detox.tracking.runs import RUN_FILE, Tracker

log = logging.getLogger(__name__)

TIMING_PREFIX = "time/"

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ppo.precision -> accelerate's name
PRECISION_OF = {v: k for k, v in MIXED_PRECISION.items()}

# The per-sample KL estimate is noisy; a mean more than 3 standard errors below 0 means the
# rollout distribution differs from the policy's (warped sampling), not noise.
NEGATIVE_KL_TOLERANCE = -1e-3


@dataclass(frozen=True)
class PPOPaths:
    policy: Path = Path("models/policy")
    reward: Path = Path("models/reward")
    train: Path = Path("data/raw/train.parquet")
    out: Path = Path("models/ppo")
    checkpoints: Path = Path("checkpoints/ppo")
    history: Path = Path("plots/ppo/history.tsv")
    metrics: Path = Path("metrics/ppo.json")
    validation: Path = Path("data/raw/validation.parquet")
    judges: Path = Path("models/judges")
    evaluations: Path = Path("plots/ppo/eval.tsv")
    timings: Path = Path("logs/timings/ppo_history.tsv")  # per-step wall clock (and ppo.json beside it)
    base_manifest: Path = Path("models/base/manifest.json")  # where the fetched models came from


def lineage(params: Params, paths: PPOPaths) -> dict[str, str]:
    """Tags naming the registered sft and reward versions this run trains from (found by content hash),
    and, for a model used as fetched, where it came from (the fetch manifest)."""
    tags = lineage_tags({"sft": (paths.policy, params.tracking.sft_model),
                         "reward": (paths.reward, params.tracking.reward_model)})
    manifest_path = paths.base_manifest
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for role, key in (("sft", "policy"), ("reward", "reward")):
            source = manifest.get(key, {})
            where = source.get("name") or source.get("path") or "generated here"
            revision = source.get("commit") or source.get("revision")
            tags[f"lineage.{role}.source"] = f"{source.get('source')}: {where}" + (f"@{revision}" if revision else "")
    return tags


def fingerprint(params: Params, *model_dirs: Path, processes: int = 1) -> str:
    """Identifies a training configuration: what a checkpoint must match to be resumed.

    The number of processes is part of it: each step's data (``ppo.batch_size`` per process)
    and random draws (seeded per process) depend on it, so a run resumed with another number
    would not continue the one it resumes.
    """
    digest = hashlib.sha256()
    # How long to train, how often to checkpoint and when to stop early do not change the
    # steps already taken, so a run extended with more ppo.steps still resumes.
    ppo = params.ppo.model_dump(exclude={"steps", "checkpoint_every", "max_kl", "eval_every", "eval_prompts",
                                         "select", "patience", "collapse"})
    relevant = {"seed": params.seed, "ppo": ppo, "prompt": params.prompt.model_dump(),
                "reward": params.reward.model_dump(), "processes": processes}
    digest.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    for directory in model_dirs:  # contents, not sizes: a re-fetched model has the same sizes
        digest.update(sha256_tree(directory).encode())
    return digest.hexdigest()[:16]


def batch_indices(n_rows: int, step: int, batch: int, seed: int) -> list[int]:
    """Row indices of one step's global batch: epochs of seeded permutations, read in order."""

    @lru_cache(maxsize=4)
    def permutation(epoch: int) -> list[int]:
        return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()

    return [permutation(k // n_rows)[k % n_rows] for k in range(step * batch, (step + 1) * batch)]


def latest_checkpoint(directory: Path, expected: str) -> dict[str, Any] | None:
    files = sorted(directory.glob("step_*.pt"))
    if not files:
        return None
    state = torch.load(files[-1], map_location="cpu", weights_only=True)
    if state["fingerprint"] != expected:
        log.warning("ignoring checkpoints in %s: they were made with other params, models or number of "
                    "processes; starting afresh", directory)
        return None
    return state


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = 2) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{state['step']:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(directory.glob("step_*.pt"))[:-keep]:
        old.unlink()


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["step"] + sorted({k for row in history for k in row} - {"step"})
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def summarize_history(history: list[dict[str, float]], stop_reason: str | None) -> dict[str, Any]:
    frame = pd.DataFrame(history)
    head, tail = frame.head(5), frame.tail(5)
    return {
        "steps": int(len(frame)),
        "early_stopped": stop_reason is not None,
        "stop_reason": stop_reason,
        "reward_mean_first5": float(head["env/reward_mean"].mean()),
        "reward_mean_last5": float(tail["env/reward_mean"].mean()),
        "toxicity_mean_first5": float(head["env/toxicity_mean"].mean()),
        "toxicity_mean_last5": float(tail["env/toxicity_mean"].mean()),
        "kl_last5": float(tail["objective/kl"].mean()),
        "kl_min": float(frame["objective/kl"].min()),
        "kl_coef_last": float(frame["objective/kl_coef"].iloc[-1]),
        "response_length_last5": float(tail["ppo/mean_response_length"].mean()),
        "distinct_2_last5": float(tail["env/distinct_2"].mean()),
    }


def history_timings(history: list[dict[str, float]]) -> dict[str, float]:
    """The wall-clock side of a run (MLflow and logs/timings/ppo.json, never DVC's metrics or plots)."""
    frame = pd.DataFrame(history)
    return {"seconds_per_step": float(frame["time/total"].mean()), "seconds": float(frame["time/total"].sum()),
            "tokens_per_second": float(frame["time/tokens_per_second"].mean())}


def validation_set(params: Params, paths: PPOPaths, scorer: RewardScorer) -> ValidationSet:
    """The first ``ppo.eval_prompts`` validation dialogues, the reward model and the judges of ``eval.judges``."""
    if not paths.validation.is_file():
        raise DetoxError(f"{paths.validation}: not found; PPO evaluates on the validation split every "
                         "ppo.eval_every steps: run `dvc repro fetch` (or set ppo.eval_every to null)")
    frame = pd.read_parquet(paths.validation).iloc[: params.ppo.eval_prompts]
    dialogues = frame["dialogue"].tolist()
    return ValidationSet(build_prompts(dialogues, params.prompt.template), dialogues, frame["summary"].tolist(),
                         scorer, load_judges(paths.judges, params.eval.judges))


def run_ppo(params: Params, paths: PPOPaths = PPOPaths(), accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train the policy with PPO; write the model, history and metrics; return the metrics."""
    cfg = params.ppo
    # cpu=True on a machine without CUDA, so `accelerate launch --multi_gpu` / torchrun form a
    # gloo process group there instead of several processes that each believe they are alone.
    precision = MIXED_PRECISION[cfg.precision]
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != precision:
        raise DetoxError(
            f"accelerate launch set --mixed_precision {launched} but ppo.precision is {cfg.precision}: make them "
            f"agree (-S ppo.precision={PRECISION_OF[launched]}, or --mixed_precision {precision})"
        )
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise DetoxError("ppo.precision fp16 needs a GPU (its gradient scaler is CUDA's); on the CPU use bf16 or fp32")
    accelerator = accelerator or Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                             cpu=not torch.cuda.is_available(), mixed_precision=precision)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise DetoxError(
            f"{world} processes were launched but accelerate formed a group of {accelerator.num_processes}; "
            "launch with `accelerate launch --multi_gpu --num_processes N stages/ppo.py` (on a CPU machine too)"
        )
    main = accelerator.is_main_process
    tracker = Tracker(params.tracking.experiment, enabled=main)  # a tracking server that is down fails here
    torch.manual_seed(params.seed)  # LoRA and value-head initialisation

    tokenizer = AutoTokenizer.from_pretrained(paths.policy)
    tokenizer.padding_side = "right"
    policy = Seq2SeqPolicy(AutoModelForSeq2SeqLM.from_pretrained(paths.policy), cfg)
    reward_model = AutoModelForSequenceClassification.from_pretrained(paths.reward).to(accelerator.device)
    scorer = RewardScorer(reward_model, AutoTokenizer.from_pretrained(paths.reward), params.reward)
    trainer = PPOTrainer(policy, tokenizer, scorer, cfg, accelerator, params.seed)

    train = pd.read_parquet(paths.train)
    prompts = build_prompts(train["dialogue"].tolist(), params.prompt.template)
    dialogues = train["dialogue"].tolist()

    evaluate_at = evaluation_steps(cfg)
    validation = validation_set(params, paths, scorer) if evaluate_at else None
    selection = Selection(cfg)

    key = fingerprint(params, paths.policy, paths.reward, processes=accelerator.num_processes)
    checkpoint = latest_checkpoint(paths.checkpoints, key)
    start, history, run_id = 0, [], None
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint["trainer"])
        start, history, run_id = checkpoint["step"], checkpoint["history"], checkpoint["run_id"]
        selection.load_state_dict(checkpoint.get("selection", {}))
        if main:
            log.info("resuming from %s at step %d", paths.checkpoints, start)
    elif main:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)

    # The run spans the training and ends KILLED when interrupted (a rerun resumes it), FAILED on an error.
    # A new run is named after the DVC experiment and records the params the ppo stage reads.
    with tracker.run("ppo", run_id=run_id, tags={"policy": str(paths.policy)},
                     params=stage_params("ppo", params.model_dump(mode="json"))):
        if run_id is None and tracker.enabled:  # the MLflow UI's lineage: reward model -> sft policy -> this policy
            tracker.set_tags(lineage(params, paths))
        run_id = tracker.run_id

        def evaluate(trained_steps: int) -> str | None:
            """Every process evaluates the same subset with the same weights, so all take the same decision."""
            stats = evaluate_policy(trainer, validation, params.seed)
            tracker.log_metrics(stats, step=trained_steps)
            return selection.consider(trained_steps, stats, trainer.trainable_state)

        global_batch = cfg.batch_size * accelerator.num_processes
        lo = accelerator.process_index * cfg.batch_size
        stop_reason: str | None = None
        with tqdm(total=cfg.steps, initial=start, desc="ppo", unit="step", disable=not main) as bar:
            if start == 0 and 0 in evaluate_at:
                evaluate(0)
            for step in range(start, cfg.steps):
                index = batch_indices(len(prompts), step, global_batch, params.seed)[lo : lo + cfg.batch_size]
                stats, _ = trainer.step([prompts[i] for i in index], [dialogues[i] for i in index], step)
                history.append({"step": step, **stats})
                tracker.log_metrics(stats, step=step)
                bar.set_postfix(reward=f"{stats['env/reward_mean']:.3f}", kl=f"{stats['objective/kl']:.3f}")
                bar.update()
                if stats["objective/kl"] < -3 * stats["objective/kl_stderr"] + NEGATIVE_KL_TOLERANCE and main:
                    log.warning("step %d: mean KL is negative (%.4f): the rollout's log-probs differ from the "
                                "distribution it sampled from; check that ppo.disable_dropout is true", step,
                                stats["objective/kl"])
                if cfg.max_kl is not None and stats["objective/kl"] > cfg.max_kl:
                    stop_reason = (f"mean KL {stats['objective/kl']:.3f} exceeded ppo.max_kl {cfg.max_kl} "
                                   f"at step {step}")
                    log.warning("stopping early: %s", stop_reason)
                    break
                if step + 1 in evaluate_at:
                    stop_reason = evaluate(step + 1)
                    if stop_reason is not None:
                        log.warning("stopping early after step %d: %s", step, stop_reason)
                        break
                if main and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                    save_checkpoint(paths.checkpoints, {"step": step + 1, "fingerprint": key, "history": history,
                                                        "run_id": run_id, "trainer": trainer.state_dict(),
                                                        "selection": selection.state_dict()})

        metrics = summarize_history(history, stop_reason)
        if evaluate_at:
            if selection.best_state is None:
                raise DetoxError(
                    "no evaluated checkpoint qualified, not even the untrained policy (it collapsed or lost ROUGE-L): "
                    "check ppo.collapse and ppo.select.max_rougeL_drop"
                )
            trainer.unwrapped.load_state_dict(selection.best_state, strict=False)
            metrics.update(selected_step=selection.best_step, selection=selection.reason,
                           evaluations=len(selection.history))
            if main:
                log.info("models/ppo is the policy after step %d of %d: %s", selection.best_step, len(history),
                         selection.reason)
        if main:
            with atomic_dir(paths.out) as out:
                trainer.unwrapped.save(out, base_model=paths.policy, final_dir=paths.out)
                tokenizer.save_pretrained(out)
                manifest = json.loads(paths.base_manifest.read_text("utf-8")) if paths.base_manifest.is_file() else {}
                # PEFT's save_pretrained wrote a blank template README.md: the Hub card replaces it.
                write_text(out / "README.md", adapter_card(manifest, absolute_base(paths.policy),
                                                           metrics if "selected_step" in metrics else None))
                write_json(out / RUN_FILE, tracker.record())
            # DVC's plot holds what a rerun reproduces; the time/* columns go to MLflow (per step) and logs/.
            write_history(paths.history, [{k: v for k, v in row.items() if not k.startswith(TIMING_PREFIX)}
                                          for row in history])
            write_history(paths.timings, [{k: v for k, v in row.items() if k == "step" or k.startswith(TIMING_PREFIX)}
                                          for row in history])
            if evaluate_at:
                write_history(paths.evaluations, selection.history)
                tracker.log_artifact(paths.evaluations, "ppo")
            write_json(paths.metrics, metrics)
            timings = history_timings(history)
            write_json(paths.timings.with_name("ppo.json"), timings)
            tracker.log_metrics({f"summary/{k}": v for k, v in {**metrics, **timings}.items()
                                 if isinstance(v, (int, float))})
            tracker.log_artifact(paths.history, "ppo")
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    return metrics
