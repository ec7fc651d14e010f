"""What the benchmark scripts share (they run as `python benchmarks/<name>.py`, so this sits beside them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def check_inputs(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Exit 2 with one clear message when an input path is missing."""
    missing = [(flag, Path(getattr(args, flag))) for flag in flags if not Path(getattr(args, flag)).exists()]
    if not missing:
        return
    for flag, path in missing:
        print(f"error: --{flag} {path} does not exist.", file=sys.stderr)
    others = "/".join(f"--{flag}" for flag in flags if flag != "params")
    print("The policy, the reward model and data/raw are made by the fetch stage: run `dvc repro fetch` "
          f"first (or point {others} at existing ones).", file=sys.stderr)
    sys.exit(2)
