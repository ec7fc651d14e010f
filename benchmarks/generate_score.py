"""Benchmark: batched generate + score against a one-sample-at-a-time loop.

Both paths run in one process on the same policy, reward model and dialogues:

- **batched** (the pipeline's path, what ``score_policy`` times): ``generate_summaries``
  in batches of ``generation.batch_size`` then ``RewardScorer.score`` in batches of
  ``reward.batch_size``;
- **loop** (the shape of the original notebook): for each dialogue, tokenize one
  prompt, ``model.generate`` one response, decode it, and score that one text with
  one forward pass of the reward model.

Both use the same generation settings, reward input and reward/toxic labels from
params.yaml; ROUGE is left out of both timings. Each path is warmed up once, then
timed ``--repeats`` times (alternating batched, loop), and the median is reported.

    python benchmarks/generate_score.py --policy models/policy --reward models/reward \\
        --data data/raw/test.parquet --n 64 --repeats 3 --params params.yaml
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside the timed region

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import pandas as pd
import torch

from common import check_inputs
from detox.common.allocator import keep_freed_memory
from detox.common.errors import DetoxError
from detox.common.params import Params, load_params
from detox.evaluate.scoring import sample_rows
from detox.models.classifier import token_limit
from detox.models.generation import build_prompts, generate_summaries, generation_kwargs, load_policy
from detox.models.reward import RewardScorer

WARMUP_SAMPLES = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--policy", default="models/policy", help="folder of the seq2seq policy")
    parser.add_argument("--reward", default="models/reward", help="folder of the reward classifier")
    parser.add_argument("--data", default="data/raw/test.parquet", help="parquet file with id, dialogue, summary")
    parser.add_argument("--params", default="params.yaml", help="generation.*, reward.*, prompt, eval.seed")
    parser.add_argument("--n", type=int, default=64, help="dialogues per timed run (the first n rows)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the median is reported")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be at least 1")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batched_path(model, tokenizer, scorer: RewardScorer, params: Params, data: pd.DataFrame) -> list[float]:
    """The pipeline's path: batched generation, then batched scoring. Returns the rewards."""
    dialogues = data["dialogue"].tolist()
    prompts = build_prompts(dialogues, params.prompt.template)
    responses = generate_summaries(
        model, tokenizer, prompts, params.generation, params.eval.seed, params.generation.max_source_tokens
    )
    return scorer.score(responses, dialogues).reward.tolist()


@torch.no_grad()
def loop_path(model, tokenizer, scorer: RewardScorer, params: Params, data: pd.DataFrame) -> list[float]:
    """The notebook's shape: one prompt, one ``generate``, one reward forward pass per dialogue."""
    device = next(model.parameters()).device
    reward_model, reward_tokenizer = scorer.model, scorer.tokenizer
    limit = token_limit(reward_model, params.reward.max_tokens)
    kwargs = generation_kwargs(params.generation)
    rewards = []
    for i, dialogue in enumerate(data["dialogue"].tolist()):
        prompt = params.prompt.template.format(dialogue=dialogue)
        enc = tokenizer(
            prompt, truncation=True, max_length=params.generation.max_source_tokens, return_tensors="pt"
        ).to(device)
        torch.manual_seed(params.eval.seed + i)
        out = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kwargs)
        response = tokenizer.decode(out[0, 1:], skip_special_tokens=True).strip()
        text = response if params.reward.input == "response" else f"{dialogue}\n{response}"
        scored = reward_tokenizer(text, truncation=True, max_length=limit, return_tensors="pt").to(device)
        logits = reward_model(**scored).logits.float()[0]
        rewards.append(logits[scorer.reward_index].item())
        logits.softmax(-1)[scorer.toxic_index].item()  # toxicity, as the notebook computed it too
    return rewards


def timed(fn: Callable[[], list[float]], device: torch.device) -> tuple[float, list[float]]:
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as every stage does (detox.common.allocator)
    check_inputs(args, ("policy", "reward", "data"))
    try:
        params = load_params(args.params)
    except DetoxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    data = pd.read_parquet(args.data)
    if len(data) < args.n:
        print(f"note: {args.data} has {len(data)} rows; timing all of them instead of --n {args.n}")
    data = sample_rows(data, min(args.n, len(data)))
    model, tokenizer = load_policy(args.policy, params.policy.attention)
    model.to(device)
    scorer = RewardScorer.from_pretrained(args.reward, params.reward)
    scorer.model.to(device)

    paths = {
        "batched": lambda rows: batched_path(model, tokenizer, scorer, params, rows),
        "loop": lambda rows: loop_path(model, tokenizer, scorer, params, rows),
    }
    warmup = data.iloc[:WARMUP_SAMPLES]
    for run in paths.values():
        run(warmup)

    times: dict[str, list[float]] = {name: [] for name in paths}
    rewards: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, run in paths.items():
            seconds, rewards[name] = timed(lambda run=run: run(data), device)
            times[name].append(seconds)

    n = len(data)
    gen, rew = params.generation, params.reward
    print(
        f"\n{n} dialogues from {args.data}; policy {args.policy}, reward {args.reward}; device {device}, "
        f"torch threads {torch.get_num_threads()}; median of {args.repeats} after one warm-up"
    )
    print(
        f"generation: do_sample={gen.do_sample} max_new_tokens={gen.max_new_tokens} "
        f"max_source_tokens={gen.max_source_tokens}; reward.input={rew.input}\n"
    )
    header = (
        f"{'path':<8} {'gen batch':>9} {'rew batch':>9} {'median s':>9} {'min s':>8} {'max s':>8} "
        f"{'samples/s':>10} {'mean reward':>12}"
    )
    print(header)
    print("-" * len(header))
    rate = {}
    for name, batches in (("batched", (gen.batch_size, rew.batch_size)), ("loop", (1, 1))):
        median = statistics.median(times[name])
        rate[name] = n / median
        print(
            f"{name:<8} {batches[0]:>9} {batches[1]:>9} {median:>9.3f} {min(times[name]):>8.3f} "
            f"{max(times[name]):>8.3f} {rate[name]:>10.2f} {statistics.fmean(rewards[name]):>12.3f}"
        )
    print(f"\nspeed-up (batched / loop samples per second): {rate['batched'] / rate['loop']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
