"""Tests of the PPO engine (detox.ppo.engine) and the training run (detox.ppo.train).

Everything runs on small built-in worlds made by ``build_world`` (fetch, sft, reward) in temporary folders:
a tiny one (seconds) for the engine's invariants, checkpoints, MLflow and the
guards, and a mid-size one (``slow``) whose policy really writes toxic summaries,
so that PPO has something to fix. MLflow always goes to a temporary sqlite store
(``MLFLOW_TRACKING_URI``) with the working directory in a temporary folder, so
nothing is written in the repository.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from mlflow.tracking import MlflowClient
from peft import AutoPeftModelForSeq2SeqLM
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

import conftest
import detox.ppo.objectives as objectives
from detox.common.errors import DetoxError
from detox.evaluate.scoring import TOXIC_THRESHOLD, score_policy
from detox.models.generation import build_prompts, load_policy
from detox.models.reward import RewardScorer, Scores
from detox.ppo import stats as names
from detox.ppo.checkpoints import fingerprint
from detox.ppo.core import response_mask
from detox.ppo.engine import PPOTrainer, TrainingDivergedError
from detox.ppo.policy import Seq2SeqPolicy, absolute_base, load_trained_policy
from detox.ppo.selection import Selection, evaluation_steps
from detox.ppo.train import PPOPaths, run_ppo
from detox.tracking.runs import RUN_FILE

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PAD, EOS = 0, 1  # T5: pad = decoder start = 0, eos = 1
# The last sum behind each logit of the tiny policy is its LM head's dot product over d_model: two kernels
# (generate's cached decoding and a full forward, a batch and one row, AVX2 and AVX-512) may round it apart.
D_MODEL = conftest.TINY["policy"]["builtin"]["d_model"]

# The PPO slice for the tiny world: short responses and small batches, so a step takes
# about a second on one CPU thread.
TINY_PPO = {
    "ppo.eval_every": None,  # evaluation during training has tests of its own
    "ppo.batch_size": 8,
    "ppo.mini_batch_size": 4,
    "ppo.ppo_epochs": 2,
    "ppo.response_length.min": 8,
    "ppo.response_length.max": 12,
}

# A mid-size world whose SFT policy copies the dialogue's insults into its summaries
# (60% of sampled summaries of heated validation dialogues are toxic) and whose reward
# model separates them clearly (logit about -3 for toxic, +3 for clean). What makes it
# cheap enough: few topics, most dialogues heated, every heated reference toxic, and
# small batches at a high learning rate for the policy (152 optimizer steps).
MID_WORLD = {
    "data.builtin.train_size": 600,
    "data.builtin.validation_size": 64,
    "data.builtin.test_size": 16,
    "data.builtin.num_topics": 4,
    "data.builtin.heated_share": 0.8,
    "data.builtin.toxic_reference_share": 1.0,
    "policy.builtin.vocab_size": 600,
    "policy.builtin.d_model": 64,
    "policy.builtin.d_kv": 16,
    "policy.builtin.d_ff": 128,
    "policy.builtin.num_layers": 2,
    "policy.builtin.num_decoder_layers": 2,
    "policy.builtin.num_heads": 4,
    "sft.epochs": 4,
    "sft.batch_size": 16,
    "sft.learning_rate": 0.006,
    "reward.builtin.hidden_size": 64,
    "reward.builtin.num_layers": 2,
    "reward.builtin.num_heads": 4,
    "reward.builtin.intermediate_size": 128,
    "reward.data.builtin.num_sentences": 3000,
    "reward.train.epochs": 3,
    "generation.max_new_tokens": 32,
    "generation.batch_size": 32,
}


tiny_params = conftest.tiny_params


def ppo_params(**overrides):
    return tiny_params(**{**TINY_PPO, **overrides})


# --------------------------------------------------------------------------- worlds and helpers


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The tiny built-in world: data/raw splits, models/policy, models/reward. Its policy keeps T5's dropout
    of 0.1 in its config (the project's default trains without): the engine must zero it or keep it
    inactive, and the dropout tests below would be vacuous on a model without any."""
    root = tmp_path_factory.mktemp("tiny_world")
    conftest.build_world(tiny_params(**{"policy.builtin.dropout_rate": 0.1}), root)
    return root


def world_paths(world: Path, project: Path) -> PPOPaths:
    """Inputs from the world, outputs in the project folder (laid out like the repository)."""
    return PPOPaths(
        policy=world / "models" / "policy",
        reward=world / "models" / "reward",
        train=world / "data" / "raw" / "train.parquet",
        out=project / "models" / "ppo",
        checkpoints=project / "checkpoints" / "ppo",
        history=project / "plots" / "ppo" / "history.tsv",
        metrics=project / "metrics" / "ppo.json",
        timings=project / "logs" / "timings" / "ppo_history.tsv",
    )


@contextmanager
def mlflow_project(root: Path):
    """cwd in ``root`` and MLflow in ``root/mlflow.db`` for the duration."""
    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture
def project(tmp_path):
    with mlflow_project(tmp_path) as uri:
        yield tmp_path, uri


def make_trainer(world: Path, params, accelerator: Accelerator | None = None) -> PPOTrainer:
    torch.manual_seed(params.seed)  # LoRA A and value-head initialisation, as run_ppo does
    tokenizer = AutoTokenizer.from_pretrained(world / "models" / "policy")
    tokenizer.padding_side = "right"
    policy = Seq2SeqPolicy(AutoModelForSeq2SeqLM.from_pretrained(world / "models" / "policy"), params.ppo)
    scorer = RewardScorer.from_pretrained(world / "models" / "reward", params.reward)
    return PPOTrainer(policy, tokenizer, scorer, params.ppo, accelerator or Accelerator(), params.seed)


def initial_trainable_weights(world: Path, params) -> dict[str, torch.Tensor]:
    """A freshly built policy's trainable weights, initialised as :func:`make_trainer` does (did steps train?)."""
    torch.manual_seed(params.seed)
    policy = Seq2SeqPolicy(AutoModelForSeq2SeqLM.from_pretrained(world / "models" / "policy"), params.ppo)
    return {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}


def train_batch(world: Path, params, n: int = 8) -> tuple[list[str], list[str]]:
    frame = pd.read_parquet(world / "data" / "raw" / "train.parquet").iloc[:n]
    dialogues = frame["dialogue"].tolist()
    return build_prompts(dialogues, params.prompt.template), dialogues


def lora_b(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p for n, p in trainer.unwrapped.named_parameters() if "lora_B" in n}


@torch.no_grad()
def perturb_lora_b(trainer: PPOTrainer, std: float = 0.5) -> None:
    """Give LoRA's B matrices (zero at initialisation) random values, as after some training."""
    generator = torch.Generator().manual_seed(0)
    for param in lora_b(trainer).values():
        param.copy_(torch.randn(param.shape, generator=generator) * std)


def read_history(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def deterministic_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith(names.TIMING_PREFIX)]  # not the clock


def kernel_tolerance(values: torch.Tensor, tokens: int = 1) -> float:
    """How far two kernels may compute the tiny policy's per-token ``values`` (log-probs, values, entropy,
    logits) apart, or their sums over ``tokens`` tokens (a sequence's KL): from their dtype and magnitude."""
    return conftest.tolerance(values.dtype, D_MODEL * tokens, values.abs().max())


# --------------------------------------------------------------------------- 1. the free check


@pytest.mark.parametrize("dropout", [False, True], ids=["dropout_disabled", "dropout_enabled"])
def test_first_rollout_kl_is_zero_while_lora_b_is_zero(world, dropout):
    """With LoRA's B at zero the policy *is* the reference, so the first rollout's KL is 0.

    With ``ppo.disable_dropout: false`` (and lora dropout 0.05) this is still asserted,
    and it is meaningful only in this sense: T5's dropout (0.1) is kept but inactive,
    because the trainer runs rollouts and forwards in eval mode, and the LoRA branch
    contributes exactly 0 while B is 0. The check then makes B non-zero to show
    that the reference forward really switches the adapters off (the 0 is not vacuous).
    """
    params = ppo_params(**({"ppo.disable_dropout": False, "ppo.lora.dropout": 0.05} if dropout else {}))
    trainer = make_trainer(world, params)
    dropouts = {n: m.p for n, m in trainer.unwrapped.named_modules() if isinstance(m, torch.nn.Dropout)}
    if dropout:
        assert {p for n, p in dropouts.items() if "lora_dropout" in n} == {0.05}
        assert {p for n, p in dropouts.items() if "lora_dropout" not in n} == {0.1}
    else:
        assert set(dropouts.values()) == {0.0}
    assert lora_b(trainer) and all(bool((b == 0).all()) for b in lora_b(trainer).values())

    prompts, dialogues = train_batch(world, params)
    batch = trainer.rollout(prompts, 0)
    old = forwards(trainer, batch)
    mask = batch.mask
    assert mask.any(1).all()
    assert old["logprobs"].shape == old["ref_logprobs"].shape == old["values"].shape == mask.shape
    gap = (old["logprobs"] - old["ref_logprobs"])[mask].abs().max().item()
    assert gap < kernel_tolerance(old["logprobs"][mask]), f"KL at initialisation must be 0, got max |logp - ref| {gap}"
    assert torch.isfinite(old["logprobs"][mask]).all() and (old["logprobs"][mask] <= 0).all()

    perturb_lora_b(trainer)
    moved = forwards(trainer, batch)
    assert (moved["logprobs"] - moved["ref_logprobs"])[mask].abs().max().item() > 1e-3
    assert torch.equal(moved["ref_logprobs"], old["ref_logprobs"])  # the same forward, adapters off: equal


@pytest.mark.parametrize("scope", ["decoder", "all"])
def test_rollout_is_seeded_by_step_and_its_old_stats_equal_a_teacher_forced_forward(world, scope):
    """The rollout keeps generate's raw logits and last decoder hidden states of each sampled
    position; the old log-probs, values and entropy made from them must equal those of a
    separate teacher-forced forward pass (T5's shift-right) on every real response token."""
    params = ppo_params(**{"ppo.lora.scope": scope})
    trainer = make_trainer(world, params)
    perturb_lora_b(trainer, std=0.2)  # a policy that differs from the reference
    prompts, dialogues = train_batch(world, params)

    first, again, other = (trainer.rollout(prompts, s) for s in (3, 3, 4))
    assert torch.equal(first.response_ids, again.response_ids) and first.responses == again.responses
    assert first.responses != other.responses
    assert first.response_ids.size(1) <= params.ppo.response_length.max
    assert (first.encoder_hidden is not None) == (scope == "decoder")

    forward = forwards(trainer, first)
    mask = first.mask
    for key in ("logprobs", "values", "entropy"):
        captured = getattr(first.captured, key)
        assert captured.shape == mask.shape
        torch.testing.assert_close(
            captured[mask],
            forward[key][mask],
            atol=kernel_tolerance(forward[key][mask]),
            rtol=0,
            msg=lambda m, key=key: f"{key}: {m}",
        )
    assert (forward["logprobs"] - forward["ref_logprobs"])[mask].abs().max() > 1e-3


def forwards(trainer: PPOTrainer, batch) -> dict[str, torch.Tensor]:
    """Teacher-forced old log-probs, values and entropy, and the reference log-probs, by name."""
    old = trainer.teacher_forced(batch)
    return {
        "logprobs": old.logprobs,
        "values": old.values,
        "entropy": old.entropy,
        "ref_logprobs": trainer.reference_logprobs(batch),
    }


def encoder_calls(trainer: PPOTrainer) -> list[int]:
    """A list that grows by one each time the policy's encoder runs."""
    calls: list[int] = []
    trainer.unwrapped.model.get_encoder().register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_decoder_scope_adapts_only_the_decoder_and_runs_the_encoder_once_per_step(world):
    decoder = make_trainer(world, ppo_params(**{"ppo.lora.scope": "decoder"}))
    everywhere = make_trainer(world, ppo_params(**{"ppo.lora.scope": "all"}))
    adapted = {
        scope: {n.split("base_model.model.")[-1].split(".")[0] for n in lora_b(t)}
        for scope, t in (("decoder", decoder), ("all", everywhere))
    }
    assert adapted == {"decoder": {"decoder"}, "all": {"encoder", "decoder"}}
    assert decoder.unwrapped.encoder_frozen and not everywhere.unwrapped.encoder_frozen

    # Skipping the encoder changes nothing: a forward from encode()'s output equals a full one.
    perturb_lora_b(decoder)
    params = ppo_params()
    prompts, dialogues = train_batch(world, params)
    batch = decoder.rollout(prompts, 0)
    policy = decoder.unwrapped
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "decoder_input_ids": decoder._decoder_inputs(batch.response_ids),
    }
    with torch.no_grad():
        for reference in (False, True):
            full = policy(**inputs, reference=reference)
            reused = policy(**inputs, reference=reference, encoder_hidden=batch.encoder_hidden)
            torch.testing.assert_close(reused[0], full[0], atol=kernel_tolerance(full[0]), rtol=0)
            if not reference:
                torch.testing.assert_close(reused[1], full[1], atol=kernel_tolerance(full[1]), rtol=0)

    # One encoder pass per step with the decoder scope; one per forward with "all".
    counts = {}
    for scope, trainer in (("decoder", decoder), ("all", everywhere)):
        calls = encoder_calls(trainer)
        trainer.step(prompts, dialogues, 1)
        counts[scope] = len(calls)
    minibatches = params.ppo.batch_size // params.ppo.mini_batch_size
    # "all": the rollout's encoder, the reference chunks, then every epoch's mini-batches.
    assert counts == {"decoder": 1, "all": 1 + minibatches + params.ppo.ppo_epochs * minibatches}


def test_one_step_reports_trl_stats_with_zero_kl_and_trains_only_the_adapters(world, monkeypatch):
    params = ppo_params()
    trainer = make_trainer(world, params)
    prompts, dialogues = train_batch(world, params)
    base_before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if not p.requires_grad}
    assert base_before, "the base model must be frozen under LoRA"
    head_before = trainer.unwrapped.value_head.summary.weight.detach().clone()

    ratios = []  # the first mini-batch of the first epoch must see ratio 1: same function as the rollout
    real_policy_loss = objectives.policy_loss

    def recording_policy_loss(*args, **kwargs):
        loss, stats = real_policy_loss(*args, **kwargs)
        ratios.append((stats["ratio"].item(), stats["approxkl"].item()))
        return loss, stats

    monkeypatch.setattr(objectives, "policy_loss", recording_policy_loss)
    stats, batch = trainer.step(prompts, dialogues, 0)

    assert sorted(stats) == sorted((*names.STEP_STATS, *names.TIMINGS))
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values()), stats
    # The old log-probs come from generate's cached decoding, the reference's from a full forward: a KL of 0 up to
    # the rounding of a sum over the response's tokens (measured 2.2e-7 with AVX-512 kernels, 1.1e-6 with AVX2).
    logprobs = batch.captured.logprobs[batch.mask]
    assert abs(stats["objective/kl"]) < kernel_tolerance(logprobs, tokens=params.ppo.response_length.max)
    assert stats["objective/kl_coef"] == params.ppo.kl.init_coef
    assert stats["objective/entropy"] > 0 and stats["env/reward_std"] >= 0
    assert stats["tokens/responses_len_mean"] == pytest.approx(batch.mask.sum(1).float().mean().item())
    assert 1 <= stats["tokens/responses_len_mean"] <= params.ppo.response_length.max
    scores = trainer.scorer.score(batch.responses, dialogues).reward
    assert stats["env/reward_mean"] == pytest.approx(
        scores.mean().item(), abs=conftest.tolerance(scores.dtype, len(scores), scores.abs().max())
    )
    assert 0 <= stats["ppo/policy/clipfrac"] <= 1 and 0 <= stats["ppo/val/clipfrac"] <= 1
    assert all(stats[k] > 0 for k in names.TIMINGS)
    assert stats["ppo/policy/ratio_min"] <= stats["ppo/policy/ratio_mean"] <= stats["ppo/policy/ratio_max"]
    assert stats["ppo/val/var_explained"] == pytest.approx(1 - stats["ppo/val/error"] / stats["ppo/returns/var"])
    n_minibatches = params.ppo.ppo_epochs * params.ppo.batch_size // params.ppo.mini_batch_size
    assert len(ratios) == n_minibatches
    per_token = kernel_tolerance(logprobs)  # the rollout's log-probs against the training forward's
    assert abs(ratios[0][0] - 1) < per_token and ratios[0][1] < per_token**2, ratios[0]

    assert any(bool((b != 0).any()) for b in lora_b(trainer).values()), "the adapters did not learn"
    assert not torch.equal(trainer.unwrapped.value_head.summary.weight, head_before)
    after = dict(trainer.unwrapped.named_parameters())
    for name, before in base_before.items():
        assert torch.equal(after[name], before), f"the frozen {name} changed"
    assert not trainer.unwrapped.training, "the policy must be left in eval mode for the next rollout"


def test_shaping_penalties_lower_each_score_by_the_words_its_dialogue_lacks_and_the_words_that_loop(world, monkeypatch):
    """ppo.novel_word_penalty and ppo.repeat_penalty: the objective gets the reward model's score less each penalty
    per novel and per looping word of each response; the step reports the mean counts (env/novel_words_mean,
    env/repeated_words_mean)."""
    from detox.ppo.shaping import novel_words, repeated_words

    params = ppo_params(
        **{
            "ppo.algorithm": "rloo",
            "ppo.samples_per_prompt": 2,
            "ppo.novel_word_penalty": 0.5,
            "ppo.repeat_penalty": 0.25,
        }
    )
    trainer = make_trainer(world, params)
    prompts, dialogues = train_batch(world, params, n=4)
    seen = {}
    real_rewards = trainer.objective.rewards

    def recording(scores, *args, **kwargs):
        seen["scores"] = scores.clone()
        return real_rewards(scores, *args, **kwargs)

    monkeypatch.setattr(trainer.objective, "rewards", recording)
    stats, batch = trainer.step(prompts, dialogues, 0)
    repeated = [d for d in dialogues for _ in range(2)]
    novel = novel_words(batch.responses, repeated)
    loops = repeated_words(batch.responses)
    reward = trainer.scorer.score(batch.responses, repeated).reward
    assert novel.sum() > 0, "the tiny policy's summaries hold words their dialogues lack"
    assert loops.sum() > 0, "the tiny policy's summaries loop"
    torch.testing.assert_close(seen["scores"], reward - 0.5 * novel - 0.25 * loops, atol=1e-5, rtol=0)
    assert stats["env/novel_words_mean"] == pytest.approx(novel.mean().item())
    assert stats["env/repeated_words_mean"] == pytest.approx(loops.mean().item())


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_critic_free_step_samples_k_per_prompt_builds_no_value_head_and_reports_trl_stats(
    world, algorithm, monkeypatch
):
    params = ppo_params(**{"ppo.algorithm": algorithm, "ppo.samples_per_prompt": 2})
    trainer = make_trainer(world, params)
    policy = trainer.unwrapped
    assert policy.value_head is None and not any("value_head" in name for name in policy.state_dict())
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if "lora_" in n}
    # the adapters and the decoder's final norm (ppo.lora.train_modules), no value head
    assert adapters and trainable - adapters == {
        "model.base_model.model.decoder.final_layer_norm.modules_to_save.default.weight"
    }
    prompts, dialogues = train_batch(world, params, n=4)  # 4 prompts x 2 samples = batch_size 8

    ratios = []
    loss_name = f"{algorithm}_loss"
    real_loss = getattr(objectives, loss_name)

    def recording_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        ratios.append(stats["ratio"].item())
        return loss, stats

    monkeypatch.setattr(objectives, loss_name, recording_loss)
    stats, batch = trainer.step(prompts, dialogues, 0)

    assert sorted(stats) == sorted((*names.CRITIC_FREE_STEP_STATS, *names.TIMINGS))
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values()), stats
    assert len(batch.responses) == 8 and batch.captured.values is None
    assert torch.equal(batch.input_ids[0::2], batch.input_ids[1::2]), "each prompt's k samples are consecutive"
    assert batch.responses[0::2] != batch.responses[1::2], "the k samples of a prompt are drawn independently"
    expected_coef = params.ppo.grpo.beta if algorithm == "grpo" else params.ppo.kl.init_coef
    assert stats["objective/kl_coef"] == expected_coef
    assert 0 <= stats["frac_reward_zero_std"] <= 1 and stats["env/reward_group_std"] >= 0
    assert all(0 <= stats[name] <= 1 for name in names.CLIP_RATIOS)
    assert stats["completions/mean_length"] == stats["tokens/responses_len_mean"]
    assert stats["reward"] == stats["env/reward_mean"]
    assert len(ratios) == params.ppo.ppo_epochs * params.ppo.batch_size // params.ppo.mini_batch_size
    logprobs = batch.captured.logprobs[batch.mask]
    assert abs(ratios[0] - 1) < kernel_tolerance(logprobs, tokens=params.ppo.response_length.max), ratios[0]
    assert any(bool((b != 0).any()) for b in lora_b(trainer).values()), "the adapters did not learn"


def test_dropout_enabled_rollout_forwards_are_deterministic_from_the_first_step(world):
    params = ppo_params(**{"ppo.disable_dropout": False, "ppo.lora.dropout": 0.05})
    trainer = make_trainer(world, params)
    perturb_lora_b(trainer)  # as after loading a checkpoint: B is not zero any more
    prompts, dialogues = train_batch(world, params)
    batch = trainer.rollout(prompts, 0)
    first, second = forwards(trainer, batch), forwards(trainer, batch)
    torch.testing.assert_close(first["logprobs"], second["logprobs"], atol=0, rtol=0)


# --------------------------------------------------------------------------- 1b. the rollout samples on its own


WARPED = {
    "generation.do_sample": False,
    "generation.temperature": 0.5,
    "generation.top_k": 3,
    "generation.top_p": 0.5,
    "generation.min_new_tokens": 6,
}


def test_rollout_ignores_generation_settings_and_the_model_folders_generation_config(world):
    """PPO samples from the policy's own distribution whatever generation.* and generation_config.json say."""
    params = ppo_params()
    prompts, dialogues = train_batch(world, params)
    plain = make_trainer(world, params).rollout(prompts, 0)

    warped = make_trainer(world, ppo_params(**WARPED))
    base = warped.unwrapped.generator()
    poisoned = base.generation_config
    poisoned.repetition_penalty, poisoned.no_repeat_ngram_size = 10.0, 1
    poisoned.suppress_tokens = [int(plain.response_ids[0, 0])]  # the first token a pure sample drew
    batch = warped.rollout(prompts, 0)
    assert batch.responses == plain.responses
    assert torch.equal(batch.response_ids, plain.response_ids)
    assert base.generation_config is poisoned  # the folder's config is put back after the rollout
    old = forwards(warped, batch)
    gap = (old["logprobs"] - old["ref_logprobs"])[batch.mask].abs().max().item()
    assert gap < kernel_tolerance(old["logprobs"][batch.mask])  # still the policy's own distribution: the first KL is 0


def test_ppo_sampler_inverse_cdf_draws_the_rollouts_and_checkpoint_evaluations(world, monkeypatch):
    """ppo.sampler reaches the rollout and the checkpoint evaluation: every draw goes through inverse_cdf_sample,
    seeded by the step as before, other responses than torch.multinomial's; generation.sampler does not reach PPO."""
    from detox.models import sampling
    from detox.ppo.selection import ValidationSet, evaluate_policy

    calls: list[tuple[int, ...]] = []
    real = sampling.inverse_cdf_sample
    monkeypatch.setattr(sampling, "inverse_cdf_sample", lambda p, g=None: calls.append(p.shape) or real(p, g))
    params = ppo_params(**{"ppo.sampler": "inverse_cdf"})
    prompts, dialogues = train_batch(world, params)
    trainer = make_trainer(world, params)
    first = trainer.rollout(prompts, 3)
    steps = len(calls)
    vocab = trainer.unwrapped.config.vocab_size
    assert steps >= params.ppo.response_length.min and set(calls) == {(len(prompts), vocab)}
    assert trainer.rollout(prompts, 3).responses == first.responses
    plain = make_trainer(world, ppo_params(**{"generation.sampler": "inverse_cdf"})).rollout(prompts, 3)
    assert len(calls) == 2 * steps  # generation.sampler is not PPO's
    assert plain.responses != first.responses

    data = ValidationSet(prompts, dialogues, dialogues, trainer.scorer, {})
    evaluate_policy(trainer, data, seed=5)
    assert len(calls) > 2 * steps


def test_rollout_config_is_pure_sampling_with_only_the_length_as_a_knob(world):
    trainer = make_trainer(world, ppo_params(**WARPED))
    config = trainer.rollout_config(17)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 1.0, 0, 1.0)
    assert (config.min_new_tokens, config.max_new_tokens) == (0, 17)
    assert config.repetition_penalty in (None, 1.0) and not config.no_repeat_ngram_size


def test_generation_settings_do_not_rerun_or_invalidate_ppo(world):
    """dvc.yaml: generation.* is not a param of the ppo stage; the checkpoint fingerprint ignores it too."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert not any(str(p).startswith("generation") for p in stages["ppo"]["params"])
    assert "generation" in stages["baseline"]["params"] and "generation" in stages["evaluate"]["params"]
    models = (world / "models" / "policy", world / "models" / "reward")
    assert fingerprint(ppo_params(), *models) == fingerprint(ppo_params(**WARPED), *models)
    assert fingerprint(ppo_params(), *models) != fingerprint(ppo_params(**{"ppo.max_source_tokens": 64}), *models)


def test_a_checkpoint_is_not_resumed_with_another_number_of_processes(world):
    models = (world / "models" / "policy", world / "models" / "reward")
    one = fingerprint(ppo_params(), *models)
    assert one == fingerprint(ppo_params(), *models, processes=1)
    assert fingerprint(ppo_params(), *models, processes=2) != one  # other data per step and other seeds


# --------------------------------------------------------------------------- 2. masking


def test_padding_after_eos_does_not_change_old_logprobs_values_or_entropy(world):
    """Batched (encoder right-padded, responses padded or junk after EOS, two mini-batch
    chunks) and one-row-at-a-time unpadded forwards agree on every real response token."""
    params = ppo_params()
    trainer = make_trainer(world, params)
    perturb_lora_b(trainer, std=0.2)  # so logprobs, ref_logprobs and values all differ
    prompts, dialogues = train_batch(world, params)
    rollout = trainer.rollout(prompts, 0)
    assert not rollout.attention_mask.all(), "the prompts should have different lengths"

    ids = rollout.response_ids.clone()
    n, width = ids.shape
    assert width >= 8
    generator = torch.Generator().manual_seed(0)
    lengths = []
    for row in range(n):
        length = 1 + (3 * row) % width  # EOS at varied positions, including the first and the last
        body = ids[row, : length - 1]
        body[(body == EOS) | (body == PAD)] = 5  # no earlier EOS
        ids[row, length - 1] = EOS
        if row % 2:  # after EOS: pad (what generate writes) or junk (must be ignored all the same)
            ids[row, length:] = PAD
        else:
            ids[row, length:] = torch.randint(3, 50, (width - length,), generator=generator)
        lengths.append(length)
    mask = response_mask(ids, EOS, PAD)
    assert mask.sum(1).tolist() == lengths

    batched = forwards(trainer, replace(rollout, response_ids=ids, mask=mask, encoder_hidden=None))
    assert params.ppo.mini_batch_size < n  # the batched pass is split in chunks
    for row, length in enumerate(lengths):
        source = int(rollout.attention_mask[row].sum())
        single = forwards(
            trainer,
            replace(
                rollout,
                input_ids=rollout.input_ids[row : row + 1, :source],
                attention_mask=rollout.attention_mask[row : row + 1, :source],
                response_ids=ids[row : row + 1, :length],
                mask=mask[row : row + 1, :length],
                responses=[rollout.responses[row]],
                encoder_hidden=None,
            ),
        )
        for key in ("logprobs", "ref_logprobs", "values", "entropy"):
            torch.testing.assert_close(
                batched[key][row, :length],
                single[key][0],
                atol=kernel_tolerance(single[key][0]),
                rtol=0,
                msg=lambda m, key=key, row=row: f"{key}, row {row}: {m}",
            )


# --------------------------------------------------------------------------- 3. PPO works (slow)


@pytest.fixture(scope="module")
def mid_world(tmp_path_factory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("mid_world")
    started = time.perf_counter()
    conftest.build_world(tiny_params(**MID_WORLD), root)
    return root, time.perf_counter() - started


@pytest.mark.slow
def test_ppo_raises_heldout_reward_with_bounded_kl(mid_world, tmp_path):
    world, fetch_seconds = mid_world
    params = tiny_params(
        **MID_WORLD,
        **{
            "ppo.steps": 12,
            "ppo.batch_size": 16,
            "ppo.mini_batch_size": 8,
            "ppo.learning_rate": 3e-3,
            "ppo.kl.init_coef": 0.2,  # a loose leash, so that 12 steps move the reward clearly
            "ppo.eval_every": None,  # the last step is what this test measures
            "ppo.checkpoint_every": 1000,
            "ppo.response_length.min": 24,
            "ppo.response_length.max": 32,
        },
    )
    heldout = pd.read_parquet(world / "data" / "raw" / "validation.parquet")
    base_model, tokenizer = load_policy(world / "models" / "policy")
    scorer = RewardScorer.from_pretrained(world / "models" / "reward", params.reward)

    def evaluate(model) -> pd.DataFrame:  # the same prompts, seed and settings for both: a paired comparison
        frame, _ = score_policy(
            model, tokenizer, scorer, heldout, params.prompt.template, params.generation, seed=params.eval.seed
        )
        return frame

    before = evaluate(base_model)
    heated = before["heated"]
    toxic_share_heated = float((before.loc[heated, "toxicity"] > TOXIC_THRESHOLD).mean())
    assert heated.sum() >= 20
    assert toxic_share_heated > 0.2, f"the world is too weak to test PPO: heated toxic share {toxic_share_heated}"

    with mlflow_project(tmp_path):
        started = time.perf_counter()
        metrics = run_ppo(params, world_paths(world, tmp_path))
        ppo_seconds = time.perf_counter() - started
    after = evaluate(load_trained_policy(tmp_path / "models" / "ppo"))
    assert (after["id"] == before["id"]).all()

    summary = {
        "fetch_s": round(fetch_seconds, 1),
        "ppo_s": round(ppo_seconds, 1),
        "heated_toxic_share_before": toxic_share_heated,
        "heated_toxic_share_after": float((after.loc[heated, "toxicity"] > TOXIC_THRESHOLD).mean()),
        "reward_before": float(before["reward"].mean()),
        "reward_after": float(after["reward"].mean()),
        "toxicity_before": float(before["toxicity"].mean()),
        "toxicity_after": float(after["toxicity"].mean()),
        "kl_last5": metrics["kl_last5"],
        "kl_min": metrics["kl_min"],
    }
    print(json.dumps(summary))
    assert summary["reward_after"] > summary["reward_before"] + 1.0, summary
    assert summary["toxicity_after"] < summary["toxicity_before"] - 0.15, summary
    assert after.loc[heated, "reward"].mean() > before.loc[heated, "reward"].mean() + 1.0, summary
    assert metrics["steps"] == 12 and not metrics["early_stopped"]
    assert json.loads((tmp_path / "metrics" / "ppo.json").read_text()) == metrics
    assert 0 < metrics["kl_last5"] < 20, summary
    # The k1 estimate is unbiased but noisy: with 16 responses and a true KL near 0 (step 1)
    # one batch mean can be a few tenths below 0 (measured: batch means of -0.09..+0.42 around
    # a true 0.24). A systematic bias (warped sampling) drives it to -1 and below.
    assert metrics["kl_min"] > -0.3, summary
    history = read_history(tmp_path / "plots" / "ppo" / "history.tsv")
    assert history["objective/kl"].iloc[1:].mean() > 0


# --------------------------------------------------------------------------- 4. checkpoints and resume


RESUME = {"ppo.steps": 4, "ppo.checkpoint_every": 2}


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    """A 4-step run with a checkpoint at step 2 that nothing interrupts (the reference)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    with mlflow_project(root) as uri:
        metrics = run_ppo(ppo_params(**RESUME), world_paths(world, root))
    return root, uri, metrics


def steps_spy(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Record the steps PPOTrainer.step runs; raise KeyboardInterrupt at ``interrupt_at``."""
    called: list[int] = []
    real_step = PPOTrainer.step

    def step(self, prompts, dialogues, step):
        if step == interrupt_at:
            raise KeyboardInterrupt
        called.append(step)
        return real_step(self, prompts, dialogues, step)

    monkeypatch.setattr(PPOTrainer, "step", step)
    return called


def test_interrupted_run_resumes_exactly_where_it_stopped(world, uninterrupted, project, monkeypatch, caplog):
    root, uri = project
    params, paths = ppo_params(**RESUME), world_paths(world, root)

    with monkeypatch.context() as patch:
        called = steps_spy(patch, interrupt_at=3)
        with pytest.raises(KeyboardInterrupt):
            run_ppo(params, paths)
    assert called == [0, 1, 2]
    assert [p.name for p in paths.checkpoints.iterdir()] == ["step_000002.pt"]
    state = torch.load(paths.checkpoints / "step_000002.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and [row["step"] for row in state["history"]] == [0, 1]
    assert state["fingerprint"] == fingerprint(params, paths.policy, paths.reward)
    assert not paths.out.exists() and not paths.history.exists() and not paths.metrics.exists()
    assert not [p for p in (root / "models").glob(".*")], "no scratch folder may be left behind"
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(state["run_id"]).info.status == "KILLED"

    called = steps_spy(monkeypatch)
    with caplog.at_level("INFO", logger="detox.ppo.train"):
        metrics = run_ppo(params, paths)
    assert called == [2, 3], "the resumed run must start at the checkpoint's step"
    assert "resuming" in caplog.text
    assert not paths.checkpoints.exists(), "a finished run removes its checkpoints"
    history = read_history(paths.history)
    assert history["step"].tolist() == [0, 1, 2, 3] and metrics["steps"] == 4

    reference_root, _, reference_metrics = uninterrupted
    reference = read_history(world_paths(world, reference_root).history)
    assert list(history.columns) == list(reference.columns)
    for column in deterministic_columns(reference):
        assert history[column].tolist() == reference[column].tolist(), column  # the same machine: exact
    assert metrics == reference_metrics  # metrics hold no timings: every value must match

    record = json.loads((paths.out / RUN_FILE).read_text())
    assert record["run_id"] == state["run_id"], "the resumed run keeps its MLflow run"
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    logged = client.get_metric_history(record["run_id"], "env/reward_mean")
    assert sorted({m.step for m in logged}) == [0, 1, 2, 3]
    by_step = {}
    for m in logged:  # step 2 ran (and was logged) before the interruption and again after it
        by_step.setdefault(m.step, []).append(m.value)
    for step, values in by_step.items():
        assert values == [history["env/reward_mean"][step]] * len(values), step

    model = load_trained_policy(paths.out)
    tokenizer = AutoTokenizer.from_pretrained(paths.out)
    ids = tokenizer(train_batch(world, params, 2)[0], return_tensors="pt", padding=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > 1


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_critic_free_run_resumes_exactly_after_a_kill(world, algorithm, tmp_path, monkeypatch):
    params = ppo_params(**RESUME, **{"ppo.algorithm": algorithm, "ppo.samples_per_prompt": 2})
    whole = tmp_path / "whole"
    with mlflow_project(whole):
        reference_metrics = run_ppo(params, world_paths(world, whole))
    root = tmp_path / "resumed"
    paths = world_paths(world, root)
    with mlflow_project(root):
        with monkeypatch.context() as patch:
            steps_spy(patch, interrupt_at=3)
            with pytest.raises(KeyboardInterrupt):
                run_ppo(params, paths)
        called = steps_spy(monkeypatch)
        metrics = run_ppo(params, paths)
    assert called == [2, 3], "the resumed run must start at the checkpoint's step"
    history, reference = read_history(paths.history), read_history(world_paths(world, whole).history)
    assert list(history.columns) == list(reference.columns) and "ppo/val/error" not in history.columns
    for column in deterministic_columns(reference):
        assert history[column].tolist() == reference[column].tolist(), column  # the same machine: exact
    assert metrics == reference_metrics
    assert not (paths.out / "value_head.safetensors").exists(), "no value head to save"
    load_trained_policy(paths.out)


def test_checkpoint_from_other_params_is_ignored(world, project, monkeypatch, caplog):
    root, uri = project
    paths = world_paths(world, root)
    with monkeypatch.context() as patch:
        steps_spy(patch, interrupt_at=1)
        with pytest.raises(KeyboardInterrupt):
            run_ppo(ppo_params(**{"ppo.steps": 4, "ppo.checkpoint_every": 1}), paths)
    old = torch.load(paths.checkpoints / "step_000001.pt", map_location="cpu", weights_only=True)

    other = ppo_params(**{"ppo.steps": 2, "ppo.checkpoint_every": 1, "ppo.learning_rate": 2e-4})
    assert fingerprint(other, paths.policy, paths.reward) != old["fingerprint"]
    called = steps_spy(monkeypatch)
    with caplog.at_level("WARNING", logger="detox.ppo.train"):
        metrics = run_ppo(other, paths)
    assert called == [0, 1], "a checkpoint made with other params must not be resumed"
    assert "ignoring checkpoints" in caplog.text
    assert metrics["steps"] == 2 and not paths.checkpoints.exists()
    run_id = json.loads((paths.out / RUN_FILE).read_text())["run_id"]
    assert run_id != old["run_id"]
    assert MlflowClient(tracking_uri=uri).get_run(run_id).data.params["ppo.learning_rate"] == "0.0002"


# --------------------------------------------------------------------------- 5. MLflow


def test_mlflow_run_has_params_and_one_metric_value_per_step(world, uninterrupted):
    root, uri, metrics = uninterrupted
    paths = world_paths(world, root)
    record = json.loads((paths.out / RUN_FILE).read_text())
    assert record["tracking_uri"] == uri and record["experiment"] == "detox-summaries"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "detox-summaries"
    assert run.data.params["ppo.learning_rate"] == str(ppo_params().ppo.learning_rate)
    assert run.data.params["ppo.batch_size"] == "8"
    assert json.loads(run.data.params["ppo.lora.target_modules"]) == ["q", "v"]
    assert run.data.tags["stage"] == "ppo"

    history = read_history(paths.history)
    logged = sorted(client.get_metric_history(record["run_id"], "env/reward_mean"), key=lambda m: m.step)
    assert [m.step for m in logged] == [0, 1, 2, 3]
    assert [m.value for m in logged] == history["env/reward_mean"].tolist()  # one number, stored twice
    assert len(client.get_metric_history(record["run_id"], "objective/kl")) == 4
    assert run.data.metrics["summary/steps"] == 4
    assert run.data.metrics["summary/kl_last5"] == pytest.approx(metrics["kl_last5"])
    artifacts = [a.path for a in client.list_artifacts(record["run_id"], "ppo")]
    assert artifacts == ["ppo/history.tsv"]
    assert len(client.search_runs([run.info.experiment_id])) == 1


# --------------------------------------------------------------------------- 6. guards


def test_nan_loss_raises_a_readable_training_diverged_error(world, project, monkeypatch):
    root, uri = project
    paths = world_paths(world, root)

    def nan_scores(self, responses, dialogues=None):
        n = len(responses)
        return Scores(reward=torch.full((n,), float("nan")), toxicity=torch.zeros(n))

    monkeypatch.setattr(RewardScorer, "score", nan_scores)
    with pytest.raises(TrainingDivergedError) as err:
        run_ppo(ppo_params(**{"ppo.steps": 2}), paths)
    message = str(err.value)
    assert message.startswith("non-finite loss at PPO step 0 (policy loss nan")
    for advice in ("ppo.learning_rate", "ppo.score.normalize", "ppo.score.clip", "ppo.kl.init_coef"):
        assert advice in message
    assert not paths.out.exists() and not paths.metrics.exists()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("detox-summaries").experiment_id])
    assert run.info.status == "FAILED"  # an error, not an interruption (those end KILLED, and resume)


def test_max_kl_stops_early_after_the_first_step_over_it(world, project):
    root, _ = project
    paths = world_paths(world, root)
    # The "abs" estimator is never negative, so the first step after an update (step 1) is over a
    # small bound; with k1 one noisy batch could come out below it. Step 0's KL is 0 up to float
    # noise (the old log-probs come from generate's cached decoding, the reference's from a forward).
    params = ppo_params(**{"ppo.steps": 5, "ppo.max_kl": 1e-4, "ppo.kl.estimator": "abs"})
    metrics = run_ppo(params, paths)
    assert metrics["early_stopped"] is True and metrics["steps"] == 2
    assert "ppo.max_kl" in metrics["stop_reason"] and "at step 1" in metrics["stop_reason"]
    history = read_history(paths.history)
    assert history["step"].tolist() == [0, 1]
    assert history["objective/kl"][0] < params.ppo.max_kl < history["objective/kl"][1]  # measured: 2e-6, 0.096
    assert json.loads(paths.metrics.read_text()) == metrics
    assert (paths.out / "adapter_config.json").is_file(), "an early-stopped run still saves its policy"


def test_trained_policy_loads_from_any_working_directory(world, tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(world / "models", project / "models")
    shutil.copytree(world / "data", project / "data")
    with mlflow_project(project):
        run_ppo(ppo_params(**{"ppo.steps": 1}), PPOPaths())  # the stage's relative default paths
    base_config = AutoConfig.from_pretrained(world / "models" / "policy")
    other = AutoConfig.from_pretrained(world / "models" / "policy", d_model=base_config.d_model + 16)
    AutoModelForSeq2SeqLM.from_config(other).save_pretrained(elsewhere / "models" / "policy")  # another project
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        model = load_trained_policy(project / "models" / "ppo")
        # PEFT's own loader, as a Hugging Face user calls it, from a folder with another models/policy
        peft_model = AutoPeftModelForSeq2SeqLM.from_pretrained((project / "models" / "ppo").resolve()).eval()
    assert model.config.d_model == base_config.d_model
    assert peft_model.config.d_model == base_config.d_model
    ids = torch.tensor([[5, 6, 7, 1]])
    start = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():  # the adapters are in: the same function as the merged policy
        torch.testing.assert_close(
            peft_model(input_ids=ids, decoder_input_ids=start).logits,
            model(input_ids=ids, decoder_input_ids=start).logits,
        )
    card = (project / "models" / "ppo" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "AutoPeftModelForSeq2SeqLM" in card
    assert "More Information Needed" not in card  # PEFT's blank template is replaced


def test_the_adapter_names_its_base_in_the_project_under_a_dvc_scratch_copy(tmp_path, monkeypatch):
    scratch, project = tmp_path / "scratch", tmp_path / "project"
    (scratch / "models" / "policy").mkdir(parents=True)
    monkeypatch.chdir(scratch)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert absolute_base(Path("models/policy")) == (scratch / "models" / "policy").resolve().as_posix()
    monkeypatch.setenv("DVC_ROOT", str(project))  # dvc exp run --temp: the outputs land in the project
    assert absolute_base(Path("models/policy")) == (project / "models" / "policy").resolve().as_posix()


# ------------------------------------------------------------------ 6b. the settings users are invited to change


def test_train_modules_train_the_decoders_final_norm_and_the_saved_policy_keeps_it(world, tmp_path):
    """ppo.lora.train_modules (default: final_layer_norm): a trained copy of the decoder's last norm beside the
    adapters. The reference keeps the original, so a scaled copy scales the policy's logits, not the reference's;
    the saved adapter folder carries the copy, and the merged policy is the trained one."""
    params = ppo_params()
    assert params.ppo.lora.train_modules == ("final_layer_norm",)
    trainer = make_trainer(world, params)
    policy = trainer.unwrapped
    norm = next(p for n, p in policy.named_parameters() if "final_layer_norm.modules_to_save" in n)
    assert norm.requires_grad and not any(p.requires_grad for n, p in policy.named_parameters() if "encoder" in n), (
        "the encoder stays frozen"
    )
    prompts, _ = train_batch(world, params, n=2)
    enc = trainer.tokenizer(prompts, padding=True, return_tensors="pt")
    start = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        norm.mul_(2.0)  # a sharper policy: the norm feeds lm_head linearly, so every logit doubles
        logits, _ = policy(enc["input_ids"], enc["attention_mask"], start, with_values=False)
        reference, _ = policy(enc["input_ids"], enc["attention_mask"], start, with_values=False, reference=True)
    torch.testing.assert_close(logits, 2 * reference, atol=1e-4, rtol=1e-4)
    policy.save(tmp_path / "ppo", world / "models" / "policy")
    with torch.no_grad():
        merged = load_trained_policy(tmp_path / "ppo")(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=start
        ).logits
    torch.testing.assert_close(merged, logits, atol=1e-4, rtol=1e-4)


def test_full_fine_tuning_trains_the_model_against_a_frozen_reference(world):
    params = ppo_params(**{"ppo.lora.enabled": False, "ppo.learning_rate": 1e-3})
    trainer = make_trainer(world, params)
    policy = trainer.unwrapped
    assert not policy.uses_lora and policy.frozen_reference is not None
    reference = {n: p.detach().clone() for n, p in policy.frozen_reference.named_parameters()}
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    assert all(not p.requires_grad for p in policy.frozen_reference.parameters())
    prompts, dialogues = train_batch(world, params)
    stats, first = trainer.step(prompts, dialogues, 0)
    # the policy equals its frozen copy before the first update (the old log-probs come from generate)
    assert abs(stats["objective/kl"]) < kernel_tolerance(
        first.captured.logprobs[first.mask], tokens=params.ppo.response_length.max
    )
    assert any(not torch.equal(before[n], p) for n, p in policy.model.named_parameters())  # the model trained
    assert all(torch.equal(reference[n], p) for n, p in policy.frozen_reference.named_parameters())
    batch = trainer.rollout(prompts, 1)
    old = forwards(trainer, batch)
    assert (old["logprobs"] - old["ref_logprobs"])[batch.mask].abs().max().item() > 1e-3  # now it differs


def optimizer_steps(trainer: PPOTrainer) -> int:
    """How many updates AdamW made (its per-parameter step counter)."""
    return int(max(state["step"].item() for state in trainer.optimizer.state.values()))


@pytest.mark.parametrize("accumulation, updates", [(1, 4), (2, 2)])
def test_gradient_accumulation_updates_once_per_accumulated_mini_batches(world, accumulation, updates):
    # batch 8, mini-batches of 4, 2 epochs: 4 mini-batches per step, one update per `accumulation` of them
    params = ppo_params(**{"ppo.gradient_accumulation_steps": accumulation})
    trainer = make_trainer(world, params, Accelerator(gradient_accumulation_steps=accumulation, cpu=True))
    prompts, dialogues = train_batch(world, params)
    trainer.step(prompts, dialogues, 0)
    assert optimizer_steps(trainer) == updates


def test_accumulating_two_mini_batches_equals_one_mini_batch_twice_the_size(world, monkeypatch):
    """The accumulated gradient of mini-batches of 4 equals the gradient of one mini-batch of 8 of the same
    rows, up to the weighting of the two halves' token means (the loss is a mean over a mini-batch's tokens)."""
    grads = {}
    for accumulation, mini in ((2, 4), (1, 8)):
        params = ppo_params(
            **{"ppo.gradient_accumulation_steps": accumulation, "ppo.mini_batch_size": mini, "ppo.ppo_epochs": 1}
        )
        trainer = make_trainer(world, params, Accelerator(gradient_accumulation_steps=accumulation, cpu=True))
        captured = {}

        def record(self, closure=None, _captured=captured, _trainer=trainer):  # the gradient the update would use
            for name, p in _trainer.unwrapped.named_parameters():
                if p.requires_grad and p.grad is not None:
                    _captured[name] = p.grad.detach().clone()

        monkeypatch.setattr(type(trainer.optimizer.optimizer), "step", record)
        prompts, dialogues = train_batch(world, params)
        trainer.step(prompts, dialogues, 0)
        grads[accumulation] = captured
    assert grads[1].keys() == grads[2].keys() and grads[1]
    flat = {k: torch.cat([g.flatten() for g in grads[k].values()]) for k in grads}
    cosine = torch.nn.functional.cosine_similarity(flat[1], flat[2], dim=0).item()
    assert cosine > 0.99 and flat[2].norm() / flat[1].norm() == pytest.approx(1.0, rel=0.1)


def test_fixed_kl_controller_keeps_its_coefficient_and_the_adaptive_one_moves(world):
    prompts, dialogues = train_batch(world, ppo_params())
    coefficients = {}
    for adaptive in (False, True):
        params = ppo_params(**{"ppo.kl.adaptive": adaptive, "ppo.kl.init_coef": 0.3, "ppo.kl.horizon": 10})
        trainer = make_trainer(world, params)
        history = [trainer.step(prompts, dialogues, step)[0]["objective/kl_coef"] for step in range(3)]
        coefficients[adaptive] = history + [trainer.kl_ctl.value]
    assert coefficients[False] == [0.3] * 4
    assert coefficients[True][0] == 0.3 and len(set(coefficients[True])) > 1  # KL far below target: it falls
    assert coefficients[True][-1] < 0.3


def test_a_negative_mean_kl_is_warned_about(world, project, monkeypatch, caplog):
    root, _ = project
    original = PPOTrainer.reference_logprobs

    def inflated(self, batch):  # the reference finds every response likelier: logp - ref < 0
        return original(self, batch) + 0.5

    monkeypatch.setattr(PPOTrainer, "reference_logprobs", inflated)
    with caplog.at_level("WARNING", logger="detox.ppo.train"):
        metrics = run_ppo(ppo_params(**{"ppo.steps": 2}), world_paths(world, root))
    assert metrics["kl_min"] < 0
    warnings = [r.getMessage() for r in caplog.records if "mean KL is negative" in r.getMessage()]
    assert len(warnings) == 2 and warnings[0].startswith("step 0: mean KL is negative")
    assert "ppo.disable_dropout" in warnings[0]


# --------------------------------------------------------------------------- 6c. precision


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one AcceleratorState per process: another precision needs it reset, before and after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_step_starts_at_ratio_one_and_zero_kl(world, monkeypatch, fresh_accelerate_state):
    """Rollout, reference and training passes all run under the same autocast, and the old log-probs
    come from the training forward: the first ratio is 1 and the first KL 0, also in bf16."""
    params = ppo_params(**{"ppo.precision": "bf16"})
    trainer = make_trainer(world, params, Accelerator(mixed_precision="bf16", cpu=True))
    ratios = []
    real_policy_loss = objectives.policy_loss

    def recording_policy_loss(*args, **kwargs):
        loss, stats = real_policy_loss(*args, **kwargs)
        ratios.append(stats["ratio"].item())
        return loss, stats

    monkeypatch.setattr(objectives, "policy_loss", recording_policy_loss)
    head = trainer.unwrapped.model.get_output_embeddings()
    dtypes = []  # the LM head's output in every pass of the step: rollout, reference, training
    hook = head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    prompts, dialogues = train_batch(world, params)
    stats, _ = trainer.step(prompts, dialogues, 0)
    hook.remove()
    assert len(dtypes) > params.ppo.response_length.min and set(dtypes) == {torch.bfloat16}
    assert stats["objective/kl"] == 0.0  # policy and reference: the same bf16 forward while LoRA's B is 0
    # bf16 rounding of the old and the new log-probs across mini-batch compositions (measured: exactly 1)
    assert ratios[0] == pytest.approx(1.0, abs=conftest.tolerance(torch.bfloat16, 2))
    assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_frozen_weights_stored_in_bf16_train_bit_for_bit_as_autocast_over_fp32(
    world, monkeypatch, fresh_accelerate_state, caplog, lora
):
    """Under ppo.precision bf16 the engine keeps the frozen linear weights in bf16 (the reference's too,
    the embedding fp32), and two steps give the very numbers of autocast casting fp32 weights at each call."""
    params = ppo_params(**{"ppo.precision": "bf16", "ppo.lora.enabled": lora, "ppo.learning_rate": 1e-3})
    prompts, dialogues = train_batch(world, params)

    def two_steps(trainer):
        stats = [trainer.step(prompts, dialogues, step)[0] for step in range(2)]
        numbers = [{k: v for k, v in s.items() if not k.startswith("time/")} for s in stats]
        return numbers, {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}

    caplog.set_level(logging.INFO, logger="detox.ppo.engine")
    stored = make_trainer(world, params, Accelerator(mixed_precision="bf16", cpu=True))
    policy = stored.unwrapped
    frozen = {
        name: module.weight.dtype
        for holder in (policy.model, policy.frozen_reference)
        if holder is not None
        for name, module in holder.named_modules()
        if type(module) is torch.nn.Linear and not module.weight.requires_grad
    }
    assert len(frozen) >= 16 and set(frozen.values()) == {torch.bfloat16}
    assert f"ppo.precision bf16: {len(frozen)} frozen linear layers stored in bf16" in caplog.text
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    assert policy.model.get_input_embeddings().weight.dtype == torch.float32
    stored_numbers, stored_weights = two_steps(stored)

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setattr(Seq2SeqPolicy, "store_frozen_weights", lambda self, dtype: 0)  # the plain path
    casting = make_trainer(world, params, Accelerator(mixed_precision="bf16", cpu=True))
    assert {p.dtype for p in casting.unwrapped.parameters()} == {torch.float32}
    casting_numbers, casting_weights = two_steps(casting)

    assert stored_numbers == casting_numbers  # every loss, KL, reward and ratio, to the last bit
    assert stored_weights.keys() == casting_weights.keys()
    assert all(torch.equal(stored_weights[n], casting_weights[n]) for n in stored_weights)
    assert any(not torch.equal(stored_weights[n], w) for n, w in initial_trainable_weights(world, params).items())


def test_precision_must_agree_with_accelerate_launch(world, project, monkeypatch):
    root, _ = project
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(DetoxError, match=r"--mixed_precision bf16 but ppo.precision is fp32.*-S ppo.precision=bf16"):
        run_ppo(ppo_params(**{"ppo.steps": 1}), world_paths(world, root))


def test_make_accelerator_takes_the_cpu_when_told_and_the_precision_from_params(fresh_accelerate_state, monkeypatch):
    from detox.ppo.train import make_accelerator

    monkeypatch.setattr("detox.models.precision.cpu_multiplies_bf16", lambda: True)  # any CI machine
    accelerator = make_accelerator(ppo_params(**{"ppo.precision": "bf16"}).ppo, cpu=True)
    assert accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's refusal")
def test_fp16_needs_a_gpu(world, project):
    root, _ = project
    with pytest.raises(DetoxError, match="fp16 needs a GPU"):
        run_ppo(ppo_params(**{"ppo.steps": 1, "ppo.precision": "fp16"}), world_paths(world, root))


# --------------------------------------------------------------------------- 6d. evaluation during training


def eval_stats(
    toxic: float, rouge_l: float = 0.8, reward: float = 1.0, distinct: float = 0.5, length: float = 10.0
) -> dict[str, float]:
    return {
        "eval/oracle/toxic_share": toxic,
        "eval/rougeL": rouge_l,
        "eval/reward_mean": reward,
        "eval/distinct_2": distinct,
        "eval/mean_length": length,
    }


def test_selection_takes_the_least_toxic_checkpoint_above_the_rouge_floor():
    selection = Selection(ppo_params(**{"ppo.select.max_rougeL_drop": 0.05}).ppo)
    saved = []

    def state(step):
        return lambda: saved.append(step) or {"w": torch.tensor([float(step)])}

    assert selection.consider(0, eval_stats(0.5, 0.80), state(0)) is None
    selection.consider(10, eval_stats(0.2, 0.70), state(10))  # less toxic but ROUGE-L below 0.75: not eligible
    selection.consider(20, eval_stats(0.3, 0.78), state(20))
    selection.consider(30, eval_stats(0.3, 0.79, reward=0.5), state(30))  # a tie broken by the higher ROUGE-L
    selection.consider(40, eval_stats(0.4, 0.80), state(40))
    assert selection.best_step == 30 and selection.best_state["w"].item() == 30.0
    assert saved == [0, 20, 30]  # the parameters are copied only when a checkpoint is the best so far
    assert selection.rouge_floor == pytest.approx(0.75) and selection.since_best == 1
    assert "fewest summaries toxic to oracle" in selection.reason and [h["step"] for h in selection.history] == [
        0,
        10,
        20,
        30,
        40,
    ]


def test_selection_breaks_ties_by_rouge_or_by_reward():
    by_reward = Selection(ppo_params(**{"ppo.select.tiebreak": "reward"}).ppo)
    by_rouge = Selection(ppo_params().ppo)
    for selection in (by_reward, by_rouge):
        selection.consider(0, eval_stats(0.5, 0.80), dict)
        selection.consider(10, eval_stats(0.0, 0.85, reward=3.0), dict)
        selection.consider(20, eval_stats(0.0, 0.90, reward=2.0), dict)
        selection.consider(30, eval_stats(0.1, 0.95, reward=4.0), dict)  # more toxic: never wins on a tiebreak
    assert by_reward.best_step == 10 and by_rouge.best_step == 20


def test_selection_stops_on_patience_and_on_collapse():
    patient = Selection(ppo_params(**{"ppo.patience": 2}).ppo)
    patient.consider(0, eval_stats(0.5), dict)
    assert patient.consider(10, eval_stats(0.6), dict) is None
    reason = patient.consider(20, eval_stats(0.6), dict)
    assert reason.startswith("no better checkpoint in 2 evaluations (ppo.patience 2)") and patient.best_step == 0
    collapsing = Selection(ppo_params().ppo)
    collapsing.consider(0, eval_stats(0.5, distinct=0.01), dict)  # the untrained policy is never called collapsed
    reason = collapsing.consider(10, eval_stats(0.0, distinct=0.01), dict)
    assert "collapsed: distinct-2 0.010 < ppo.collapse.min_distinct_2" in reason and collapsing.best_step == 0
    assert "mean length 1.0 words" in collapsing.consider(20, eval_stats(0.0, length=1.0), dict)


def test_evaluation_steps():
    assert evaluation_steps(ppo_params(**{"ppo.steps": 25, "ppo.eval_every": 10}).ppo) == {0, 10, 20, 25}
    assert evaluation_steps(ppo_params(**{"ppo.steps": 20, "ppo.eval_every": 10}).ppo) == {0, 10, 20}
    assert evaluation_steps(ppo_params(**{"ppo.eval_every": None}).ppo) == set()


@pytest.fixture(scope="module")
def judged_world(world, tmp_path_factory):
    """The tiny world with its judges built, as the judges stage builds them."""
    from detox.judges.panel import build_judges

    root = tmp_path_factory.mktemp("judged")
    shutil.copytree(world / "data", root / "data")
    shutil.copytree(world / "models", root / "models")
    build_judges(ppo_params(), root / "models" / "judges")
    return root


def judged_paths(world: Path, project: Path) -> PPOPaths:
    return PPOPaths(
        **{
            **world_paths(world, project).__dict__,
            "validation": world / "data" / "raw" / "validation.parquet",
            "judges": world / "models" / "judges",
            "evaluations": project / "plots" / "ppo" / "eval.tsv",
        }
    )


def test_models_ppo_is_the_selected_checkpoint(judged_world, tmp_path, monkeypatch):
    """Evaluated after 0, 2 and 4 steps; the crafted numbers make step 2 the best: models/ppo is the policy
    after 2 steps, the same as a run that stopped there."""
    import detox.ppo.train as train

    calls = iter([eval_stats(0.5), eval_stats(0.1, reward=3.0), eval_stats(0.3)])
    monkeypatch.setattr(train, "evaluate_policy", lambda trainer, data, seed: next(calls))
    with mlflow_project(tmp_path / "a") as uri:
        params = ppo_params(**{"ppo.steps": 4, "ppo.eval_every": 2})
        paths = judged_paths(judged_world, tmp_path / "a")
        metrics = run_ppo(params, paths)
        run_id = json.loads((paths.out / RUN_FILE).read_text())["run_id"]
        logged = MlflowClient(uri).get_metric_history(run_id, "eval/oracle/toxic_share")
    assert metrics["selected_step"] == 2 and metrics["evaluations"] == 3 and metrics["steps"] == 4
    assert "fewest summaries toxic to oracle" in metrics["selection"]
    assert read_history(paths.evaluations)["step"].tolist() == [0, 2, 4]
    assert sorted((m.step, m.value) for m in logged) == [(0, 0.5), (2, 0.1), (4, 0.3)]
    with mlflow_project(tmp_path / "b"):
        run_ppo(ppo_params(**{"ppo.steps": 2}), world_paths(judged_world, tmp_path / "b"))
    selected = load_trained_policy(paths.out).state_dict()
    two_steps = load_trained_policy(tmp_path / "b" / "models" / "ppo").state_dict()
    assert all(torch.equal(selected[k], two_steps[k]) for k in selected)


def test_evaluation_measures_the_policy_with_the_judges(judged_world):
    from detox.judges.panel import load_judges
    from detox.ppo.selection import ValidationSet, evaluate_policy

    params = ppo_params()
    trainer = make_trainer(judged_world, params)
    frame = pd.read_parquet(judged_world / "data" / "raw" / "validation.parquet").iloc[:8]
    dialogues = frame["dialogue"].tolist()
    data = ValidationSet(
        build_prompts(dialogues, params.prompt.template),
        dialogues,
        frame["summary"].tolist(),
        trainer.scorer,
        load_judges(judged_world / "models" / "judges", ["oracle", "ngram"]),
    )
    first, again = evaluate_policy(trainer, data, seed=5), evaluate_policy(trainer, data, seed=5)
    assert first == again  # seeded: the same checkpoint measures the same
    assert {
        "eval/reward_mean",
        "eval/reward_model/toxic_share",
        "eval/rougeL",
        "eval/fluency_nll",
        "eval/mean_length",
        "eval/distinct_2",
        "eval/looping_share",
        "eval/oracle/toxic_share",
        "eval/ngram/toxic_share",
    } <= set(first)
    assert 0 <= first["eval/looping_share"] <= 1
    assert 0 <= first["eval/oracle/toxic_share"] <= 1 and first["eval/fluency_nll"] > 0
    assert first["eval/mean_length"] > 0


# --------------------------------------------------------------------------- 7. accelerate, 2 processes


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_two_processes_on_cpu(judged_world, tmp_path, algorithm):
    """`accelerate launch --multi_gpu` on a machine without GPUs: two processes, one gloo group.

    Both evaluate during training (after 0, 2 and 3 steps) and so take the same choice of checkpoint. grpo's
    token-mean loss all-reduces its token counts (the gradient equality itself: tests/test_critic_free.py)."""
    steps = 3
    extra = {"ppo.algorithm": algorithm, "ppo.samples_per_prompt": 2} if algorithm != "ppo" else {}
    params = ppo_params(**{"ppo.steps": steps, "ppo.eval_every": 2, **extra})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    shutil.copytree(judged_world / "data" / "raw", tmp_path / "data" / "raw")
    for name in ("policy", "reward", "judges"):
        shutil.copytree(judged_world / "models" / name, tmp_path / "models" / name)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "validation.json").write_text('{"success": true}')  # as the validate stage leaves it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prefix = [
        str(VENV_BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [*prefix, str(ROOT / "stages" / "ppo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=conftest.HANG_S,
    )
    print(f"accelerate launch, 2 processes, {steps} steps: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-5000:]
    finished = re.findall(r"ppo: \d+ steps, .*?, KL -?\d+\.\d{3}", proc.stdout)  # robust to interleaved lines
    assert len(finished) == 2, f"expected both processes to finish, got {finished}"
    assert len(set(finished)) == 1, "the processes must agree on the (all-reduced) metrics"

    out = tmp_path / "models" / "ppo"
    assert (out / "adapter_config.json").is_file() and (out / RUN_FILE).is_file()
    assert not list((tmp_path / "models").glob(".*")), "only the main process writes models/ppo"
    history = read_history(tmp_path / "plots" / "ppo" / "history.tsv")
    assert history["step"].tolist() == list(range(steps))
    assert json.loads((tmp_path / "metrics" / "ppo.json").read_text())["steps"] == steps
    assert not (tmp_path / "checkpoints" / "ppo").exists()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("detox-summaries")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "only the main process talks to MLflow"
    assert runs[0].info.run_id == json.loads((out / RUN_FILE).read_text())["run_id"]
    assert len(client.get_metric_history(runs[0].info.run_id, "env/reward_mean")) == steps
    assert len(client.get_metric_history(runs[0].info.run_id, "eval/oracle/toxic_share")) == 3
    assert read_history(tmp_path / "plots" / "ppo" / "eval.tsv")["step"].tolist() == [0, 2, 3]
    assert json.loads((tmp_path / "metrics" / "ppo.json").read_text())["selected_step"] in (0, 2, 3)
    load_trained_policy(out)  # from any working directory


def test_more_steps_still_resume_the_same_run(world, project):
    """ppo.steps, checkpoint_every and max_kl do not change the steps already taken."""
    root, _ = project
    paths = world_paths(world, root)
    base = ppo_params(**{"ppo.steps": 3, "ppo.checkpoint_every": 1})
    longer = ppo_params(**{"ppo.steps": 5, "ppo.checkpoint_every": 2, "ppo.max_kl": 100.0})
    assert fingerprint(base, paths.policy, paths.reward) == fingerprint(longer, paths.policy, paths.reward)


def test_changed_model_weights_change_the_fingerprint(world, tmp_path):
    """Same file sizes, other weights (e.g. a policy re-fetched with another seed): no resume."""
    params = ppo_params()
    policy = tmp_path / "policy"
    shutil.copytree(world / "models" / "policy", policy)
    before = fingerprint(params, policy, world / "models" / "reward")
    weights = policy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte: same size, different contents
    weights.write_bytes(bytes(data))
    assert fingerprint(params, policy, world / "models" / "reward") != before


def test_running_moments_match_numpy_over_batches():
    from detox.ppo.controllers import RunningMoments

    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (5, 17, 8)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(torch.tensor(batch))
    everything = np.concatenate(batches)
    assert moments.mean == pytest.approx(everything.mean(), rel=1e-9)
    assert moments.std == pytest.approx(everything.std(), rel=1e-9)
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.mean, restored.std) == (moments.mean, moments.std)


def test_scores_are_normalised_and_clipped_when_asked(world):
    trainer = make_trainer(world, ppo_params(**{"ppo.score.normalize": True, "ppo.score.clip": 1.0}))
    scores = torch.tensor([0.0, 1.0, 2.0, 30.0])
    prepared = trainer._prepare_scores(scores)
    expected = ((scores - scores.mean()) / scores.std(unbiased=False)).clamp(-1.0, 1.0)
    torch.testing.assert_close(prepared, expected, rtol=0, atol=conftest.tolerance(scores.dtype, len(scores), 30.0))
    assert prepared.max().item() == 1.0
