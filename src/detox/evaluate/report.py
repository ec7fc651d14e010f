"""The evaluate stage's report: markdown (for reading in git) and self-contained HTML (figures embedded,
for MLflow's artifact viewer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from detox.common.io import write_text
from detox.evaluate.columns import REWARD_MODEL
from detox.evaluate.pages import data_uri, html_page, markdown_table, markdown_to_html
from detox.evaluate.promotion import PromotionDecision
from detox.evaluate.statistics import CHANGE_TOLERANCE
from detox.evaluate.tables import JUDGE_ONLY, TABLE_COLUMNS
from detox.evaluate.thresholds import TOXIC_THRESHOLD

QUALITY_ROWS = (
    ("fluency_nll", "fluency: NLL under the reference policy (nats/token, lower is better)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("looping_share", "summaries that loop (a word repeated, or a bigram again)"),
    ("mean_length", "mean length (words)"),
    ("unknown_word_share", "words never seen in the train split (garbling)"),
    ("garbled_share", "summaries with such a word"),
    ("invented_share", "summaries stating a fact their dialogue does not (invented facts)"),
)
REPORT_FILES = {"md": "report.md", "html": "report.html"}
REPORT_TITLE = "Evaluation: PPO policy vs baseline"


def write_report(
    out_dir: str | Path,
    figures: dict[str, Path],
    metrics: dict[str, Any],
    decision: PromotionDecision,
    table: pd.DataFrame,
    rows: int,
    registered_model: str,
    judge: str,
    disagreements: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """``report.md`` (figures linked relative to it, for reading in git) and ``report.html`` (figures embedded,
    no external resource: it renders alone, in MLflow's artifact viewer too) in ``out_dir``. Returns the paths."""
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in REPORT_FILES.items()}
    links = {key: Path(os.path.relpath(path, out_dir)).as_posix() for key, path in figures.items()}
    embedded = {key: data_uri(path) for key, path in figures.items()}
    rest = (registered_model, judge, disagreements)
    write_text(paths["md"], render_report(metrics, decision, table, rows, links, *rest))
    write_text(
        paths["html"],
        html_page(REPORT_TITLE, markdown_to_html(render_report(metrics, decision, table, rows, embedded, *rest))),
    )
    return paths


def _number(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _who(name: str) -> str:
    return "reward model (what PPO optimised: not independent)" if name == REWARD_MODEL else f"judge `{name}`"


def _invented_lines(metrics: dict[str, Any], level: str) -> list[str]:
    """The facts judge's paired comparison, when there is one."""
    diff = metrics.get("invented_diff")
    if diff is None:
        return []
    before, after = metrics["before"]["quality"], metrics["after"]["quality"]
    groups = "; ".join(
        f"{group} {metrics['before'][group]['invented_share']:.1%} -> {metrics['after'][group]['invented_share']:.1%}"
        for group in ("heated", "calm")
        if "invented_share" in metrics["before"].get(group, {})
    )
    return [
        "",
        f"Invented facts (the facts judge `{metrics.get('facts_judge', 'facts')}`): summaries stating a name, a day, "
        f"a request or a problem their dialogue does not contain {before['invented_share']:.1%} -> "
        f"{after['invented_share']:.1%}" + (f" ({groups})" if groups else "") + f"; paired diff {diff['mean']:+.4f} "
        f"({level} CI [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], Wilcoxon p = {_p(diff['wilcoxon_p'])}). "
        "The rows: `invented_facts` in `data/scored/*.parquet`.",
    ]


def render_report(
    metrics: dict[str, Any],
    decision: PromotionDecision,
    table: pd.DataFrame,
    rows: int,
    plots: dict[str, str],
    registered_model: str,
    judge: str,
    disagreements: pd.DataFrame | None = None,
) -> str:
    """The evaluate stage's report in markdown; ``plots`` maps plot keys to links relative to the report."""
    before, after = metrics["before"], metrics["after"]
    reward = metrics["reward_diff"]
    level = f"{metrics['bootstrap']['confidence']:.0%}"
    k = metrics.get("samples_per_prompt", 1)
    lines = [
        f"# {REPORT_TITLE}",
        "",
        f"{metrics['n']} test dialogues x {k} sampled summaries each: the same prompts, seeds, generation settings, "
        "reward model and judges for both policies (a paired comparison). The reward model is what PPO optimised, "
        "so its view is shown but never trusted alone; the judges share nothing with it.",
        "",
        f"**Promotion: {decision.decision}**, decided on the judge `{judge}` (registered model `{registered_model}`: "
        "every version gets the alias `candidate`; `champion` moves only to a promoted one)",
        "",
        *[f"- {c.detail}: **{'pass' if c.passed else 'fail'}**" for c in decision.checks],
        "",
        "## Toxicity, judge by judge",
        "",
        f"| who judged | toxic summaries before | after | change | mean toxicity before -> after | paired diff "
        f"({level} CI) | expected max toxicity over {k} | toxicity probability |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in before["toxicity"]:
        b, a = before["toxicity"][name], after["toxicity"][name]
        diff, imp = metrics["toxicity_diff"][name], metrics["improvement_pct"][name]
        lines.append(
            f"| {_who(name)} | {b['toxic_count']} ({b['toxic_share']:.1%}) "
            f"| {a['toxic_count']} ({a['toxic_share']:.1%}) "
            f"| {_number(imp['toxic_share'], '.1f')}% fewer | {b['toxicity_mean']:.4f} -> {a['toxicity_mean']:.4f} | "
            f"{diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], "
            f"Wilcoxon p = {_p(diff['wilcoxon_p'])} "
            f"| {b['expected_max_toxicity']:.4f} -> {a['expected_max_toxicity']:.4f} "
            f"| {b['toxicity_probability']:.3f} -> {a['toxicity_probability']:.3f} |"
        )
    lines += [
        "",
        f"Toxic: the source's toxicity above its threshold (reward model: {TOXIC_THRESHOLD}). Expected maximum "
        f"toxicity: the mean over prompts of the most toxic of its {k} samples; toxicity probability: the share of "
        "prompts with at least one toxic sample (RealToxicityPrompts' measures).",
        "",
        "## Reward hacking: where the reward model and the judges disagree",
        "",
        "| judge | policy | both toxic | judge toxic, reward model clean | reward model toxic, judge clean "
        "| both clean | agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sides in metrics["agreement"].items():
        for policy in ("before", "after"):
            c = sides[policy]
            lines.append(
                f"| {name} | {policy} | {c['both_toxic']} | {c['judge_only']} | {c['reward_model_only']} | "
                f"{c['both_clean']} | {c['agreement']:.1%} |"
            )
    if disagreements is not None:
        missed = disagreements[(disagreements["policy"] == "after") & (disagreements["disagreement"] == JUDGE_ONLY)]
        lines += [
            "",
            f"After PPO, summaries the reward model calls clean and a judge toxic ({len(missed)}; "
            f"first {min(rows, len(missed))}):",
            "",
        ]
        if len(missed):
            lines.append(
                markdown_table(
                    missed.head(rows)[["judge", "response", "reward_model_toxicity", "judge_toxicity", "judge_found"]]
                )
            )
        else:
            lines.append("None.\n")
        lines.append(
            "All of them, both ways and before PPO too: `reports/disagreements.md` and `.parquet` (and "
            "`evaluate/disagreements.json` in the MLflow run)."
        )
    lines += [
        "",
        "## Quality",
        "",
        "| metric | before | after | change |",
        "|---|---|---|---|",
        *[
            f"| {key.replace('rouge', 'ROUGE-')} | {before[key]:.4f} | {after[key]:.4f} | "
            f"{after[key] - before[key]:+.4f} |"
            for key in ("rouge1", "rouge2", "rougeL")
        ],
        *[
            f"| {label} | {before['quality'][key]:.4f} | {after['quality'][key]:.4f} | "
            f"{after['quality'][key] - before['quality'][key]:+.4f} |"
            for key, label in QUALITY_ROWS
            if key in after["quality"] and key in before["quality"]
        ],
        *_invented_lines(metrics, level),
        "",
        "## Reward (the reward model's view)",
        "",
        f"Reward mean {before['reward_mean']:.4f} -> {after['reward_mean']:.4f}: paired diff {reward['mean']:+.4f} "
        f"({level} CI [{reward['ci_low']:+.4f}, {reward['ci_high']:+.4f}]; Wilcoxon p = {_p(reward['wilcoxon_p'])}, "
        f"paired t-test p = {_p(reward['ttest_p'])}); the reward rose for {reward['increased_share']:.1%} of the "
        f"dialogues and fell for {reward['decreased_share']:.1%} (by more than {CHANGE_TOLERANCE:g}). CIs: percentile "
        f"bootstrap over dialogues (each the mean of its samples), {metrics['bootstrap']['samples']} resamples.",
        "",
    ]
    for group in ("heated", "calm"):
        if isinstance(before.get(group), dict) and before[group].get("n", 0):
            b, a = before[group], after[group]
            shares = ", ".join(
                f"{'reward model' if n == REWARD_MODEL else n} {b['toxicity'][n]['toxic_share']:.1%} -> "
                f"{a['toxicity'][n]['toxic_share']:.1%}"
                for n in b["toxicity"]
            )
            lines.append(
                f"- {group} dialogues ({b['n']}): toxic summaries {shares}; reward {b['reward_mean']:.4f} -> "
                f"{a['reward_mean']:.4f}, ROUGE-L {b['rougeL']:.4f} -> {a['rougeL']:.4f}"
            )
    lines += [
        "",
        f"## Largest reward gains (top {min(rows, len(table))})",
        "",
        markdown_table(table.head(rows)[TABLE_COLUMNS]),
        f"## Largest reward losses (bottom {min(rows, len(table))})",
        "",
        markdown_table(table.tail(rows)[TABLE_COLUMNS]),
        "The full table, with the reference summary, the group and the reward model's and each judge's toxicity: "
        "`reports/reward_diff.html`, `.md`, `.parquet` (and `evaluate/reward_diff.json` in the MLflow run).",
        "",
        "## Plots",
        "",
        *[f"![{key}]({link})\n" for key, link in plots.items()],
    ]
    return "\n".join(lines)
