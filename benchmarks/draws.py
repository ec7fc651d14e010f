"""k summaries per dialogue: one encoder pass per batch for all k samples, against k separate calls.

Evaluation (``eval.samples_per_prompt``, 5 by default) draws k summaries of every test dialogue,
sample j with seed ``eval.seed + j * SAMPLE_SEED_STRIDE``. Both paths below make exactly those
summaries, in one process on the same policy and prompts, taking turns ``--repeats`` times:

- **separate**: ``generate_summaries`` once per sample (the encoder runs k times per batch);
- **draws**: ``generate_draws`` with the k seeds (the pipeline's path: once per batch).

The script checks that both return the same summaries, and prints each path's min and median
and the ratio of the medians.

    python benchmarks/draws.py --policy models/policy --n 300 --k 5 --repeats 3
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside the timed region

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from common import check_inputs
from detox.common.allocator import keep_freed_memory
from detox.common.params import load_params
from detox.evaluate.scoring import SAMPLE_SEED_STRIDE
from detox.models.generation import build_prompts, generate_draws, generate_summaries, load_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="models/policy", help="folder of the seq2seq policy")
    parser.add_argument("--data", default="data/raw/test.parquet", help="parquet file with a dialogue column")
    parser.add_argument("--params", default="params.yaml", help="generation.*, prompt, eval.seed")
    parser.add_argument("--n", type=int, default=300, help="dialogues (the first n rows)")
    parser.add_argument("--k", type=int, default=5, help="summaries per dialogue")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every stage does (detox.common.allocator)
    if args.n < 1 or args.k < 1 or args.repeats < 1:
        parser.error("--n, --k and --repeats must be at least 1")
    check_inputs(args, ("policy", "data", "params"))
    params = load_params(Path(args.params))
    model, tokenizer = load_policy(args.policy, params.policy.attention)
    prompts = build_prompts(pd.read_parquet(args.data)["dialogue"].head(args.n).tolist(), params.prompt.template)
    cfg = params.generation
    seeds = [params.eval.seed + j * SAMPLE_SEED_STRIDE for j in range(args.k)]

    def separate() -> list[list[str]]:
        return [generate_summaries(model, tokenizer, prompts, cfg, seed, cfg.max_source_tokens) for seed in seeds]

    def draws() -> list[list[str]]:
        return generate_draws(model, tokenizer, prompts, cfg, seeds, cfg.max_source_tokens)

    paths = {"separate": separate, "draws": draws}
    outputs = {name: path() for name, path in paths.items()}  # warm-up, and the summaries compared
    if outputs["separate"] != outputs["draws"]:
        print("error: the two paths returned different summaries", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, path in paths.items():
            started = time.perf_counter()
            path()
            times[name].append(time.perf_counter() - started)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(prompts)} dialogues x {args.k} "
        f"samples, batch {cfg.batch_size}, max_new_tokens {cfg.max_new_tokens}; the same summaries from both"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<9} min {min(values):7.2f} s  median {median:7.2f} s  "
            f"{len(prompts) * args.k / median:7.1f} summaries/s"
        )
    ratio = statistics.median(times["separate"]) / statistics.median(times["draws"])
    print(f"separate / draws (medians): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
