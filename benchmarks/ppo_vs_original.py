"""Benchmark: our batched PPO engine against the original notebook's loop, side by side.

Two variants, each in its own subprocess (so each has its own peak memory), on the same
policy weights, reward model, prompts and settings:

- **original** (a faithful re-implementation of the notebook's loop shape): for each
  prompt, one ``generate`` call; a separate frozen ``copy.deepcopy`` of the policy as
  the reference (no LoRA-disable trick); rewards through a transformers
  ``pipeline("text-classification", top_k=None, function_to_apply="none")`` called once
  per sample, taking the ``nothate`` score; old/ref log-probs and values in one forward
  pass per sample; then the SAME PPO math (``detox.ppo.core``) and mini-batch updates
  as ours. Its LoRA is the notebook's: the target modules in the encoder and the decoder.
  Evaluation: per-sample ``generate`` + per-sample pipeline scoring.
- **ours**: ``PPOTrainer.step`` built like ``run_ppo`` builds it (``Seq2SeqPolicy`` with
  params.yaml's ``ppo.lora``, ``RewardScorer``, ``Accelerator``); evaluation through
  ``score_policy``.

Both variants sample ``--max-new-tokens`` tokens (``ppo.response_length`` pinned to it,
``min_new_tokens=0``), use ``--batch-size`` prompts per step, ``--ppo-epochs`` and
``--mini-batch-size`` (params.yaml's unless given) and the rest of ``ppo.*`` from params.yaml.
Each variant is warmed up once (a 2-prompt step, a 2-sample evaluation), then ``--steps`` PPO
steps are timed (median per phase) and one evaluation of ``--eval-samples`` test dialogues.
``--flops`` and ``--profile`` add one more step of ours, counted or profiled phase by phase.

``--size builtin`` uses models/policy; ``--size base`` a random-weight T5 with
flan-t5-base's exact configuration (same seed, so the same weights in both variants)
with the built-in tokenizer. The reward model is models/reward in both.
``--device cuda --dtype bfloat16`` runs both on a GPU in bf16; the memory figure is
then ``torch.cuda.max_memory_allocated`` (after the warm-up) instead of the peak RSS.

    python benchmarks/ppo_vs_original.py --size builtin --steps 3 --eval-samples 64
    python benchmarks/ppo_vs_original.py --size base --steps 2 --eval-samples 16 --flops
    # the original notebook's settings: 48 new tokens, one PPO epoch, mini-batches of 4
    python benchmarks/ppo_vs_original.py --size base --steps 2 --eval-samples 16 --flops \
        --max-new-tokens 48 --ppo-epochs 1 --mini-batch-size 4
    python benchmarks/ppo_vs_original.py --size base --device cuda --dtype bfloat16 --batch-size 64 --flops
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside the timed region
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import pandas as pd
import torch

from common import add_size_argument, check_inputs, matmul_gflops, synchronize
from detox.common.allocator import keep_freed_memory
from detox.common.errors import DetoxError
from detox.common.params import Params, load_params
from detox.ppo import stats as names

PHASES = ("generation", "scoring", "forward", "optimization", "total")
# Our engine's timers of each phase: "forward" is the forward pass with the rewards and advantages, as in the original.
OUR_TIMERS = {
    "generation": (names.TIME_ROLLOUT,),
    "scoring": (names.TIME_SCORE,),
    "forward": (names.TIME_FORWARD_PASS, names.TIME_COMPUTE_REWARDS, names.TIME_COMPUTE_ADVANTAGES),
    "optimization": (names.TIME_OPTIMIZE_STEP,),
    "total": (names.TIME_TOTAL,),
}
VARIANTS = ("original", "ours")
WARMUP_PROMPTS = 2
BASE_SEED = 0  # random-weight flan-t5-base shaped model: the same weights in both subprocesses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_size_argument(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per PPO step")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed PPO steps per variant (default 3 builtin, 1 base)"
    )
    parser.add_argument(
        "--eval-samples", type=int, default=None, help="test dialogues per evaluation (default 64 builtin, 16 base)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="response tokens, the same for both variants")
    parser.add_argument(
        "--ppo-epochs", type=int, default=None, help="PPO epochs per step, both variants; params.yaml's when not given"
    )
    parser.add_argument(
        "--mini-batch-size",
        type=int,
        default=None,
        help="responses per PPO update, both variants; divides --batch-size; params.yaml's when not given",
    )
    parser.add_argument("--policy", default="models/policy", help="folder of the policy (and its tokenizer)")
    parser.add_argument("--reward", default="models/reward", help="folder of the reward classifier")
    parser.add_argument("--train", default="data/raw/train.parquet", help="PPO prompts (first rows)")
    parser.add_argument("--test", default="data/raw/test.parquet", help="evaluation dialogues (first rows)")
    parser.add_argument("--params", default="params.yaml", help="ppo.*, generation.*, reward.*, prompt")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of original,ours")
    parser.add_argument(
        "--ours-lora-scope",
        choices=("params", "decoder", "all"),
        default="params",
        help="ppo.lora.scope for ours (params = params.yaml's); the original always adapts q,v in "
        "the encoder and the decoder, as the notebook did",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where both variants run; on cuda the memory figure is torch.cuda.max_memory_allocated",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights of the policy and the reward model (LoRA and the value head stay float32)",
    )
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=None,
        help="ours: prompts per generate call in the evaluation (default generation.batch_size)",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="also count ours' matmul FLOPs per phase on one extra step and time this machine's "
        "fp32 matmul rate: the step's compute floor",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one extra step of ours under torch.profiler and print each phase's top ops",
    )
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.size == "builtin" else 1
    if args.eval_samples is None:
        args.eval_samples = 64 if args.size == "builtin" else 16
    sizes = (args.batch_size, args.steps, args.eval_samples, args.max_new_tokens)
    optional = (args.eval_batch_size, args.ppo_epochs, args.mini_batch_size)  # None: params.yaml's
    if min(sizes) < 1 or any(n is not None and n < 1 for n in optional):
        parser.error(
            "--batch-size, --steps, --eval-samples, --eval-batch-size, --max-new-tokens, --ppo-epochs and "
            "--mini-batch-size must be at least 1"
        )
    if args.mini_batch_size is not None and args.batch_size % args.mini_batch_size:
        parser.error(
            f"--mini-batch-size {args.mini_batch_size} must divide --batch-size {args.batch_size} "
            "(each PPO epoch updates on whole mini-batches)"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    return args


def bench_params(args: argparse.Namespace) -> Params:
    """params.yaml with the response length pinned to --max-new-tokens and the batch to --batch-size."""
    params = load_params(args.params)
    gen = params.generation.model_copy(
        update={
            "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": 0,
            "batch_size": args.eval_batch_size or params.generation.batch_size,
        }
    )
    length = params.ppo.response_length.model_copy(update={"min": args.max_new_tokens, "max": args.max_new_tokens})
    # PPO against the original PPO loop, whatever params.yaml's ppo.algorithm (benchmarks/algorithms.py: all three)
    update: dict[str, object] = {
        "batch_size": args.batch_size,
        "response_length": length,
        "algorithm": "ppo",
        "samples_per_prompt": None,
    }
    if args.ppo_epochs is not None:
        update["ppo_epochs"] = args.ppo_epochs
    if args.mini_batch_size is not None:
        update["mini_batch_size"] = args.mini_batch_size
    if args.ours_lora_scope != "params":
        update["lora"] = params.ppo.lora.model_copy(update={"scope": args.ours_lora_scope})
    ppo = params.ppo.model_copy(update=update)
    return params.model_copy(update={"generation": gen, "ppo": ppo})


def build_base_model(args: argparse.Namespace):
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    if args.size == "builtin":
        return AutoModelForSeq2SeqLM.from_pretrained(args.policy)
    config = T5Config(
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        vocab_size=32128,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(BASE_SEED)
    model = T5ForConditionalGeneration(config)
    # Random weights give logits with std ~28: sampling is nearly argmax (often the pad token, which
    # detox.ppo.core.response_mask rejects as an unstripped decoder start) and one PPO update at
    # ppo.learning_rate turns them into NaN. Scale the LM head down (logits std ~1.4, a trained model's
    # range) and forbid pad in generate() (both variants call it on this model).
    # transformers 5 ties T5's lm_head to the input embeddings when it builds a model from a config
    # (T5Config forces tie_word_embeddings=True); flan-t5-base's checkpoint has its own lm_head, which
    # from_pretrained keeps untied. Untie it here too, so the model has flan-t5-base's 247.6M parameters.
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight.mul_(0.05)
    model.generation_config.suppress_tokens = [config.pad_token_id]
    return model


STEP_PHASES = {"rollout": "generation", "reference_logprobs": "forward", "optimise": "optimization"}


def step_by_phase(runner: OurEngine, prompts: list[str], dialogues: list[str], step: int, context) -> None:
    """One step of ours with each phase's method run inside ``context(phase)`` (a context manager)."""
    trainer = runner.trainer

    def wrapped(phase: str, method):
        def wrapper(*args, **kwargs):
            with context(phase):
                return method(*args, **kwargs)

        return wrapper

    for name, phase in STEP_PHASES.items():
        setattr(trainer, name, wrapped(phase, getattr(trainer, name)))
    try:
        runner.step(prompts, dialogues, step)
    finally:
        for name in STEP_PHASES:
            delattr(trainer, name)  # back to the class's methods


def count_step_flops(runner: OurEngine, prompts: list[str], dialogues: list[str], step: int) -> dict[str, float]:
    """GFLOP per phase of one step of ours (torch's FlopCounterMode: matmuls and attention, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counted: dict[str, float] = {}

    @contextmanager
    def counting(phase: str):
        with FlopCounterMode(display=False) as counter:
            yield
        counted[phase] = counted.get(phase, 0.0) + counter.get_total_flops() / 1e9

    step_by_phase(runner, prompts, dialogues, step, counting)
    counted["total"] = sum(counted.values())
    return counted


def profile_step(runner: OurEngine, prompts: list[str], dialogues: list[str], step: int) -> None:
    """torch.profiler's top operators of each phase of one step of ours, on stderr."""
    from torch.profiler import ProfilerActivity, profile

    @contextmanager
    def profiling(phase: str):
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            yield
        print(f"\n[ours, profile of the {phase} phase]", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)

    step_by_phase(runner, prompts, dialogues, step, profiling)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- variant (a): the original notebook's loop shape --------------------------------------------------
class OriginalLoop:
    """Per-sample generate, deep-copied reference, per-sample pipeline scoring, our PPO math."""

    def __init__(self, base, tokenizer, reward_model, reward_tokenizer, params: Params) -> None:
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import pipeline

        from detox.models.classifier import label_index, token_limit
        from detox.ppo.controllers import AdaptiveKLController, FixedKLController
        from detox.ppo.policy import ValueHead, disable_dropout

        cfg = self.cfg = params.ppo
        self.params, self.tokenizer = params, tokenizer
        self.device = base.device
        if cfg.disable_dropout:
            disable_dropout(base)
        self.reference = copy.deepcopy(base).eval().requires_grad_(False)  # a full second copy
        # The notebook's LoRA: the target modules in the encoder and the decoder (ppo.lora.scope: all).
        lora = LoraConfig(
            task_type=TaskType.SEQ_2_SEQ_LM,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=0.0 if cfg.disable_dropout else cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
        )
        self.model = get_peft_model(base, lora).eval()
        self.value_head = ValueHead(base.config.d_model).to(self.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.trainable = trainable
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
        self.kl_ctl = (
            AdaptiveKLController(cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon)
            if cfg.kl.adaptive
            else FixedKLController(cfg.kl.init_coef)
        )
        self.pipe = pipeline(
            "text-classification",
            model=reward_model,
            tokenizer=reward_tokenizer,
            top_k=None,
            function_to_apply="none",
            device=reward_model.device,
        )
        self.reward_label = reward_model.config.id2label[label_index(reward_model, params.reward.reward_label)]
        self.reward_limit = token_limit(reward_model, params.reward.max_tokens)
        self.start_token = base.config.decoder_start_token_id

    @torch.no_grad()
    def generate_one(self, prompt: str, seed: int) -> torch.Tensor:
        from detox.models.generation import generation_kwargs

        gen = self.params.generation
        enc = self.tokenizer(prompt, truncation=True, max_length=gen.max_source_tokens, return_tensors="pt").to(
            self.device
        )
        torch.manual_seed(seed)
        out = self.model.generate(
            **enc,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **generation_kwargs(gen),
        )
        return out[0, 1:]

    def score_one(self, response: str, dialogue: str) -> float:
        text = response if self.params.reward.input == "response" else f"{dialogue}\n{response}"
        result = self.pipe(text, truncation=True, max_length=self.reward_limit)
        if result and isinstance(result[0], list):  # some versions nest one list per input
            result = result[0]
        return next(r["score"] for r in result if r["label"] == self.reward_label)

    def _decoder_inputs(self, responses: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(responses[:, :1], self.start_token), responses[:, :-1]], dim=1)

    def step(self, prompts: list[str], dialogues: list[str], step: int) -> dict[str, float]:
        from detox.ppo.core import (
            compute_gae,
            compute_rewards,
            logprobs_from_logits,
            masked_whiten,
            policy_loss,
            response_mask,
            value_loss,
        )

        cfg, tok = self.cfg, self.tokenizer
        timings: dict[str, float] = {}
        started = time.perf_counter()
        ids = [self.generate_one(p, 1000 * step + i) for i, p in enumerate(prompts)]  # one prompt at a time
        response_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=tok.pad_token_id)
        mask = response_mask(response_ids, tok.eos_token_id, tok.pad_token_id)
        responses = [s.strip() for s in tok.batch_decode(response_ids, skip_special_tokens=True)]
        synchronize(self.device)
        timings["generation"] = time.perf_counter() - started

        tick = time.perf_counter()
        scores = torch.tensor(
            [self.score_one(r, d) for r, d in zip(responses, dialogues, strict=True)], device=self.device
        )
        synchronize(self.device)
        timings["scoring"] = time.perf_counter() - tick

        tick = time.perf_counter()
        max_src = self.params.generation.max_source_tokens
        logprobs, values, ref_logprobs = [], [], []
        with torch.no_grad():
            for i, prompt in enumerate(prompts):  # one forward per sample, policy then the reference copy
                enc = tok(prompt, truncation=True, max_length=max_src, return_tensors="pt").to(self.device)
                resp = response_ids[i : i + 1]
                dec = self._decoder_inputs(resp)
                out = self.model(**enc, decoder_input_ids=dec, output_hidden_states=True)
                logprobs.append(logprobs_from_logits(out.logits, resp))
                values.append(self.value_head(out.decoder_hidden_states[-1]))
                ref = self.reference(**enc, decoder_input_ids=dec)
                ref_logprobs.append(logprobs_from_logits(ref.logits, resp))
        old_logprobs, old_values, ref_lp = torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs)
        rewards, kl, _ = compute_rewards(scores, old_logprobs, ref_lp, mask, self.kl_ctl.value, cfg.kl.estimator)
        advantages, returns = compute_gae(old_values, rewards, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        synchronize(self.device)
        timings["forward"] = time.perf_counter() - tick

        tick = time.perf_counter()
        enc = tok(prompts, padding=True, truncation=True, max_length=max_src, return_tensors="pt").to(self.device)
        generator = torch.Generator().manual_seed(step)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(prompts), generator=generator).to(self.device)
            for start in range(0, len(order), cfg.mini_batch_size):
                index = order[start : start + cfg.mini_batch_size]
                resp = response_ids[index]
                out = self.model(
                    input_ids=enc["input_ids"][index],
                    attention_mask=enc["attention_mask"][index],
                    decoder_input_ids=self._decoder_inputs(resp),
                    output_hidden_states=True,
                )
                lp = logprobs_from_logits(out.logits, resp)
                v = self.value_head(out.decoder_hidden_states[-1])
                pg, _ = policy_loss(lp, old_logprobs[index], advantages[index], mask[index], cfg.cliprange)
                vf, _ = value_loss(v, old_values[index], returns[index], mask[index], cfg.cliprange_value)
                loss = pg + cfg.vf_coef * vf
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        synchronize(self.device)
        timings["optimization"] = time.perf_counter() - tick
        self.kl_ctl.update(kl.sum(1).mean().item(), len(prompts))
        synchronize(self.device)
        timings["total"] = time.perf_counter() - started
        timings["reward_mean"] = scores.mean().item()
        timings["gen_tokens_per_s"] = mask.sum().item() / timings["generation"]
        return timings

    def evaluate(self, dialogues: list[str], seed: int) -> float:
        """Per-sample generate + per-sample pipeline scoring; returns samples per second."""
        template = self.params.prompt.template
        started = time.perf_counter()
        for i, dialogue in enumerate(dialogues):
            ids = self.generate_one(template.format(dialogue=dialogue), seed + i)
            self.score_one(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), dialogue)
        return len(dialogues) / (time.perf_counter() - started)


# -- variant (b): our engine ----------------------------------------------------------------------------
class OurEngine:
    def __init__(self, base, tokenizer, reward_model, reward_tokenizer, params: Params) -> None:

        from detox.models.attention import use_attention
        from detox.models.reward import RewardScorer
        from detox.ppo.engine import PPOTrainer
        from detox.ppo.policy import Seq2SeqPolicy

        self.params, self.tokenizer = params, tokenizer
        policy = Seq2SeqPolicy(use_attention(base, params.policy.attention), params.ppo)  # as the ppo stage
        self.scorer = RewardScorer(reward_model, reward_tokenizer, params.reward)
        from detox.ppo.train import make_accelerator

        # the stage's: ppo.precision bf16 is its autocast, the frozen weights kept in bf16 (--dtype: all weights)
        accelerator = make_accelerator(params.ppo, cpu=base.device.type == "cpu")
        self.trainer = PPOTrainer(policy, tokenizer, self.scorer, params.ppo, accelerator, params.seed)

    def step(self, prompts: list[str], dialogues: list[str], step: int) -> dict[str, float]:
        stats, batch = self.trainer.step(prompts, dialogues, step)
        timings = {phase: sum(stats[key] for key in keys) for phase, keys in OUR_TIMERS.items()}
        timings["reward_mean"] = stats[names.REWARD_MEAN]
        timings["gen_tokens_per_s"] = batch.mask.sum().item() / timings["generation"]
        return timings

    def evaluate(self, data: pd.DataFrame, seed: int) -> float:
        from detox.evaluate.scoring import score_policy

        model = self.trainer.unwrapped.generator()
        # under ppo.precision's autocast (bf16: its frozen weights are bf16), the reward model's scoring too
        with self.trainer.accelerator.autocast():
            _, rate = score_policy(
                model,
                self.tokenizer,
                self.scorer,
                data,
                self.params.prompt.template,
                self.params.generation,
                seed,
                self.params.generation.max_source_tokens,
            )
        return rate


def worker(args: argparse.Namespace) -> dict[str, object]:
    keep_freed_memory()  # as every stage does (detox.common.allocator), in each variant's process
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from detox.models.generation import build_prompts

    params = bench_params(args)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    tokenizer.padding_side = "right"
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(params.seed)
    base = build_base_model(args).to(device=device, dtype=dtype)
    params_m = sum(p.numel() for p in base.parameters()) / 1e6  # before LoRA is added
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward).eval().to(device=device, dtype=dtype)
    reward_tokenizer = AutoTokenizer.from_pretrained(args.reward)
    torch.manual_seed(params.seed)  # LoRA and value-head initialisation, the same in both variants
    cls = OriginalLoop if args.worker == "original" else OurEngine
    runner = cls(base, tokenizer, reward_model, reward_tokenizer, params)

    train = pd.read_parquet(args.train)
    test = pd.read_parquet(args.test).iloc[: args.eval_samples].reset_index(drop=True)
    dialogues = train["dialogue"].tolist()
    prompts = build_prompts(dialogues, params.prompt.template)
    extra_step = int(args.flops or args.profile)  # --flops and --profile run one more step, on the same rows
    need = args.batch_size * (args.steps + extra_step) + WARMUP_PROMPTS
    if len(prompts) < need:
        raise DetoxError(f"{args.train} has {len(prompts)} rows; {need} are needed")

    def eval_input(rows: pd.DataFrame):
        return rows if isinstance(runner, OurEngine) else rows["dialogue"].tolist()

    runner.step(prompts[:WARMUP_PROMPTS], dialogues[:WARMUP_PROMPTS], 10_000)  # warm-up
    runner.evaluate(eval_input(test.iloc[:WARMUP_PROMPTS]), params.eval.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = []
    for step in range(args.steps):
        lo = WARMUP_PROMPTS + step * args.batch_size
        steps.append(runner.step(prompts[lo : lo + args.batch_size], dialogues[lo : lo + args.batch_size], step))
    rate = runner.evaluate(eval_input(test), params.eval.seed)
    result: dict[str, object] = {
        "variant": args.worker,
        "phases": {k: statistics.median(s[k] for s in steps) for k in PHASES},
        "step_totals": [s["total"] for s in steps],
        "reward_mean": statistics.fmean(s["reward_mean"] for s in steps),
        "gen_tokens_per_s": statistics.median(s["gen_tokens_per_s"] for s in steps),
        "eval_samples_per_s": rate,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "embedding_dtype": str(base.get_input_embeddings().weight.dtype),  # what the weights really are
        "threads": torch.get_num_threads(),
        "params_m": params_m,
    }
    if isinstance(runner, OurEngine):
        result["mixed_precision"] = runner.trainer.accelerator.mixed_precision  # ppo.precision as accelerate runs it
    if args.flops and isinstance(runner, OurEngine):
        lo = WARMUP_PROMPTS + args.steps * args.batch_size
        result["gflop"] = count_step_flops(
            runner, prompts[lo : lo + args.batch_size], dialogues[lo : lo + args.batch_size], args.steps
        )
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            runner.evaluate(eval_input(test), params.eval.seed)
        result["eval_gflop_per_sample"] = counter.get_total_flops() / 1e9 / len(test)
        # the floor's rate: bf16 where ours multiplies in bf16 (bf16 weights, or ppo.precision's autocast)
        compute_dtype = torch.bfloat16 if params.ppo.precision == "bf16" else dtype
        result["matmul_gflops"] = matmul_gflops(device, compute_dtype)
        result["matmul_dtype"] = str(compute_dtype).removeprefix("torch.")
    if args.profile and isinstance(runner, OurEngine):
        lo = WARMUP_PROMPTS + args.steps * args.batch_size
        profile_step(runner, prompts[lo : lo + args.batch_size], dialogues[lo : lo + args.batch_size], args.steps)
    return result


def run_variant(args: argparse.Namespace, argv: list[str], variant: str) -> dict[str, object]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", variant]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {variant} variant failed (exit {proc.returncode}); see its stderr above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    check_inputs(args, ("policy", "reward", "train", "test", "params"))
    try:
        bench_params(args)
        if args.worker:  # a variant's process: the stage's own refusals (e.g. ppo.precision fp16 on a CPU) too
            print(json.dumps(worker(args)))
            return 0
    except DetoxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    results = {}
    for variant in args.variants.split(","):
        started = time.perf_counter()
        results[variant] = run_variant(args, argv, variant)
        print(f"[{variant}] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    params = bench_params(args)
    first = next(iter(results.values()))
    print(
        f"\nsize {args.size} ({first['params_m']:.1f}M policy parameters), batch {args.batch_size}, "
        f"max_new_tokens {args.max_new_tokens} (min 0), mini_batch {params.ppo.mini_batch_size}, "
        f"ppo_epochs {params.ppo.ppo_epochs}; LoRA {list(params.ppo.lora.target_modules)} in encoder+decoder "
        f"(original), scope {params.ppo.lora.scope} (ours); {first['device']} {first['dtype']} weights, ours under "
        f"ppo.precision {params.ppo.precision}, torch threads "
        f"{first['threads']}; "
        f"median of {args.steps} step(s) after one warm-up; eval on {args.eval_samples} test dialogues\n"
    )
    # On a GPU the memory that matters is the device's: torch.cuda.max_memory_allocated after the warm-up.
    memory, memory_label = (
        ("peak_gpu_mib", "peak GPU MiB") if first["peak_gpu_mib"] is not None else ("peak_rss_mib", "peak RSS MiB")
    )
    header = (
        f"{'variant':<9}"
        + "".join(f" {p + ' s':>14}" for p in PHASES)
        + f" {'gen tokens/s':>13} {'eval samples/s':>15} {memory_label:>13}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<9}"
            + "".join(f" {r['phases'][p]:>14.3f}" for p in PHASES)
            + f" {r['gen_tokens_per_s']:>13.1f} {r['eval_samples_per_s']:>15.3f} {r[memory]:>13.0f}"
        )
    if set(results) == set(VARIANTS):
        a, b = results["original"], results["ours"]
        print("\nratios (original / ours time; ours / original throughput and memory):")
        for p in PHASES:
            print(f"  {p:<13} time a/b  {a['phases'][p] / b['phases'][p]:>8.2f}x")
        print(
            f"  generated tokens/s b/a  {b['gen_tokens_per_s'] / a['gen_tokens_per_s']:>8.2f}x   "
            f"({a['gen_tokens_per_s']:.1f} and {b['gen_tokens_per_s']:.1f} tokens/s in the rollout)"
        )
        print(f"  eval throughput b/a     {b['eval_samples_per_s'] / a['eval_samples_per_s']:>8.2f}x")
        print(f"  {memory_label[:-4]} b/a{'':<{24 - len(memory_label)}}{b[memory] / a[memory]:>8.2f}x")
    ours = results.get("ours", {})
    if "gflop" in ours:
        peak = max(ours["matmul_gflops"].values())
        rates = ", ".join(f"{shape} {rate:.0f}" for shape, rate in ours["matmul_gflops"].items())
        print(
            f"\nours, matmul GFLOP per phase (one extra step) and the time they need at this machine's best "
            f"{ours['matmul_dtype']} matmul rate ({peak:.0f} GFLOP/s; {rates}):"
        )
        for p, gflop in ours["gflop"].items():
            print(f"  {p:<13} {gflop:>9.1f} GFLOP  >= {gflop / peak:>7.2f} s   (measured {ours['phases'][p]:.2f} s)")
        per_sample = ours["eval_gflop_per_sample"]
        print(
            f"  evaluation    {per_sample:>9.1f} GFLOP per sample: at most {peak / per_sample:.2f} samples/s "
            f"(measured {ours['eval_samples_per_s']:.2f})"
        )
        if "original" in results:
            speedup = peak / per_sample / results["original"]["eval_samples_per_s"]
            print(f"  at that rate ours would evaluate {speedup:.2f}x faster than the original")
            floor = ours["gflop"]["total"] / peak
            print(
                f"  at that floor ours would be {results['original']['phases']['total'] / floor:.2f}x faster "
                f"than the original step"
            )
    print("\nJSON " + json.dumps({"args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
