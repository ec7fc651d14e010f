"""DVC stage `evaluate`: the PPO policy vs the baseline on the same test prompts and seed.

Writes data/scored/ppo.parquet, metrics/evaluate.json, reports/reward_diff.{parquet,md,html},
reports/report.md and plots/evaluate/*.png; logs all of it into the PPO run in MLflow and
registers the policy as a new model version (alias `candidate`, and `champion` when the
promotion gate passes).
"""

import json
import tempfile
from pathlib import Path

import pandas as pd
from transformers import AutoTokenizer

from detox.cli import run_stage
from detox.comparison import check_paired, compare, decide, reward_diff_table
from detox.data import load_split
from detox.errors import DetoxError
from detox.evaluation import sample_rows, score_policy
from detox.generation import load_policy
from detox.io import atomic_dir, write_json, write_parquet, write_text
from detox.params import load_params
from detox.ppo.policy import POLICY_FILE, load_trained_policy
from detox.report import render_report, write_plots, write_reward_diff
from detox.reward import RewardScorer
from detox.serving import Summarizer, export_policy, model_config, signature
from detox.tracking import PolicyModel, check_tracking_server, log_evaluation, read_run_record

PPO_DIR = Path("models/ppo")
BASELINE = Path("data/scored/baseline.parquet")
BASELINE_METRICS = Path("metrics/baseline.json")
HISTORY = Path("plots/ppo/history.tsv")
SCORED = Path("data/scored/ppo.parquet")
METRICS = Path("metrics/evaluate.json")
REPORTS = Path("reports")
PLOTS = Path("plots/evaluate")
VALIDATION = Path("reports/validation")


def require(path: Path, fix: str) -> None:
    if not path.exists():
        raise DetoxError(f"{path}: not found; {fix}")


def main() -> None:
    params = load_params("params.yaml")
    check_tracking_server(params.tracking.experiment)  # a server that is down fails here, not after scoring
    require(PPO_DIR / POLICY_FILE, "run `dvc repro ppo` to train the policy first")
    require(BASELINE, "run `dvc repro baseline` to score the baseline first")
    require(BASELINE_METRICS, "run `dvc repro baseline` to score the baseline first")
    run = read_run_record(PPO_DIR)
    test = sample_rows(load_split("data/raw", "test"), params.eval.num_samples)
    baseline = pd.read_parquet(BASELINE)
    check_paired(baseline, test, f"{BASELINE}")  # before spending minutes on generation

    with tempfile.TemporaryDirectory(prefix="detox-policy-") as tmp:
        # What is scored is exactly what gets registered: the merged policy, reloaded from its export.
        export_policy(load_trained_policy(PPO_DIR), AutoTokenizer.from_pretrained(PPO_DIR), tmp)
        model, tokenizer = load_policy(tmp)
        scorer = RewardScorer.from_pretrained("models/reward", params.reward)
        scored, samples_per_second = score_policy(
            model, tokenizer, scorer, test, params.prompt.template, params.generation, params.eval.seed,
            params.generation.max_source_tokens, desc="evaluate",
        )
        metrics = {**compare(baseline, scored, params.promotion, params.eval.seed),
                   "samples_per_second": samples_per_second}
        decision = decide(metrics, params.promotion)
        metrics["promotion"] = decision.as_dict()
        table = reward_diff_table(baseline, scored)
        history = pd.read_csv(HISTORY, sep="\t") if HISTORY.is_file() else None

        write_parquet(SCORED, scored)
        tables = write_reward_diff(table, REPORTS)
        with atomic_dir(PLOTS) as scratch:
            plots = {key: PLOTS / path.name for key, path in write_plots(baseline, scored, history, scratch).items()}
        report = REPORTS / "report.md"
        write_text(report, render_report(metrics, decision, table, params.promotion.report_rows,
                                         {k: Path("..", p).as_posix() for k, p in plots.items()},
                                         params.tracking.registered_model))
        write_json(METRICS, metrics)

        config = model_config(params.prompt.template, params.generation, params.eval.seed)
        registered = log_evaluation(
            run, params.tracking.experiment, metrics, json.loads(BASELINE_METRICS.read_text(encoding="utf-8")),
            table, {"evaluate": [*tables.values(), report, METRICS], "evaluate/plots": [PLOTS],
                    "validation": sorted(VALIDATION.glob("*.json"))},
            PolicyModel(Summarizer(), Path(tmp), config, signature(config), test[["dialogue"]].head(2)),
            params.tracking.registered_model, decision.promoted, decision.reasons,
        )

    improvement = metrics["improvement_pct"]["toxicity_mean"]
    diff = metrics["reward_diff"]
    print(f"evaluate on {metrics['n']} test dialogues: toxicity {metrics['before']['toxicity_mean']:.4f} -> "
          f"{metrics['after']['toxicity_mean']:.4f} ({'n/a' if improvement is None else f'{improvement:.1f}%'} "
          f"improvement), reward diff {diff['mean']:+.4f} CI [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], "
          f"ROUGE-L {metrics['before']['rougeL']:.4f} -> {metrics['after']['rougeL']:.4f}")
    print(f"{registered.name} version {registered.version}: {decision.decision} "
          f"(aliases: {', '.join(registered.aliases)}); " + "; ".join(decision.reasons))


if __name__ == "__main__":
    run_stage(main)
