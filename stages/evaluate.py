"""DVC stage `evaluate`: the PPO policy vs the baseline on the same test prompts and seeds.

The PPO adapters are merged into models/merged/ (a Hugging Face model folder with its own
summarization pipeline and a model card holding the results), which is what gets scored and registered.
Every summary is scored by the reward model and, beside it, by each judge of `eval.judges`.
Writes data/scored/ppo.parquet, metrics/evaluate.json, reports/reward_diff.{parquet,md,html},
reports/disagreements.{parquet,md}, reports/report.{md,html}, the figures reports/figures/*.png and
the DVC plots' data plots/evaluate/{samples,judges}.tsv. Logs all of it into a new MLflow run of its
own, `evaluate · <experiment>`, a child of the PPO run it evaluates (tagged with the ppo stage's dvc.lock
entry; the PPO run is only read), and registers the policy as a new model version of that run (alias
`candidate`, and `champion` when the promotion gate passes on the judge `promotion.judge`).
"""

import json
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import AutoTokenizer

from detox.common.cli import run_stage
from detox.common.errors import DetoxError
from detox.common.gate import VALIDATION_METRICS, ready
from detox.common.io import atomic_dir, write_json, write_parquet, write_text
from detox.common.params import load_params
from detox.common.timings import TIMINGS_DIR, write_timings
from detox.evaluate.figures import write_plots
from detox.evaluate.promotion import decide, evidence, prompts_fingerprint
from detox.evaluate.report import write_report
from detox.evaluate.scoring import check_paired, eval_splits, score_test
from detox.evaluate.statistics import compare
from detox.evaluate.summary import headline, per_prompt, scope
from detox.evaluate.tables import (
    disagreements,
    reward_diff_table,
    write_disagreements,
    write_plot_data,
    write_reward_diff,
)
from detox.judges.panel import facts_judge, load_judges
from detox.models.generation import load_policy
from detox.models.reward import RewardScorer
from detox.ppo.policy import POLICY_FILE, load_trained_policy, trained_algorithm
from detox.serve.export import export_policy
from detox.serve.model_card import card_data, merged_card
from detox.serve.summarizer import Summarizer, model_config, signature
from detox.tracking.provenance import lock_tags, run_name, stage_params
from detox.tracking.registry import PolicyModel, champion_evidence
from detox.tracking.results import EvaluationRecord, Registration, evaluation_run, log_evaluation, read_run_record
from detox.tracking.runs import Tracker
from detox.tracking.store import ui_url

PPO_DIR = Path("models/ppo")
MERGED = Path("models/merged")  # the merged policy: scored, registered, and loadable by transformers
BASE_MANIFEST = Path("models/base/manifest.json")
BASE_CARD = Path("models/base/policy/README.md")  # a Hub snapshot's card: the merged model's license
DATA_MANIFEST = Path("data/raw/manifest.json")
BASELINE = Path("data/scored/baseline.parquet")
BASELINE_METRICS = Path("metrics/baseline.json")
HISTORY = Path("plots/ppo/history.tsv")
SCORED = Path("data/scored/ppo.parquet")
METRICS = Path("metrics/evaluate.json")
REPORTS = Path("reports")
PLOTS = Path("plots/evaluate")  # data files of the DVC plots (dvc.yaml); compared across experiments
FIGURES = Path("reports/figures")  # PNGs for the report and MLflow
VALIDATION = Path("reports/validation")
# Read when present: HISTORY (the report's PPO curves), BASE_MANIFEST and DATA_MANIFEST (the model card's sources),
# BASE_CARD (the license of a Hub base model).
INPUTS = (
    VALIDATION_METRICS,
    VALIDATION,
    "data/raw/test.parquet",
    "data/raw/train.parquet",
    BASELINE,
    BASELINE_METRICS,
    "models/policy/config.json",
    "models/reward/config.json",
    "models/judges",
    PPO_DIR / POLICY_FILE,
)
OUTPUTS = (MERGED, SCORED, REPORTS, PLOTS, METRICS, TIMINGS_DIR / "evaluate.json")


DESCRIPTION = (
    "The PPO policy: the sft policy fine-tuned with PPO against the reward model to write less toxic "
    "dialogue summaries, its LoRA adapters merged. Every evaluate run registers a version; `champion` "
    "is the one that passed the promotion gate on an independent judge. Input: a `dialogue` column; "
    "output: one summary per dialogue."
)


def read_json(path: Path, missing: Any = None) -> Any:
    """The JSON file at ``path``; ``missing`` when there is none (None: it must be there)."""
    if missing is not None and not path.is_file():
        return missing
    return json.loads(path.read_text(encoding="utf-8"))


def version_summary(metrics: dict, judge: str) -> str:
    """The registered version's description: which run, on how much data, the judged change, the decision."""
    share = {side: metrics[side]["toxicity"][judge]["toxic_share"] for side in ("before", "after")}
    return (
        f"{run_name('evaluate')}: {metrics['n']} test dialogues x {metrics['samples_per_prompt']} summaries; "
        f"{judge} toxic share {share['before']:.1%} -> {share['after']:.1%}, ROUGE-L "
        f"{metrics['before']['rougeL']:.3f} -> {metrics['after']['rougeL']:.3f}; "
        f"{metrics['promotion']['decision']}"
    )


def main() -> None:
    params = load_params("params.yaml")
    ready("evaluate", INPUTS, OUTPUTS)
    # A server that is down, a read-only store or another project's store fails here, not after scoring.
    tracker = Tracker(params.tracking.experiment)
    run = read_run_record(PPO_DIR)
    test, train = eval_splits(params.eval.num_samples)
    baseline = pd.read_parquet(BASELINE)
    if "sample" not in baseline.columns:
        raise DetoxError(f"{BASELINE} was scored by an older version (no samples per prompt); run `dvc repro baseline`")
    check_paired(per_prompt(baseline), test, f"{BASELINE}")  # before spending minutes on generation
    if params.eval.facts_judge is not None and "invented" not in baseline.columns:
        raise DetoxError(
            f"{BASELINE} was scored without a facts judge but eval.facts_judge is {params.eval.facts_judge!r}; "
            "run `dvc repro baseline`"
        )
    if int(baseline["sample"].max()) + 1 != params.eval.samples_per_prompt:
        raise DetoxError(
            f"{BASELINE} has {int(baseline['sample'].max()) + 1} samples per prompt but "
            f"eval.samples_per_prompt is {params.eval.samples_per_prompt}; run `dvc repro baseline`"
        )

    judge = params.promotion.judge
    # One run per evaluation, spanning it: a child of the PPO run, which it only reads. DVC wrote the ppo
    # stage's dvc.lock entry before this stage ran, so the run names the policy's hash as `dvc exp show` does.
    with evaluation_run(tracker, run, stage_params("evaluate", params.model_dump(mode="json")), tags=lock_tags("ppo")):
        judges = load_judges("models/judges", params.eval.judges)
        facts = facts_judge("models/judges", params.eval.facts_judge)
        # fluency is measured under the policy before PPO
        reference = load_policy("models/policy", params.policy.attention)
        with atomic_dir(MERGED) as merged:
            # What is scored is exactly what gets registered: the merged policy, reloaded from models/merged/.
            export_policy(
                load_trained_policy(PPO_DIR, attention=params.policy.attention),
                AutoTokenizer.from_pretrained(PPO_DIR),
                merged,
                params.prompt.template,
                params.generation,
                params.eval.seed,
            )
            model, tokenizer = load_policy(merged, params.policy.attention)
            scorer = RewardScorer.from_pretrained("models/reward", params.reward)
            scored, samples_per_second = score_test(
                model, tokenizer, scorer, params, test, train, judges, reference, desc="evaluate", facts=facts
            )
            metrics = compare(baseline, scored, params.promotion, params.eval.seed)
            if facts is not None:
                metrics["facts_judge"] = facts.name
            timings = {"samples_per_second": samples_per_second}
            write_timings("evaluate", timings)
            test_sha = prompts_fingerprint(scored)
            champion = champion_evidence(params.tracking.registered_model)
            decision = decide(metrics, params.promotion, champion, test_sha)
            metrics["promotion"] = {**decision.as_dict(), "judge": params.promotion.judge}
            table = reward_diff_table(baseline, scored)
            disagreed = disagreements(baseline, scored)
            history = pd.read_csv(HISTORY, sep="\t") if HISTORY.is_file() else None

            write_parquet(SCORED, scored)
            tables = write_reward_diff(table, REPORTS)
            disagreement_files = write_disagreements(disagreed, REPORTS)
            plot_data = write_plot_data(baseline, scored, metrics, params.promotion.judge, PLOTS)
            with atomic_dir(FIGURES) as scratch:
                figures = {
                    key: FIGURES / path.name
                    for key, path in write_plots(baseline, scored, history, scratch, metrics).items()
                }
            report = write_report(
                REPORTS,
                figures,
                metrics,
                decision,
                table,
                params.promotion.report_rows,
                params.tracking.registered_model,
                params.promotion.judge,
                disagreed,
            )
            write_json(METRICS, metrics)
            manifest, data_manifest = read_json(BASE_MANIFEST, {}), read_json(DATA_MANIFEST, {})
            write_text(
                merged / "README.md",
                merged_card(
                    params.tracking.registered_model,
                    {**manifest, **data_manifest},
                    metrics,
                    params.promotion.judge,
                    params.prompt.template,
                    params.reward.reward_label,
                    card_data(BASE_CARD),
                    trained_algorithm(PPO_DIR),
                ),
            )

            config = model_config(params.prompt.template, params.generation, params.eval.seed)
            baseline_metrics = read_json(BASELINE_METRICS)
            stage_timings = {"evaluate": timings}  # timings reach MLflow, never DVC's metrics
            if TIMINGS_DIR.joinpath("baseline.json").is_file():
                stage_timings["baseline"] = read_json(TIMINGS_DIR / "baseline.json")
            record = EvaluationRecord(
                metrics,
                baseline_metrics,
                tables={"evaluate/reward_diff.json": table, "evaluate/disagreements.json": disagreed},
                artifacts={
                    "evaluate": [*tables.values(), *disagreement_files.values(), *report.values()],
                    "evaluate/plots": [FIGURES, *plot_data.values()],
                    "validation": sorted(VALIDATION.glob("*.json")),
                },
                timings=stage_timings,
            )
            registration = Registration(
                PolicyModel(
                    Summarizer(),
                    merged,
                    config,
                    signature(config),
                    test[["dialogue"]].head(2),
                    description=DESCRIPTION,
                    version_description=version_summary(metrics, judge),
                ),
                params.tracking.registered_model,
                decision.promoted,
                decision.reasons,
                evidence(metrics, params.promotion, test_sha),
            )
            registered = log_evaluation(tracker, record, registration)

    improvement = metrics["improvement_pct"][judge]["toxic_share"]
    print(
        f"evaluate on {scope(metrics)}: toxic share "
        f"before: {headline(metrics['before']['toxicity'])}; after: {headline(metrics['after']['toxicity'])}; "
        f"{judge}: {'n/a' if improvement is None else f'{improvement:.1f}%'} fewer toxic summaries; "
        f"ROUGE-L {metrics['before']['rougeL']:.4f} -> {metrics['after']['rougeL']:.4f}"
    )
    print(
        f"{registered.name} version {registered.version}: {decision.decision} on the judge {judge} "
        f"(aliases: {', '.join(registered.aliases)}); " + "; ".join(decision.reasons)
    )
    print(f"MLflow: {ui_url(f'models/{registered.name}/versions/{registered.version}')}")


if __name__ == "__main__":
    run_stage(main)
