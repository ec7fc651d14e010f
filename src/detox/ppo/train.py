"""The PPO training run, as a loop over steps: data order, resume, evaluation and early stops.

Checkpoints and resume are in :mod:`detox.ppo.checkpoints`, what a run writes in
:mod:`detox.ppo.outputs`, one step in :mod:`detox.ppo.engine`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from detox.common.errors import DetoxError
from detox.common.params import Params, PPOParams
from detox.judges.panel import load_judges
from detox.models.generation import build_prompts, load_policy
from detox.models.precision import check_precision
from detox.models.reward import RewardScorer
from detox.ppo import stats as names
from detox.ppo.checkpoints import fingerprint, resume_or_clear, save_checkpoint
from detox.ppo.engine import PPOTrainer
from detox.ppo.outputs import lineage, summarize_history, write_outputs
from detox.ppo.policy import Seq2SeqPolicy
from detox.ppo.selection import Selection, ValidationSet, evaluate_policy, evaluation_steps
from detox.tracking.provenance import stage_params
from detox.tracking.runs import Tracker

log = logging.getLogger(__name__)

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


def batch_indices(n_rows: int, step: int, batch: int, seed: int) -> list[int]:
    """Row indices of one step's global batch: epochs of seeded permutations, read in order."""

    @lru_cache(maxsize=4)
    def permutation(epoch: int) -> list[int]:
        return torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()

    return [permutation(k // n_rows)[k % n_rows] for k in range(step * batch, (step + 1) * batch)]


def validation_set(params: Params, paths: PPOPaths, scorer: RewardScorer) -> ValidationSet:
    """The first ``ppo.eval_prompts`` validation dialogues, the reward model and the judges of ``eval.judges``."""
    if not paths.validation.is_file():
        raise DetoxError(
            f"{paths.validation}: not found; PPO evaluates on the validation split every "
            "ppo.eval_every steps: run `dvc repro fetch` (or set ppo.eval_every to null)"
        )
    frame = pd.read_parquet(paths.validation).iloc[: params.ppo.eval_prompts]
    dialogues = frame["dialogue"].tolist()
    return ValidationSet(
        build_prompts(dialogues, params.prompt.template),
        dialogues,
        frame["summary"].tolist(),
        scorer,
        load_judges(paths.judges, params.eval.judges),
    )


def make_accelerator(cfg: PPOParams, accelerator: Accelerator | None = None, cpu: bool | None = None) -> Accelerator:
    """The run's accelerator (``accelerator`` when given), once ``ppo.precision`` and the launch agree.

    ``cpu`` forces the CPU (or not); None, the stage's choice, means the CPU when torch sees no CUDA device.
    """
    precision = MIXED_PRECISION[cfg.precision]
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched and launched != precision:
        raise DetoxError(
            f"accelerate launch set --mixed_precision {launched} but ppo.precision is {cfg.precision}: make them "
            f"agree (-S ppo.precision={PRECISION_OF[launched]}, or --mixed_precision {precision})"
        )
    check_precision("ppo.precision", cfg.precision, cuda=torch.cuda.is_available() and not cpu)
    # cpu=True on a machine without CUDA, so `accelerate launch --multi_gpu` / torchrun form a
    # gloo process group there instead of several processes that each believe they are alone.
    accelerator = accelerator or Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available() if cpu is None else cpu,
        mixed_precision=precision,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise DetoxError(
            f"{world} processes were launched but accelerate formed a group of {accelerator.num_processes}; "
            "launch with `accelerate launch --multi_gpu --num_processes N stages/ppo.py` (on a CPU machine too)"
        )
    return accelerator


def rl_seed(params: Params) -> int:
    """The seed of everything random in the ppo stage: ``ppo.seed``, else the pipeline's ``seed``."""
    return params.seed if params.ppo.seed is None else params.ppo.seed


def build_trainer(params: Params, paths: PPOPaths, accelerator: Accelerator) -> PPOTrainer:
    """The policy (LoRA and value head initialised from the RL seed), the reward model and the trainer."""
    seed = rl_seed(params)
    torch.manual_seed(seed)  # LoRA and value-head initialisation
    model, tokenizer = load_policy(paths.policy, params.policy.attention)
    policy = Seq2SeqPolicy(model, params.ppo)
    reward_model = AutoModelForSequenceClassification.from_pretrained(paths.reward).to(accelerator.device)
    scorer = RewardScorer(reward_model, AutoTokenizer.from_pretrained(paths.reward), params.reward)
    return PPOTrainer(policy, tokenizer, scorer, params.ppo, accelerator, seed)


def kl_stop(stats: dict[str, float], cfg: PPOParams, step: int, main: bool) -> str | None:
    """Why to stop after this step's KL (above ``ppo.max_kl``), or None; warns of a negative mean KL."""
    kl = stats[names.KL]
    if kl < -3 * stats[names.KL_STDERR] + NEGATIVE_KL_TOLERANCE and main:
        log.warning(
            "step %d: mean KL is negative (%.4f): the rollout's log-probs differ from the "
            "distribution it sampled from; check that ppo.disable_dropout is true",
            step,
            kl,
        )
    if cfg.max_kl is not None and kl > cfg.max_kl:
        return f"mean KL {kl:.3f} exceeded ppo.max_kl {cfg.max_kl} at step {step}"
    return None


def load_selected(trainer: PPOTrainer, selection: Selection, metrics: dict[str, Any], steps: int, main: bool) -> None:
    """Load the selected checkpoint's weights into the policy and record the choice in ``metrics``."""
    if selection.best_state is None:
        raise DetoxError(
            "no evaluated checkpoint qualified, not even the untrained policy (it collapsed or lost ROUGE-L): "
            "check ppo.collapse and ppo.select.max_rougeL_drop"
        )
    trainer.unwrapped.load_state_dict(selection.best_state, strict=False)
    metrics.update(selected_step=selection.best_step, selection=selection.reason, evaluations=len(selection.history))
    if main:
        log.info("models/ppo is the policy after step %d of %d: %s", selection.best_step, steps, selection.reason)


def run_ppo(params: Params, paths: PPOPaths = PPOPaths(), accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train the policy with PPO; write the model, history and metrics; return the metrics."""
    cfg = params.ppo
    accelerator = make_accelerator(cfg, accelerator)
    main = accelerator.is_main_process
    tracker = Tracker(params.tracking.experiment, enabled=main)  # a tracking server that is down fails here
    trainer = build_trainer(params, paths, accelerator)

    train = pd.read_parquet(paths.train)
    prompts = build_prompts(train["dialogue"].tolist(), params.prompt.template)
    dialogues = train["dialogue"].tolist()
    evaluate_at = evaluation_steps(cfg)
    validation = validation_set(params, paths, trainer.scorer) if evaluate_at else None
    selection = Selection(cfg)

    key = fingerprint(params, paths.policy, paths.reward, processes=accelerator.num_processes)
    checkpoint = resume_or_clear(paths.checkpoints, key, main)
    start, history, run_id = 0, [], None
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint["trainer"])
        start, history, run_id = checkpoint["step"], checkpoint["history"], checkpoint["run_id"]
        selection.load_state_dict(checkpoint.get("selection", {}))
        if main:
            log.info("resuming from %s at step %d", paths.checkpoints, start)

    # The run spans the training and ends KILLED when interrupted (a rerun resumes it), FAILED on an error.
    # A new run is named after the DVC experiment and records the params the ppo stage reads.
    with tracker.run(
        "ppo",
        run_id=run_id,
        tags={"policy": str(paths.policy)},
        params=stage_params("ppo", params.model_dump(mode="json")),
    ):
        if run_id is None and tracker.enabled:  # the MLflow UI's lineage: reward model -> sft policy -> this policy
            tracker.set_tags(lineage(params, paths))
        run_id = tracker.run_id

        def evaluate(trained_steps: int) -> str | None:
            """Every process evaluates the same subset with the same weights, so all take the same decision."""
            stats = evaluate_policy(trainer, validation, rl_seed(params))
            tracker.log_metrics(stats, step=trained_steps)
            return selection.consider(trained_steps, stats, trainer.trainable_state)

        prompts_per_step = cfg.batch_size // cfg.group_size  # each prompt is sampled k times (ppo.samples_per_prompt)
        global_batch = prompts_per_step * accelerator.num_processes
        lo = accelerator.process_index * prompts_per_step
        stop_reason: str | None = None
        with tqdm(total=cfg.steps, initial=start, desc="ppo", unit="step", disable=not main) as bar:
            if start == 0 and 0 in evaluate_at:
                evaluate(0)
            for step in range(start, cfg.steps):
                index = batch_indices(len(prompts), step, global_batch, rl_seed(params))[lo : lo + prompts_per_step]
                stats, _ = trainer.step([prompts[i] for i in index], [dialogues[i] for i in index], step)
                history.append({"step": step, **stats})
                tracker.log_metrics(stats, step=step)
                bar.set_postfix(reward=f"{stats[names.REWARD_MEAN]:.3f}", kl=f"{stats[names.KL]:.3f}")
                bar.update()
                stop_reason = kl_stop(stats, cfg, step, main)
                if stop_reason is not None:
                    log.warning("stopping early: %s", stop_reason)
                    break
                if step + 1 in evaluate_at:
                    stop_reason = evaluate(step + 1)
                    if stop_reason is not None:
                        log.warning("stopping early after step %d: %s", step, stop_reason)
                        break
                if main and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                    save_checkpoint(
                        paths.checkpoints,
                        {
                            "step": step + 1,
                            "fingerprint": key,
                            "history": history,
                            "run_id": run_id,
                            "trainer": trainer.state_dict(),
                            "selection": selection.state_dict(),
                        },
                    )

        metrics = summarize_history(history, stop_reason)
        metrics.update(algorithm=cfg.algorithm, samples_per_prompt=cfg.group_size, rl_seed=rl_seed(params))
        if evaluate_at:
            load_selected(trainer, selection, metrics, len(history), main)
        if main:
            write_outputs(
                paths, trainer, trainer.tokenizer, tracker, history, metrics, selection if evaluate_at else None
            )
    accelerator.wait_for_everyone()
    return metrics
