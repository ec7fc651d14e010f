"""The sft stage's training step, timed side by side: random batches against length-grouped ones.

Both variants train their own copy of the same initial policy (``models/base/policy``, the
seed's weights) on batches of the train split with the stage's collator, optimizer settings and
threads; they take turns, ``--steps`` steps each per round, so a slower or busier moment of a
noisy machine falls on both. Printed per variant: the padded prompt and summary tokens per
batch, the step's min and median over the rounds, and the ratio to the random order (the
stage's default). ``--compile`` adds ``torch.compile`` of the random variant, with the time its
first steps take to compile. ``--flops`` counts one step's matmul and attention FLOPs and divides
by this machine's best fp32 matmul rate on the step's shapes: the compute floor of a step.
``--profile`` prints torch.profiler's top operators over 4 steps of the random order. ``--bf16``
adds the random order under bf16 autocast, as ``sft.precision: bf16`` (or ``auto`` on a CPU with
bf16 instructions) trains; the mean loss of each variant's last round shows what it does to the
numbers.

    python benchmarks/sft_steps.py                       # random vs grouped, 3 rounds of 20 steps
    python benchmarks/sft_steps.py --compile --flops     # also torch.compile and the compute floor
    python benchmarks/sft_steps.py --bf16                # also the random order in bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DataCollatorForSeq2Seq
from transformers.trainer_pt_utils import LengthGroupedSampler

from common import check_inputs, matmul_gflops
from detox.common.allocator import keep_freed_memory
from detox.common.errors import DetoxError
from detox.common.params import load_params
from detox.data.reading import load_split
from detox.models.attention import use_attention
from detox.models.check import load_or_init
from detox.models.precision import check_precision
from detox.models.sft import examples


def batches(
    order: list[int], train: list[dict[str, Any]], collator: Any, size: int, count: int, generator: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """``count`` of the epoch's batches in ``order``, drawn at random: a grouped order runs from long to
    short batches within each of its megabatches, so its first batches are not typical of an epoch."""
    cuts = list(range(0, len(order) - size + 1, size))
    chosen = torch.randperm(len(cuts), generator=generator)[:count].tolist()
    return [collator([train[i] for i in order[cuts[c] : cuts[c] + size]]) for c in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--base", default="models/base/policy", help="the untrained policy fetch wrote")
    parser.add_argument("--raw", default="data/raw", help="the dialogues fetch wrote")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of timed steps per variant")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the random order")
    parser.add_argument("--flops", action="store_true", help="count a step's FLOPs; print the compute floor")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over 4 random-order steps: top ops")
    parser.add_argument("--bf16", action="store_true", help="also the random order under bf16 autocast")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every stage does (detox.common.allocator)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    check_inputs(args, ("params", "base", "raw"))
    if args.bf16:
        try:
            check_precision("--bf16", "bf16", cuda=False)
        except DetoxError as error:
            parser.error(str(error))
    params = load_params(Path(args.params))
    cfg = params.sft
    model, tokenizer = load_or_init(Path(args.base), "seq2seq", params.seed)
    use_attention(model, params.policy.attention)  # as the stage does
    train = examples(
        tokenizer,
        load_split(Path(args.raw), "train"),
        params.prompt.template,
        cfg.max_source_tokens,
        cfg.max_target_tokens,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    generator = torch.Generator().manual_seed(params.seed)
    shuffled = torch.randperm(len(train), generator=generator).tolist()
    grouped = list(
        LengthGroupedSampler(cfg.batch_size, lengths=[len(e["input_ids"]) for e in train], generator=generator)
    )
    needed = args.rounds * args.steps + 2
    if needed > len(train) // cfg.batch_size:
        parser.error(f"--rounds x --steps + 2 is {needed} batches; an epoch has {len(train) // cfg.batch_size}")
    data = {
        "random": batches(shuffled, train, collator, cfg.batch_size, needed, generator),
        "grouped": batches(grouped, train, collator, cfg.batch_size, needed, generator),
    }
    variants: dict[str, dict[str, Any]] = {}
    for name in ["random", "grouped"] + (["compiled"] if args.compile else []) + (["bf16"] if args.bf16 else []):
        trained = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        forward = torch.compile(trained, dynamic=True) if name == "compiled" else trained
        variants[name] = {
            "model": trained,
            "forward": forward,
            "optimizer": optimizer,
            "autocast": name == "bf16",
            "times": [],
            "losses": [],
        }

    def step(variant: dict[str, Any], batch: dict[str, torch.Tensor]) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant["autocast"]):  # Trainer's bf16=True
            loss = variant["forward"](**batch).loss
        variant["losses"].append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(variant["model"].parameters(), 1.0)
        variant["optimizer"].step()
        variant["optimizer"].zero_grad()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.batch_size}")
    for name, variant in variants.items():
        started = time.perf_counter()
        for batch in data["grouped" if name == "grouped" else "random"][:2]:  # warm-up (and compilation)
            step(variant, batch)
        variant["warmup"] = time.perf_counter() - started
    for round_ in range(args.rounds):
        for name, variant in variants.items():
            chosen = data["grouped" if name == "grouped" else "random"]
            timed = chosen[2 + round_ * args.steps : 2 + (round_ + 1) * args.steps]
            started = time.perf_counter()
            for batch in timed:
                step(variant, batch)
            variant["times"].append((time.perf_counter() - started) / len(timed))
    base = statistics.median(variants["random"]["times"])
    steps_per_stage = cfg.epochs * (len(train) // cfg.batch_size)
    print(
        f"{'variant':<10}{'prompt tok':>11}{'summary tok':>12}{'min s':>9}{'median s':>10}{'ratio':>8}{'warm-up s':>11}"
        f"{'last loss':>11}"
    )
    for name, variant in variants.items():
        chosen = data["grouped" if name == "grouped" else "random"]
        prompt = statistics.mean(b["input_ids"].shape[1] for b in chosen)
        summary = statistics.mean(b["labels"].shape[1] for b in chosen)
        median = statistics.median(variant["times"])
        last = statistics.mean(variant["losses"][-args.steps :])
        print(
            f"{name:<10}{prompt:>11.1f}{summary:>12.1f}{min(variant['times']):>9.4f}{median:>10.4f}"
            f"{base / median:>7.2f}x{variant['warmup']:>11.1f}{last:>11.4f}"
        )
    print(
        f"sft stage of {steps_per_stage} steps at these medians: "
        + ", ".join(f"{name} {statistics.median(v['times']) * steps_per_stage:.0f} s" for name, v in variants.items())
    )
    if args.flops:
        batch = data["random"][2]
        counter = FlopCounterMode(display=False)
        with counter:
            step(variants["random"], batch)
        flops = counter.get_total_flops()
        tokens = batch["input_ids"].numel()
        d_model, d_ff, vocab = model.config.d_model, model.config.d_ff, model.config.vocab_size
        rates = matmul_gflops(
            torch.device("cpu"),
            torch.float32,
            1.0,
            ((tokens, d_model, d_model), (tokens, d_model, d_ff), (tokens, d_ff, d_model), (1024, d_model, vocab)),
        )
        best = max(rates.values())
        shapes = ", ".join(f"{shape} {rate:.0f}" for shape, rate in rates.items())
        print(
            f"one random-order step: {flops / 1e9:.2f} GFLOP (matmul and attention, forward and backward); "
            f"best fp32 matmul rate on its shapes {best:.0f} GFLOP/s ({shapes}); "
            f"compute floor {flops / 1e9 / best:.4f} s, the median step is {base / (flops / 1e9 / best):.1f}x the floor"
        )
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for batch in data["random"][2:6]:
                step(variants["random"], batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
