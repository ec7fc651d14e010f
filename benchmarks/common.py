"""What the benchmark scripts share (they run as `python benchmarks/<name>.py`, so this sits beside them)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def check_inputs(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Exit 2 with one clear message when an input path is missing."""
    missing = [(flag, Path(getattr(args, flag))) for flag in flags if not Path(getattr(args, flag)).exists()]
    if not missing:
        return
    for flag, path in missing:
        print(f"error: --{flag} {path} does not exist.", file=sys.stderr)
    others = "/".join(f"--{flag}" for flag in flags if flag != "params")
    print(
        "The policy, the reward model and data/raw are made by the fetch, sft and reward stages: run "
        "`dvc repro sft reward` "
        f"first (or point {others} at existing ones).",
        file=sys.stderr,
    )
    sys.exit(2)


def add_size_argument(parser: argparse.ArgumentParser) -> None:
    """``--size``: the model the script runs (``ppo_vs_original.build_base_model`` builds it)."""
    parser.add_argument(
        "--size",
        choices=("builtin", "base"),
        default="builtin",
        help="builtin = the --policy folder; base = random-weight T5 with flan-t5-base's config",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    device: torch.device,
    dtype: torch.dtype,
    seconds: float = 1.0,
    shapes: tuple[tuple[int, int, int], ...] = (
        (256, 768, 768),
        (256, 768, 2048),
        (256, 768, 32128),
        (2048, 768, 2048),
    ),
) -> dict[str, float]:
    """The matmul rate (GFLOP/s) in ``dtype`` on ``device`` for each (m, k, n) shape; by default the
    shapes a flan-t5-base PPO step multiplies."""
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n * calls_per_second(lambda a=a, b=b: a @ b, seconds, device) / 1e9
    return rates


def copy_gbps(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float:
    """The memory bandwidth of ``device`` in GB/s: the bytes read and written by copying a ``gib`` GiB tensor."""
    source = torch.randn(int(gib * 2**28), device=device)  # 4-byte floats
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up: the pages are touched
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    return 2 * source.numel() * source.element_size() * repeats / (time.perf_counter() - started) / 1e9


def calls_per_second(call: Callable[[], object], seconds: float, device: torch.device | None = None) -> float:
    """How many times a second ``call`` ran, called again and again for ``seconds`` after one warm-up call
    (on a GPU, its queued work waited for)."""
    device = device or torch.device("cpu")
    call()
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        count += 1
    synchronize(device)
    return count / (time.perf_counter() - started)


def add_generation_arguments(parser: argparse.ArgumentParser, batch: int, new_tokens: int) -> None:
    """The arguments :func:`fixed_length_generation` reads: ``--size``, ``--policy``, ``--data``, ``--batch``,
    ``--new-tokens``."""
    add_size_argument(parser)
    parser.add_argument("--policy", default="models/policy", help="folder of the policy (and its tokenizer)")
    parser.add_argument("--data", default="data/raw/test.parquet", help="parquet file with a dialogue column")
    parser.add_argument("--batch", type=int, default=batch, help="prompts in a generate call")
    parser.add_argument("--new-tokens", type=int, default=new_tokens, help="tokens sampled per row (min = max)")


def fixed_length_generation(args: argparse.Namespace, params, parser: argparse.ArgumentParser):
    """The policy as the stages load it (``--policy``, or flan-t5-base's shapes for ``--size base``), its
    tokenizer, the first ``--batch`` dialogues of ``--data`` as the pipeline's prompts, and ``generate``
    keyword arguments that sample exactly ``--new-tokens`` tokens per row with params' settings.
    Fewer dialogues than ``--batch`` exits 2 through ``parser``."""
    import pandas as pd

    from detox.models.attention import use_attention
    from detox.models.generation import build_prompts, generation_kwargs, load_policy

    model, tokenizer = load_policy(args.policy, params.policy.attention)
    if args.size == "base":
        from ppo_vs_original import build_base_model

        model = use_attention(build_base_model(args).eval(), params.policy.attention)  # as the stages load it
    dialogues = pd.read_parquet(args.data)["dialogue"].head(args.batch).tolist()
    if len(dialogues) < args.batch:
        parser.error(f"--batch {args.batch}: {args.data} has only {len(dialogues)} dialogues")
    enc = tokenizer(
        build_prompts(dialogues, params.prompt.template),
        truncation=True,
        max_length=params.generation.max_source_tokens,
        padding=True,
        return_tensors="pt",
    )
    cfg = params.generation.model_copy(update={"min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens})
    kwargs = {**generation_kwargs(cfg), "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    return model, tokenizer, enc, kwargs
