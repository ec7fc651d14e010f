"""Seeds (and algorithms) as DVC experiments: queue them, then report each configuration over its seeds.

    python scripts/sweep.py queue --algorithms ppo,rloo,grpo --seeds 42,1,2   # dvc exp run --queue, one per pair
    dvc queue start --jobs 1 && dvc queue status                                # run them (reuses the cached stages)
    python scripts/sweep.py report                                              # reports/sweep.md and .json
    python scripts/sweep.py report --rev 23fb9cf      # experiments queued on an earlier commit
    dvc exp run -S eval.samples_per_prompt=25          # toxicity probability over 25 samples per prompt

``queue`` queues one experiment per (algorithm, RL seed) with ``-S ppo.algorithm=A -S ppo.seed=S``
(data, sft, reward model and judges keep the pipeline's ``seed``, so DVC reuses them from its
cache and only ``ppo`` and ``evaluate`` run), named ``A-seedS``; a pair the workspace already
holds (``dvc repro`` on the same params) is not queued again. ``--set KEY=VALUE`` adds a params
change to every experiment of the sweep (another configuration).

``report`` reads ``dvc exp show --json`` (the workspace and every finished experiment of the
baseline commit), groups them by their params other than ``ppo.seed``, and writes, per
configuration, the mean, min and max over seeds of each judge's toxic share before -> after
(all, heated, calm), ROUGE-L, fluency, garbling, invented facts, the toxicity probability and the
selected step, plus ``reports/sweep.png`` (each seed a dot), and logs all three into an MLflow run
``sweep`` of the project's experiment (``--no-mlflow``: files only). A row an experiment has no number
for (made before that number existed) reads n/a.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

JUDGES = ("oracle", "ngram", "reward_model")  # the built-in world's judges and the reward model itself
# (label, path in metrics/evaluate.json or metrics/ppo.json, scale, decimals) of what the report shows
ROWS = (
    ("oracle toxic % before", "evaluate:before.toxicity.oracle.toxic_share", 100, 1),
    ("oracle toxic % after", "evaluate:after.toxicity.oracle.toxic_share", 100, 2),
    *((f"{judge} change %", f"change:{judge}", 1, 1) for judge in JUDGES),
    ("heated: oracle toxic % before", "evaluate:before.heated.toxicity.oracle.toxic_share", 100, 1),
    ("heated: oracle toxic % after", "evaluate:after.heated.toxicity.oracle.toxic_share", 100, 2),
    ("calm: oracle toxic summaries before", "evaluate:before.calm.toxicity.oracle.toxic_count", 1, 0),
    ("calm: oracle toxic summaries after", "evaluate:after.calm.toxicity.oracle.toxic_count", 1, 1),
    ("heated: ngram toxic % before", "evaluate:before.heated.toxicity.ngram.toxic_share", 100, 1),
    ("heated: ngram toxic % after", "evaluate:after.heated.toxicity.ngram.toxic_share", 100, 2),
    ("calm: ngram toxic summaries before", "evaluate:before.calm.toxicity.ngram.toxic_count", 1, 0),
    ("calm: ngram toxic summaries after", "evaluate:after.calm.toxicity.ngram.toxic_count", 1, 1),
    ("ROUGE-L before", "evaluate:before.rougeL", 1, 3),
    ("ROUGE-L after", "evaluate:after.rougeL", 1, 3),
    ("calm ROUGE-L before", "evaluate:before.calm.rougeL", 1, 3),
    ("calm ROUGE-L after", "evaluate:after.calm.rougeL", 1, 3),
    ("fluency NLL before", "evaluate:before.quality.fluency_nll", 1, 3),
    ("fluency NLL after", "evaluate:after.quality.fluency_nll", 1, 3),
    ("unknown-word summaries % before", "evaluate:before.quality.garbled_share", 100, 1),
    ("unknown-word summaries % after", "evaluate:after.quality.garbled_share", 100, 1),
    ("looping summaries % before", "evaluate:before.quality.looping_share", 100, 1),
    ("looping summaries % after", "evaluate:after.quality.looping_share", 100, 1),
    ("invented-fact summaries % before", "evaluate:before.quality.invented_share", 100, 2),
    ("invented-fact summaries % after", "evaluate:after.quality.invented_share", 100, 2),
    ("oracle toxicity probability % before", "evaluate:before.toxicity.oracle.toxicity_probability", 100, 1),
    ("oracle toxicity probability % after", "evaluate:after.toxicity.oracle.toxicity_probability", 100, 1),
    ("selected step", "ppo:selected_step", 1, 0),
)
METRICS = {"evaluate": "metrics/evaluate.json", "ppo": "metrics/ppo.json"}


def dvc(*args: str) -> str:
    beside = Path(sys.executable).with_name("dvc")  # the venv's dvc, also when the venv is not activated
    executable = str(beside) if beside.is_file() else shutil.which("dvc")
    if executable is None:
        raise SystemExit("error: dvc not found: activate the project's venv (. .venv/bin/activate) or install dvc")
    proc = subprocess.run([executable, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: tree}


def experiments(show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished runs of ``dvc exp show --json``: name, flat params of params.yaml, metrics by file."""
    runs = []

    def add(entry: dict[str, Any], name: str) -> None:
        data = entry.get("data") or {}
        if data.get("status", "Success") != "Success" or not data.get("metrics"):
            return
        params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
        metrics = {key: (data["metrics"].get(path) or {}).get("data", {}) for key, path in METRICS.items()}
        if metrics["evaluate"]:
            runs.append({"name": name, "params": params, "metrics": metrics})

    for entry in show:
        add(entry, entry.get("name") or entry.get("rev", "?"))
        for exp in entry.get("experiments") or []:
            # a queued or running experiment shows its params with the metrics of the copy it started from
            if (exp.get("executor") or {}).get("state", "success") != "success":
                continue
            for revision in exp.get("revs") or []:
                add(revision, revision.get("name") or exp.get("name") or revision.get("rev", "?"))
    unique = {}
    for run in runs:
        # One run per params: an experiment is listed under the workspace too when it was applied, and the
        # workspace (ppo.seed null: the pipeline's seed) may hold what `-S ppo.seed=42` ran again (its gate's
        # champion line may differ). The pipeline is deterministic, so a second copy would count a seed twice.
        params = {**run["params"], "ppo.seed": rl_seed(run["params"])}
        unique.setdefault(json.dumps(params, sort_keys=True), run)
    return list(unique.values())


def rl_seed(params: dict[str, Any]) -> int:
    return params["seed"] if params.get("ppo.seed") is None else params["ppo.seed"]


def value(run: dict[str, Any], path: str) -> float | None:
    """The number at ``path`` of one run; None when its metrics have none (an older run)."""
    kind, key = path.split(":", 1)
    if kind == "change":
        flat = flatten(run["metrics"]["evaluate"])
        shares = [flat.get(f"{when}.toxicity.{key}.toxic_share") for when in ("before", "after")]
        if None in shares or not shares[0]:
            return None
        return 100.0 * (shares[1] - shares[0]) / shares[0]
    found = flatten(run["metrics"][kind]).get(key)
    return None if found is None else float(found)


def configuration(params: dict[str, Any], varying: set[str]) -> str:
    """The params that tell configurations apart (those that vary across the runs, less the seeds)."""
    others = ", ".join(f"{k}={params.get(k)}" for k in sorted(varying - {"ppo.algorithm"}))
    return str(params.get("ppo.algorithm")) + (f" ({others})" if others else "")


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {k for run in runs for k in run["params"]}
    varying = {
        k for k in keys if k not in ("ppo.seed",) and len({json.dumps(r["params"].get(k)) for r in runs}) > 1
    } | {"ppo.algorithm"}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[configuration(run["params"], varying)].append(run)
    table = {}
    for name, members in sorted(groups.items()):
        members.sort(key=lambda r: rl_seed(r["params"]))
        rows = {}
        for label, path, scale, _ in ROWS:
            values = [None if (v := value(r, path)) is None else v * scale for r in members]
            known = [v for v in values if v is not None]
            rows[label] = {
                "mean": statistics.fmean(known) if known else None,
                "min": min(known) if known else None,
                "max": max(known) if known else None,
                "values": values,
            }
        table[name] = {
            "seeds": [rl_seed(r["params"]) for r in members],
            "runs": [r["name"] for r in members],
            "rows": rows,
        }
    return table


def markdown(table: dict[str, Any]) -> str:
    names = list(table)
    lines = [
        "# Sweep: each configuration over its RL seeds",
        "",
        "Mean [min, max] over the seeds; the built-in world's 300 test dialogues x 5 samples each "
        "(`eval.samples_per_prompt`); toxic shares by the oracle unless a row names another judge. "
        "Written by `python scripts/sweep.py report` from `dvc exp show --json`.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| RL seeds | " + " | ".join(", ".join(str(s) for s in table[n]["seeds"]) for n in names) + " |",
    ]
    for label, _, _, digits in ROWS:
        cells = []
        for n in names:
            row = table[n]["rows"][label]
            if row["mean"] is None:
                cells.append("n/a")
                continue
            missing = sum(v is None for v in row["values"])
            cells.append(
                f"{row['mean']:.{digits}f} [{row['min']:.{digits}f}, {row['max']:.{digits}f}]"
                + (f" ({len(row['values']) - missing} of {len(row['values'])} seeds)" if missing else "")
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Runs: " + "; ".join(f"{n}: {', '.join(table[n]['runs'])}" for n in names), ""]
    return "\n".join(lines)


# (row, axis label) of what reports/sweep.png draws: where people would rather look than read
PLOTTED = (
    ("oracle change %", "oracle: toxic summaries, change %"),
    ("ngram change %", "ngram judge: toxic summaries, change %"),
    ("heated: oracle toxic % after", "heated dialogues: oracle toxic % after"),
    ("calm ROUGE-L after", "calm dialogues: ROUGE-L after"),
    ("unknown-word summaries % after", "summaries with an unknown word, % after"),
    ("invented-fact summaries % after", "summaries with an invented fact, % after"),
)


def plot(table: dict[str, Any], out: Path) -> Path:
    """reports/sweep.png: per row of PLOTTED, each seed of each configuration a dot, its mean a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    columns = 3
    lines = -(-len(PLOTTED) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    for ax, (row, title) in zip(axes.flat, PLOTTED, strict=True):
        for x, name in enumerate(names):
            numbers = table[name]["rows"][row]
            known = [v for v in numbers["values"] if v is not None]
            ax.scatter([x] * len(known), known, s=18, color="tab:blue", alpha=0.7, zorder=3)
            if numbers["mean"] is not None:
                ax.hlines(numbers["mean"], x - 0.3, x + 0.3, color="black", linewidth=2, zorder=4)
        if all(table[n]["rows"][row]["mean"] is None for n in names):
            ax.text(0.5, 0.5, "no numbers (older runs)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Sweep over RL seeds: each dot a seed, each bar the mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def metric_key(text: str) -> str:
    """An MLflow metric name: letters, digits and _ - . / and spaces only (``%`` reads ``pct``)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text.replace("%", "pct")).strip()


def log_run(table: dict[str, Any], files: list[Path]) -> str:
    """An MLflow run ``sweep · ...`` in the project's experiment: every mean, min and max, and the files."""
    from detox.common.params import load_params
    from detox.tracking.runs import Tracker

    tracker = Tracker(load_params("params.yaml").tracking.experiment)
    with tracker.run(
        "sweep", params={"configurations": len(table), "runs": sum(len(t["runs"]) for t in table.values())}
    ):
        metrics = {
            metric_key(f"{name}/{label}/{stat}"): numbers[stat]
            for name, entry in table.items()
            for label, numbers in entry["rows"].items()
            for stat in ("mean", "min", "max")
            if numbers[stat] is not None
        }
        tracker.log_metrics(metrics)
        tracker.set_tags({"sweep.configurations": "; ".join(f"{n}: {', '.join(t['runs'])}" for n, t in table.items())})
        for path in files:
            tracker.log_artifact(path, "sweep")
        return str(tracker.run_id)


def queue(args: argparse.Namespace) -> int:
    workspace = experiments(json.loads(dvc("exp", "show", "--json", "--no-fetch")))
    done = {
        (r["params"].get("ppo.algorithm"), rl_seed(r["params"]))
        for r in workspace
        if r["name"] == "workspace" and not args.set
    }
    for algorithm in args.algorithms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if (algorithm, seed) in done:
                print(f"{algorithm} seed {seed}: the workspace holds it, not queued")
                continue
            name = f"{algorithm}-seed{seed}" + (f"-{args.name}" if args.name else "")
            sets = [f"ppo.algorithm={algorithm}", f"ppo.seed={seed}", *args.set]
            dvc("exp", "run", "--queue", "--name", name, *(x for s in sets for x in ("-S", s)))
            print(f"queued {name}: {' '.join(sets)}")
    print("run them with: dvc queue start --jobs 1   (then: python scripts/sweep.py report)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="dvc exp run --queue, one experiment per algorithm and RL seed")
    q.add_argument("--algorithms", default="ppo,rloo,grpo")
    q.add_argument("--seeds", default="42,1,2", help="RL seeds (ppo.seed)")
    q.add_argument("--set", action="append", default=[], help="KEY=VALUE for every experiment (repeatable)")
    q.add_argument("--name", default="", help="suffix of the experiment names")
    r = sub.add_parser("report", help="reports/sweep.md and reports/sweep.json from the finished experiments")
    r.add_argument("--json", default=None, help="read this saved `dvc exp show --json` instead of calling dvc")
    r.add_argument("--out", default="reports/sweep.md")
    r.add_argument("--no-mlflow", action="store_true", help="write the files only, log no MLflow run")
    r.add_argument(
        "--rev",
        action="append",
        default=[],
        help="a commit whose experiments to read (repeatable; default HEAD): the one they were queued on",
    )
    args = parser.parse_args(argv)
    if args.command == "queue":
        return queue(args)
    revs = [x for rev in args.rev for x in ("--rev", rev)]
    raw = Path(args.json).read_text() if args.json else dvc("exp", "show", "--json", "--no-fetch", *revs)
    runs = experiments(json.loads(raw))
    if not runs:
        print("error: no finished experiment with metrics/evaluate.json; queue and run some first", file=sys.stderr)
        return 2
    table = report(runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(table))
    out.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    figure = plot(table, out.with_suffix(".png"))
    print(out.read_text())
    if not args.no_mlflow:
        run_id = log_run(table, [out, out.with_suffix(".json"), figure])
        print(f"MLflow run {run_id}: the sweep's numbers (metrics) and its report, table and plot (artifacts sweep/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
