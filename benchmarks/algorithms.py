"""Benchmark: ppo, rloo and grpo steps of our engine side by side, at the same number of generated summaries.

Each algorithm runs in its own subprocess (so each has its own peak memory) on the same policy
weights, reward model, prompts and settings (params.yaml's ``ppo.*`` with the batch and the
response length pinned, and the epochs and mini-batch where ``--ppo-epochs`` and
``--mini-batch-size`` give them): ``--batch-size`` responses per step, sampled one per prompt for ppo and
``--samples-per-prompt`` per prompt for rloo and grpo (so they see fewer prompts, as a same-budget
comparison requires). Each is warmed up with one small step, then ``--steps`` steps are timed
(median per phase). rloo and grpo build no value head and keep no decoder hidden states in the
rollout; the table shows what that saves. Sizes, devices and dtypes as in ``ppo_vs_original.py``::

    python benchmarks/algorithms.py --size builtin --steps 3
    python benchmarks/algorithms.py --size base --batch-size 16 --max-new-tokens 48 --steps 2
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import statistics
import subprocess
import sys
import time

import pandas as pd
import torch

import ppo_vs_original as bench
from common import add_size_argument, check_inputs
from detox.common.allocator import keep_freed_memory
from detox.common.errors import DetoxError
from detox.common.params import Params

ALGORITHMS = ("ppo", "rloo", "grpo")
PHASES = bench.PHASES
WARMUP_PROMPTS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_size_argument(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="generated responses per step, every algorithm")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="k of rloo and grpo (ppo: 1)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="response tokens, the same for all")
    parser.add_argument("--ppo-epochs", type=int, default=None, help="epochs per step; params.yaml's when not given")
    parser.add_argument(
        "--mini-batch-size", type=int, default=None, help="responses per update; params.yaml's when not given"
    )
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset of ppo,rloo,grpo")
    parser.add_argument("--policy", default="models/policy", help="folder of the policy (and its tokenizer)")
    parser.add_argument("--reward", default="models/reward", help="folder of the reward classifier")
    parser.add_argument("--train", default="data/raw/train.parquet", help="prompts (first rows)")
    parser.add_argument("--params", default="params.yaml", help="ppo.*, reward.*, prompt")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--worker", choices=ALGORITHMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.max_new_tokens) < 1 or args.samples_per_prompt < 2:
        parser.error("--batch-size, --steps and --max-new-tokens must be at least 1, --samples-per-prompt 2")
    if args.batch_size % args.samples_per_prompt:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --samples-per-prompt")
    if any(n is not None and n < 1 for n in (args.ppo_epochs, args.mini_batch_size)):
        parser.error("--ppo-epochs and --mini-batch-size must be at least 1")
    if args.mini_batch_size is not None and args.batch_size % args.mini_batch_size:
        parser.error(f"--mini-batch-size {args.mini_batch_size} must divide --batch-size {args.batch_size}")
    unknown = set(args.algorithms.split(",")) - set(ALGORITHMS)
    if unknown:
        parser.error(f"--algorithms: unknown {sorted(unknown)}; choose from {ALGORITHMS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    # what ppo_vs_original's helpers read
    args.eval_batch_size, args.ours_lora_scope = None, "params"
    return args


def algorithm_params(args: argparse.Namespace, algorithm: str) -> Params:
    params = bench.bench_params(args)
    k = 1 if algorithm == "ppo" else args.samples_per_prompt
    ppo = params.ppo.model_copy(update={"algorithm": algorithm, "samples_per_prompt": k})
    return params.model_copy(update={"ppo": type(params.ppo).model_validate(ppo.model_dump())})


def worker(args: argparse.Namespace) -> dict[str, object]:
    keep_freed_memory()  # as every stage does (detox.common.allocator), in each variant's process
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from detox.models.generation import build_prompts

    params = algorithm_params(args, args.worker)
    k = params.ppo.group_size
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    tokenizer.padding_side = "right"
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(params.seed)
    base = bench.build_base_model(args).to(device=device, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward).eval().to(device=device, dtype=dtype)
    torch.manual_seed(params.seed)
    runner = bench.OurEngine(base, tokenizer, reward_model, AutoTokenizer.from_pretrained(args.reward), params)
    trainable_m = sum(p.numel() for p in runner.trainer.unwrapped.trainable_parameters()) / 1e6

    train = pd.read_parquet(args.train)
    dialogues = train["dialogue"].tolist()
    prompts = build_prompts(dialogues, params.prompt.template)
    per_step = args.batch_size // k
    if len(prompts) < WARMUP_PROMPTS + per_step * args.steps:
        raise DetoxError(f"{args.train} has {len(prompts)} rows; {WARMUP_PROMPTS + per_step * args.steps} needed")
    runner.step(prompts[:WARMUP_PROMPTS], dialogues[:WARMUP_PROMPTS], 10_000)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = []
    for step in range(args.steps):
        lo = WARMUP_PROMPTS + step * per_step
        steps.append(runner.step(prompts[lo : lo + per_step], dialogues[lo : lo + per_step], step))
    return {
        "algorithm": args.worker,
        "k": k,
        "prompts_per_step": per_step,
        "phases": {p: statistics.median(s[p] for s in steps) for p in PHASES},
        "gen_tokens_per_s": statistics.median(s["gen_tokens_per_s"] for s in steps),
        # the phases scale with the response tokens, which differ between runs: tokens per step for comparison
        "response_tokens": statistics.median(s["gen_tokens_per_s"] * s["generation"] for s in steps),
        "peak_rss_mib": bench.peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "trainable_m": trainable_m,
        "value_head": runner.trainer.unwrapped.value_head is not None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    check_inputs(args, ("policy", "reward", "train", "params"))
    try:
        for algorithm in args.algorithms.split(","):
            algorithm_params(args, algorithm)
    except (DetoxError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    results = {}
    for algorithm in args.algorithms.split(","):
        started = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", algorithm]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: {algorithm} failed (exit {proc.returncode}); see its stderr above")
        results[algorithm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[{algorithm}] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    first = next(iter(results.values()))
    memory = "peak_gpu_mib" if first["peak_gpu_mib"] is not None else "peak_rss_mib"
    label = "peak GPU MiB" if memory == "peak_gpu_mib" else "peak RSS MiB"
    print(
        f"\nsize {args.size}, {args.batch_size} responses per step ({args.max_new_tokens} new tokens), "
        f"{first['device']} {args.dtype}, torch threads {first['threads']}; median of {args.steps} step(s)\n"
    )
    header = f"{'algorithm':<9} {'k':>2} {'prompts':>7}" + "".join(f" {p + ' s':>14}" for p in PHASES)
    header += f" {'tokens':>7} {'gen tokens/s':>13} {label:>13} {'trainable M':>12}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<9} {r['k']:>2} {r['prompts_per_step']:>7}"
            + "".join(f" {r['phases'][p]:>14.3f}" for p in PHASES)
            + f" {r['response_tokens']:>7.0f} {r['gen_tokens_per_s']:>13.1f}"
            + f" {r[memory]:>13.0f} {r['trainable_m']:>12.3f}"
        )
    if "ppo" in results and len(results) > 1:
        ppo = results["ppo"]
        print("\nratios against ppo (time: ppo / this, so above 1 is faster; memory: this / ppo):")
        for name, r in results.items():
            if name == "ppo":
                continue
            times = "  ".join(f"{p} {ppo['phases'][p] / r['phases'][p]:.2f}x" for p in PHASES)
            per_token = ppo["phases"]["total"] / ppo["response_tokens"] / (r["phases"]["total"] / r["response_tokens"])
            memory_ratio = r[memory] / ppo[memory]
            print(f"  {name:<5} {times}  total per response token {per_token:.2f}x  {label[:-4]} {memory_ratio:.2f}x")
    print("\nJSON " + json.dumps({"args": {k: v for k, v in vars(args).items() if k != "worker"}, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
