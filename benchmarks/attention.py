"""T5's attention kernel and GELU, timed side by side: the sft step and ``generate``, before and now.

``policy.attention`` picks transformers' eager attention or SDPA for the policy (``auto``: eager on a
CPU), and the built-in policy's ``feed_forward_proj`` picks flan-t5's ``gelu_new`` (a tanh GELU written
as eight tensor operations) or ``gelu_pytorch_tanh`` (the same function in PyTorch's one kernel). This
script times the four combinations in turn, each on its own copy of the same model:

- **sft step** (``--sft``, the default): the built-in policy's initial weights (``models/base/policy``),
  batches of the train split with the stage's collator, fused AdamW and gradient clipping, as the
  stage's ``Trainer`` runs them; each variant trains its own copy on the same batches, so the losses
  printed after the timed steps show how far rounding moved them apart.
- **generate** (``--generate``): ``--batch`` test prompts, ``--new-tokens`` tokens sampled with the
  same seed, params.yaml's sampling settings and ``generation.skinny_matmul``; printed with the share
  of tokens equal to the first variant's. ``--size base`` runs it on a model of flan-t5-base's shapes
  (random weights, ``ppo_vs_original.build_base_model``) instead of the trained policy.

The variants take turns, ``--rounds`` rounds each, so a busy moment of the machine falls on all of
them; each line gives the median, the min and the speed-up against the first line (sdpa, gelu_new: the
pipeline before ``policy.attention`` and the built-in ``gelu_pytorch_tanh``).

    python benchmarks/attention.py                                   # sft step and built-in generate
    python benchmarks/attention.py --generate --size base --batch 16 --new-tokens 48
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq
from transformers.activations import ACT2FN

from common import add_generation_arguments, check_inputs, fixed_length_generation
from detox.common.allocator import keep_freed_memory
from detox.common.params import load_params
from detox.data.reading import load_split
from detox.models.attention import use_attention
from detox.models.check import load_or_init
from detox.models.sft import examples
from detox.models.skinny import skinny_matmuls

VARIANTS = (("sdpa", "gelu_new"), ("eager", "gelu_new"), ("sdpa", "gelu_pytorch_tanh"), ("eager", "gelu_pytorch_tanh"))
SEED = 1


def variant(model: torch.nn.Module, attention: str, activation: str) -> torch.nn.Module:
    """A copy of ``model`` with the attention kernel and the gated feed-forward's GELU given."""
    copied = copy.deepcopy(model)
    use_attention(copied, attention)
    for module in copied.modules():
        if hasattr(module, "wi_0") and hasattr(module, "act"):  # T5DenseGatedActDense
            module.act = ACT2FN[activation]
    return copied


def timed_rounds(runs: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """``runs[name]()`` in turn, ``rounds`` times each; seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def report(title: str, times: dict[str, list[float]], extra: dict[str, str]) -> None:
    first = statistics.median(next(iter(times.values())))
    print(f"\n{title}")
    print(f"{'attention, GELU':<28}{'median s':>10}{'min s':>10}{'speed':>8}  {'':<}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28}{median:>10.4f}{min(values):>10.4f}{first / median:>7.3f}x  {extra.get(name, '')}")


def sft_steps(args: argparse.Namespace, params: Any) -> None:
    cfg = params.sft
    model, tokenizer = load_or_init(Path(args.base), "seq2seq", params.seed)
    split = load_split(Path(args.raw), "train")
    train = examples(tokenizer, split, params.prompt.template, cfg.max_source_tokens, cfg.max_target_tokens)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(params.seed)).tolist()
    needed, size = 2 + args.rounds * args.steps, cfg.batch_size
    if needed * size > len(train):
        raise SystemExit(f"--rounds x --steps + 2 = {needed} batches; the train split has {len(train) // size}")
    batches = [collator([train[i] for i in order[k * size : (k + 1) * size]]) for k in range(needed)]
    states = {}
    for attention, activation in VARIANTS:
        trained = variant(model, attention, activation).train()
        optimizer = torch.optim.AdamW(
            trained.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True
        )
        states[f"{attention}, {activation}"] = {"model": trained, "optimizer": optimizer, "next": 0, "loss": None}

    def step(state: dict[str, Any]) -> None:
        batch = batches[state["next"]]
        state["next"] += 1
        loss = state["model"](**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state["model"].parameters(), 1.0)
        state["optimizer"].step()
        state["optimizer"].zero_grad()
        state["loss"] = loss.item()

    for state in states.values():  # warm-up: the first two batches
        step(state)
        step(state)

    def steps(state: dict[str, Any]) -> None:
        for _ in range(args.steps):
            step(state)

    times = timed_rounds({name: (lambda s=state: steps(s)) for name, state in states.items()}, args.rounds)
    times = {name: [t / args.steps for t in values] for name, values in times.items()}
    report(
        f"sft step (built-in policy, batch {cfg.batch_size}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds of {args.steps} steps)",
        times,
        {name: f"loss after {state['next']} steps {state['loss']:.6f}" for name, state in states.items()},
    )
    stage = cfg.epochs * (len(train) // cfg.batch_size)
    first, last = (statistics.median(values) for values in (times[next(iter(times))], times[next(reversed(times))]))
    print(f"over the stage's {stage} steps: {first * stage:.0f} s -> {last * stage:.0f} s")


def generation(args: argparse.Namespace, params: Any, parser: argparse.ArgumentParser) -> None:
    model, _, enc, kwargs = fixed_length_generation(args, params, parser)
    models = {f"{a}, {g}": variant(model, a, g).eval() for a, g in VARIANTS}
    tokens: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def generate(name: str) -> None:
        torch.manual_seed(SEED)
        with skinny_matmuls(models[name], params.generation.skinny_matmul):
            tokens[name] = models[name].generate(**enc, **kwargs)

    for name in models:  # warm-up
        generate(name)
    times = timed_rounds({name: (lambda n=name: generate(n)) for name in models}, args.rounds)
    first = tokens[next(iter(tokens))]

    def equal(name: str) -> str:
        same = tokens[name].shape == first.shape and bool((tokens[name] == first).all())
        share = float((tokens[name] == first).float().mean()) if tokens[name].shape == first.shape else 0.0
        return f"tokens equal to the first line's: {'all' if same else f'{share:.1%}'}"

    report(
        f"generate ({args.size} size, {args.batch} prompts, {args.new_tokens} new tokens, "
        f"skinny_matmul {params.generation.skinny_matmul}, {torch.get_num_threads()} threads, {args.rounds} rounds)",
        times,
        {name: equal(name) for name in models},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_generation_arguments(parser, batch=64, new_tokens=48)
    parser.add_argument("--sft", action="store_true", help="time the sft step (default: both, built-in size)")
    parser.add_argument("--generate", action="store_true", help="time generate (default: both, built-in size)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--base", default="models/base/policy", help="the untrained policy fetch wrote")
    parser.add_argument("--raw", default="data/raw", help="the dialogues fetch wrote")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of timed calls per variant")
    parser.add_argument("--steps", type=int, default=12, help="sft steps per variant per round")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every stage does (detox.common.allocator)
    if min(args.rounds, args.steps, args.batch, args.new_tokens) < 1:
        parser.error("--rounds, --steps, --batch and --new-tokens must be at least 1")
    if args.sft and args.size == "base":
        parser.error("--sft times the built-in policy's step; --size base is for --generate")
    both = not (args.sft or args.generate)
    check_inputs(args, ("params", "raw") + (("base",) if args.sft or both else ()) + (("policy", "data")))
    params = load_params(Path(args.params))
    if args.sft or (both and args.size == "builtin"):
        sft_steps(args, params)
    if args.generate or both:
        generation(args, params, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
