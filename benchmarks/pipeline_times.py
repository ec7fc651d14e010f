"""The first `dvc repro` as a new user meets it, timed stage by stage over repeated fresh clones.

Each run clones the repository (a commit, HEAD by default) into a new temporary folder, applies
any ``--set`` overrides to its params.yaml, and runs every stage of dvc.yaml in order, one
`dvc repro --single-item <stage>` each, with this checkout's environment (.venv) and the clone's own
library code (``src``, ahead of the editable install on ``PYTHONPATH``). It prints each
stage's min and median wall time over the runs, the whole pipeline's, and the numbers a faster
pipeline must keep (the sft policy's validation ROUGE-L, the oracle's toxic share before and after),
so a change's speed and its effect on the results are read side by side.

    python benchmarks/pipeline_times.py --runs 3
    python benchmarks/pipeline_times.py --runs 2 --set sft.epochs=4 --json reports/pipeline-times.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def stages(project: Path) -> list[str]:
    """The stages of dvc.yaml in the order written there (which is an order they can run in)."""
    return list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


def apply_sets(params_file: Path, sets: list[str]) -> None:
    """``key.sub=value`` overrides (YAML values), as `dvc exp run -S` takes them."""
    params = yaml.safe_load(params_file.read_text())
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set {item!r} is not key=value")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"error: --set {key}: params.yaml has no section {part!r}")
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"error: --set {key}: params.yaml has no key {leaf!r}")
        node[leaf] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def outcome(project: Path) -> dict[str, float | None]:
    """The numbers a speed-up must not change: sft ROUGE-L and the promotion judge's toxic share."""

    def read(name: str) -> dict:
        path = project / "metrics" / name
        return json.loads(path.read_text()) if path.is_file() else {}

    sft, evaluation = read("sft.json"), read("evaluate.json")
    judge = (evaluation.get("promotion") or {}).get("judge", "oracle")

    def toxic(side: str) -> float | None:
        return ((evaluation.get(side) or {}).get("toxicity") or {}).get(judge, {}).get("toxic_share")

    before, after = toxic("before"), toxic("after")
    return {
        "sft_validation_rougeL": sft.get("validation_rougeL"),
        f"{judge}_toxic_before": before,
        f"{judge}_toxic_after": after,
        f"{judge}_toxic_change_pct": 100 * (after - before) / before if before and after is not None else None,
    }


def stage_env(project: Path) -> dict[str, str]:
    """The environment the clone's stages run in: this checkout's .venv, but the clone's own ``src``.

    The .venv installs this checkout's ``src`` in editable mode, so without ``PYTHONPATH`` a clone of
    another commit would run its stages with this checkout's library code (and ``--rev`` would time
    the old stage scripts and params with the new code). ``PYTHONPATH`` comes before the editable path.
    """
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project / "src"), os.environ.get("PYTHONPATH")]))
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's own embedded store, as a new user has
    return env


def one_run(rev: str, sets: list[str], keep: bool) -> tuple[dict[str, float], dict[str, float | None]]:
    folder = Path(tempfile.mkdtemp(prefix="detox-pipeline-times-"))
    project = folder / "project"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    subprocess.run(["git", "checkout", "--quiet", rev], cwd=project, check=True)
    if sets:
        apply_sets(project / "params.yaml", sets)
    env = stage_env(project)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for stage in stages(project):
        begun = time.perf_counter()
        done = subprocess.run(
            ["dvc", "repro", "--single-item", stage], cwd=project, env=env, capture_output=True, text=True
        )
        seconds[stage] = time.perf_counter() - begun
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"error: stage {stage} failed in {project}")
        print(f"  {stage:<10} {seconds[stage]:7.1f} s", flush=True)
    seconds["total"] = time.perf_counter() - started
    result = outcome(project)
    if keep:
        print(f"  kept {project}")
    else:
        shutil.rmtree(folder)
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh clones to time (min and median over them)")
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (uncommitted changes are not seen)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override")
    parser.add_argument("--json", type=Path, help="also write the runs and the summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep each clone (prints where)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not (ROOT / ".venv" / "bin" / "dvc").exists():
        parser.error("no .venv with dvc in this checkout: run `make setup` first")
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    print(f"commit {rev}, {os.cpu_count()} CPUs, sets {args.set or 'none'}")
    runs = []
    for number in range(1, args.runs + 1):
        print(f"run {number} of {args.runs}", flush=True)
        seconds, result = one_run(rev, args.set, args.keep)
        runs.append({"seconds": seconds, "outcome": result})
        print(f"  total      {seconds['total']:7.1f} s   {result}", flush=True)
    names = list(runs[0]["seconds"])
    summary = {
        name: {
            "min": min(run["seconds"][name] for run in runs),
            "median": statistics.median(run["seconds"][name] for run in runs),
        }
        for name in names
    }
    print(f"\n| stage | min s | median s |  ({len(runs)} runs, commit {rev})\n|---|---:|---:|")
    for name in names:
        print(f"| {name} | {summary[name]['min']:.1f} | {summary[name]['median']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"commit": rev, "sets": args.set, "runs": runs, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
