"""glibc's malloc as the stages tune it (detox.common.allocator) against its defaults, side by side.

Each workload runs as its own process, once with the stages' thresholds and once with
``DETOX_MALLOC=default`` (glibc's own), the two taking turns in first place, ``--rounds`` times; the
script prints each workload's median time under both and their ratio. The workloads are the other
benchmark scripts, whose own timings are read from their output:

- ``sft``: an sft training step of the built-in policy (``sft_steps.py``, median step);
- ``generate``: one ``generate`` of 64 prompts, 48 new tokens, the built-in policy (``generation_floor.py``);
- ``ppo``: an RLOO step of the built-in policy, and its peak RSS (``ppo_vs_original.py --variants ours``);
- with ``--base``, ``generate-base``: 16 prompts, 48 new tokens at flan-t5-base size.

The values do not change with the allocator (``tests/test_allocator.py``); only the time and memory do.

    python benchmarks/allocator.py --rounds 3
    python benchmarks/allocator.py --rounds 2 --base
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _row(name: str, column: int) -> Callable[[str], dict[str, float]]:
    """The ``column``-th number of the first output line starting with ``name``."""

    def parse(out: str) -> dict[str, float]:
        lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
        if not lines:
            sys.exit(f"no line starting with {name!r} in the workload's output:\n{out[-3000:]}")
        return {"s": float(lines[0].split()[column])}

    return parse


def _ppo(out: str) -> dict[str, float]:
    ours = json.loads(out.split("JSON ", 1)[1])["results"]["ours"]
    return {"s": ours["phases"]["total"], "peak_rss_mib": ours["peak_rss_mib"]}


WORKLOADS: dict[str, tuple[list[str], Callable[[str], dict[str, float]]]] = {
    "sft": (["sft_steps.py", "--rounds", "1", "--steps", "20"], _row("random", 4)),
    "generate": (
        ["generation_floor.py", "--size", "builtin", "--batch", "64", "--new-tokens", "48", "--repeats", "3"],
        _row("generate", 3),
    ),
    "ppo": (
        ["ppo_vs_original.py", "--size", "builtin", "--steps", "5", "--eval-samples", "8", "--variants", "ours"],
        _ppo,
    ),
}
BASE = {
    "generate-base": (
        ["generation_floor.py", "--size", "base", "--batch", "16", "--new-tokens", "48", "--repeats", "2"],
        _row("generate", 3),
    )
}


def measure(script: list[str], parse: Callable[[str], dict[str, float]], tuned: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "DETOX_MALLOC"}
    if not tuned:
        env["DETOX_MALLOC"] = "default"
    proc = subprocess.run([sys.executable, str(HERE / script[0]), *script[1:]], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{script[0]} failed:\n{proc.stderr[-3000:]}")
    return parse(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each workload under each allocator setting")
    parser.add_argument("--base", action="store_true", help="also generate at flan-t5-base size (minutes a round)")
    parser.add_argument("--only", nargs="*", help="a subset of the workloads")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    workloads = {**WORKLOADS, **(BASE if args.base else {})}
    unknown = set(args.only or ()) - set(workloads)
    if unknown:
        parser.error(f"--only: unknown workloads {sorted(unknown)}; known: {sorted(workloads)}")
    chosen = {name: w for name, w in workloads.items() if not args.only or name in args.only}
    print(f"{'workload':<14} {'kept s':>9} {'glibc s':>9} {'speed-up':>9}  memory (peak RSS MiB, kept / glibc)")
    for name, (script, parse) in chosen.items():
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for tuned in (True, False) if round_ % 2 == 0 else (False, True):
                runs[tuned].append(measure(script, parse, tuned))
        kept, glibc = (statistics.median(r["s"] for r in runs[t]) for t in (True, False))
        memory = ""
        if "peak_rss_mib" in runs[True][0]:
            memory = " / ".join(f"{statistics.median(r['peak_rss_mib'] for r in runs[t]):.0f}" for t in (True, False))
        print(f"{name:<14} {kept:9.4f} {glibc:9.4f} {glibc / kept:8.3f}x  {memory}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
