"""What the evaluate stage shows people: the reward diff table, plots, their data and the report.

Figures (PNG, for the report and MLflow) use matplotlib's object API (``Figure``, rendered by
Agg), so no GUI backend and no global pyplot state is involved. The plot data files (TSV) are
what ``dvc plots show`` / ``dvc plots diff`` draw and compare across experiments; they hold no
timings, so the same inputs give byte-identical files. The report is markdown (for reading in
git) and self-contained HTML (figures embedded, for MLflow's artifact viewer). Every file is
written to a temporary name beside its target and renamed, so a failed run leaves no
half-written output.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt
from matplotlib.figure import Figure

from detox.evaluate.comparison import (
    CHANGE_TOLERANCE, DISAGREEMENT_COLUMNS, JUDGE_ONLY, TABLE_COLUMNS, PromotionDecision, check_paired, groups,
)
from detox.evaluate.scoring import REWARD_MODEL, TOXIC_THRESHOLD, sources
from detox.common.io import write_parquet, write_text

PLOT_FILES = {
    "judges": "toxic_share_by_judge.png",
    "rewards": "reward_distributions.png",
    "toxicity": "toxicity_before_after.png",
    "training": "ppo_training.png",
}
QUALITY_ROWS = (("fluency_nll", "fluency: NLL under the reference policy (nats/token, lower is better)"),
                ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("mean_length", "mean length (words)"),
                ("unknown_word_share", "words never seen in the train split (garbling)"),
                ("garbled_share", "summaries with such a word"))
# The data of the DVC plots (dvc.yaml's top-level `plots:` name these files and fields).
PLOT_DATA = {"samples": "samples.tsv", "judges": "judges.tsv"}
SAMPLE_FIELDS = ["id", "sample", "group", "reward_before", "reward_after", "reward_diff", "toxicity_before",
                 "toxicity_after", "judge_toxicity_before", "judge_toxicity_after"]
JUDGE_FIELDS = ["label", "source", "role", "policy", "toxic_share", "toxic_count", "summaries", "toxicity_mean"]
REPORT_FILES = {"md": "report.md", "html": "report.html"}
REPORT_TITLE = "Evaluation: PPO policy vs baseline"
# Inline CSS of the HTML pages: MLflow's artifact viewer shows them without any other file. A long unbroken word
# (a garbled summary) wraps rather than widening its column.
PAGE_STYLE = ("body{font-family:sans-serif;margin:1.5em;line-height:1.4}table{border-collapse:collapse;margin:1em 0}"
              "th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
              "td{max-width:40em;overflow-wrap:break-word}th{background:#f3f3f3;position:sticky;top:0}"
              "img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")
# The least width of a text column of a standalone table (em; never more than its longest line needs, at about
# 2 characters an em): without it the browser gives the room to the long headers of the number columns and
# squeezes a dialogue to one word a line. The dialogue gets the most.
TEXT_COLUMN_EM = {"dialogue": 26}
TEXT_COLUMN_DEFAULT_EM = 10
TABLE_STYLE = ("table.dataframe{font-size:0.875em}table.dataframe th{font-size:0.85em}"
               "table.dataframe th,table.dataframe td{padding:4px 6px}")
HISTORY_CURVES = [("env/reward_mean", "reward (mean)"), ("objective/kl", "KL (mean, summed over tokens)"),
                  ("env/toxicity_mean", "toxicity (mean)")]


# --------------------------------------------------------------------------- files


# --------------------------------------------------------------------------- table


def escape_cell(value: Any) -> str:
    """A value as one markdown table cell: ``|`` escaped, ``&``, ``<`` and ``>`` as HTML entities (text is never
    taken for HTML), line breaks as ``<br>`` (the one tag GitHub and the HTML report render in a table cell;
    a cell cannot hold a newline), floats to 4 places."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return _line_breaks(html.escape(str(value), quote=False).replace("\\", "\\\\").replace("|", "\\|"))


def _line_breaks(text: str) -> str:
    """Every line break (``\\n``, ``\\r\\n``, ``\\r``) as ``<br>``: a table cell cannot hold a newline."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``frame`` (no index)."""
    lines = ["| " + " | ".join(escape_cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(escape_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_page(title: str, body: str, style: str = "") -> str:
    """A standalone HTML page: ``body`` (HTML) under the heading ``title``, styled inline (:data:`PAGE_STYLE`
    and ``style``), nothing external."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}{style}</style></head>\n<body>\n{body}\n</body></html>\n")


def _html_text(value: Any) -> str:
    """A text cell: HTML-escaped, line breaks (a dialogue's turns) as ``<br>``."""
    return _line_breaks(html.escape("" if value is None else str(value)))


def _html_header(name: Any) -> str:
    """A column name, HTML-escaped, that may wrap after each ``_`` (``reward_model_toxicity_before``)."""
    return html.escape(str(name)).replace("_", "_<wbr>")


def html_table(frame: pd.DataFrame, title: str) -> str:
    """A standalone HTML page with ``frame`` as a table; line breaks in text cells are shown as line breaks, and
    text columns keep a readable width (:data:`TEXT_COLUMN_EM`)."""
    # pandas writes a newline in a cell as the two characters "\n", escape or not; so text cells are
    # escaped here and their line breaks turned into <br>, and pandas is told not to escape again.
    texts = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])
             and not pd.api.types.is_bool_dtype(frame[c])]
    shown = frame.rename(columns={c: _html_header(c) for c in frame.columns})
    body = shown.to_html(index=False, escape=False, border=0, float_format=lambda v: f"{v:.4f}",
                         formatters={_html_header(c): _html_text for c in texts})
    widths = "".join(f"td:nth-child({i}){{min-width:{_text_width(frame[c], c)}em}}"
                     for i, c in enumerate(frame.columns, start=1) if c in texts)
    return html_page(title, f"<h1>{html.escape(title)}</h1>\n{body}", TABLE_STYLE + widths)


def _text_width(column: pd.Series, name: Any) -> int:
    """The least width of a text column (em): :data:`TEXT_COLUMN_EM`, or less when its longest line is short."""
    longest = column.astype(str).str.split(r"\r\n|\r|\n", regex=True).explode().str.len().max()
    return min(TEXT_COLUMN_EM.get(name, TEXT_COLUMN_DEFAULT_EM), -(-int(longest if longest == longest else 0) // 2))


def write_reward_diff(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """``reward_diff.parquet``, ``.md`` and ``.html`` in ``out_dir``; returns their paths."""
    if list(table.columns[: len(TABLE_COLUMNS)]) != TABLE_COLUMNS:
        raise ValueError(f"expected the columns {TABLE_COLUMNS} first, got {list(table.columns)}")
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"reward_diff.{ext}" for ext in ("parquet", "md", "html")}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = paths["parquet"].with_name(paths["parquet"].name + ".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, paths["parquet"])
    write_text(paths["md"], "# Reward diff: before vs after PPO\n\n" + markdown_table(table))
    write_text(paths["html"], html_table(table, "Reward diff: before vs after PPO"))
    return paths


def write_disagreements(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """``disagreements.parquet`` and ``.md``: the summaries on which the reward model and a judge disagree."""
    if list(table.columns) != DISAGREEMENT_COLUMNS:
        raise ValueError(f"expected the columns {DISAGREEMENT_COLUMNS}, got {list(table.columns)}")
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"disagreements.{ext}" for ext in ("parquet", "md")}
    write_parquet(paths["parquet"], table)
    write_text(paths["md"], "# Summaries on which the reward model and a judge disagree\n\n"
               f"{len(table)} rows; after PPO first, and within it the summaries the reward model calls clean and "
               "a judge toxic (what PPO may have learned to slip past the reward model).\n\n"
               + markdown_table(table.drop(columns="dialogue")))
    return paths


# --------------------------------------------------------------------------- plots


def plot_judges(metrics: dict[str, Any]) -> Figure:
    """Toxic share before and after, one pair of bars per source: the reward model, then each judge."""
    names = list(metrics["before"]["toxicity"])
    fig = Figure(figsize=(1.8 * len(names) + 3, 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, (key, label, color) in zip((-0.2, 0.2), (("before", "before (baseline)", "tab:red"),
                                                          ("after", "after (PPO)", "tab:blue")), strict=True):
        shares = [metrics[key]["toxicity"][n]["toxic_share"] for n in names]
        bars = ax.bar(x + offset, shares, width=0.4, color=color, label=label)
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in shares], fontsize=8)
    ax.set_xticks(x, [f"{n}\n(trained against)" if n == REWARD_MODEL else n for n in names])
    ax.set_ylabel("toxic summaries (share)")
    ax.set_title("Toxic summaries by who judged them")
    ax.legend()
    return fig



def plot_rewards(before: pd.DataFrame, after: pd.DataFrame) -> Figure:
    """Histograms of the per-sample reward before and after, on shared bins."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    values = np.concatenate([before["reward"].to_numpy(), after["reward"].to_numpy()])
    bins = np.histogram_bin_edges(values, bins=30)
    for frame, label, color in ((before, "before (baseline)", "tab:red"), (after, "after (PPO)", "tab:blue")):
        reward = frame["reward"].to_numpy()
        ax.hist(reward, bins=bins, alpha=0.55, color=color, label=f"{label}: mean {reward.mean():.3f}")
    ax.set_xlabel("reward (logit of the reward label)")
    ax.set_ylabel("summaries")  # each sampled summary is one value: k per test dialogue
    ax.set_title("Reward distribution before and after PPO")
    ax.legend()
    return fig


def plot_toxicity(before: pd.DataFrame, after: pd.DataFrame) -> Figure:
    """Per-sample toxicity after vs before; points below the diagonal became less toxic."""
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    x, y = before["toxicity"].to_numpy(), after["toxicity"].to_numpy()
    heated = after["heated"].to_numpy(dtype=bool) if "heated" in after.columns else None
    groups = [("summaries", np.ones_like(x, dtype=bool), "tab:blue")] if heated is None else [
        ("of calm dialogues", ~heated, "tab:blue"), ("of heated dialogues", heated, "tab:red")]
    for label, mask, color in groups:
        ax.scatter(x[mask], y[mask], s=18, alpha=0.5, color=color, edgecolors="none",
                   label=f"{mask.sum()} {label}" if heated is None else f"{mask.sum()} summaries {label}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="no change")
    ax.axhline(TOXIC_THRESHOLD, color="grey", linewidth=0.5)
    ax.axvline(TOXIC_THRESHOLD, color="grey", linewidth=0.5)
    detoxified = int(((x > TOXIC_THRESHOLD) & (y <= TOXIC_THRESHOLD)).sum())
    turned_toxic = int(((x <= TOXIC_THRESHOLD) & (y > TOXIC_THRESHOLD)).sum())
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="toxicity before (baseline)", ylabel="toxicity after (PPO)",
           title=f"Per-sample toxicity: {detoxified} detoxified, {turned_toxic} turned toxic")
    # below the axes: every corner of the square holds data ("turned toxic" is the upper left)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    return fig


def plot_training(history: pd.DataFrame) -> Figure:
    """PPO training curves: reward, KL and toxicity against the step."""
    fig = Figure(figsize=(7, 7.5), layout="constrained")
    axes = fig.subplots(len(HISTORY_CURVES), 1, sharex=True)
    for ax, (column, label) in zip(axes, HISTORY_CURVES, strict=True):
        if column in history.columns:
            ax.plot(history["step"], history[column], marker=".", color="tab:blue")
        else:
            ax.text(0.5, 0.5, f"{column} not in the history", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("PPO step")
    axes[0].set_title("PPO training")
    return fig


def write_plots(before: pd.DataFrame, after: pd.DataFrame, history: pd.DataFrame | None,
                out_dir: str | Path, metrics: dict[str, Any] | None = None) -> dict[str, Path]:
    """Render every plot as PNG into ``out_dir`` (training curves only with a history, the judges' bars only
    with metrics); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Callable[[], Figure]] = {} if metrics is None else {"judges": lambda: plot_judges(metrics)}
    figures |= {
        "rewards": lambda: plot_rewards(before, after),
        "toxicity": lambda: plot_toxicity(before, after),
    }
    if history is not None:
        figures["training"] = lambda: plot_training(history)
    paths = {}
    for key, make in figures.items():
        paths[key] = out_dir / PLOT_FILES[key]
        make().savefig(paths[key], dpi=110)
    return paths


def sample_plot_data(before: pd.DataFrame, after: pd.DataFrame, judge: str) -> pd.DataFrame:
    """One row per summary (:data:`SAMPLE_FIELDS`), paired: the reward and the reward model's toxicity before
    and after PPO, and the toxicity by ``judge`` (the promotion judge), in the scored frames' order."""
    check_paired(before, after)
    if judge not in sources(after) or judge not in sources(before):
        raise ValueError(f"the judge {judge!r} did not score both frames (sources: {list(sources(after))})")
    score = sources(after)[judge][0]
    frame = pd.DataFrame({
        "id": after["id"].astype(str).to_numpy(),
        "sample": after["sample"].to_numpy() if "sample" in after else np.zeros(len(after), dtype=int),
        "group": groups(after),
        "reward_before": before["reward"].to_numpy(dtype=np.float64),
        "reward_after": after["reward"].to_numpy(dtype=np.float64),
    })
    frame["reward_diff"] = frame["reward_after"] - frame["reward_before"]
    frame["toxicity_before"] = before["toxicity"].to_numpy(dtype=np.float64)
    frame["toxicity_after"] = after["toxicity"].to_numpy(dtype=np.float64)
    frame["judge_toxicity_before"] = before[score].to_numpy(dtype=np.float64)
    frame["judge_toxicity_after"] = after[score].to_numpy(dtype=np.float64)
    return frame[SAMPLE_FIELDS]


def judge_plot_data(metrics: dict[str, Any], judge: str) -> pd.DataFrame:
    """Toxic share before and after PPO by who judged (:data:`JUDGE_FIELDS`): the reward model, then each judge."""
    rows = []
    for name in metrics["before"]["toxicity"]:
        role = "trained against" if name == REWARD_MODEL else "promotion judge" if name == judge else "judge"
        for policy in ("before", "after"):
            numbers = metrics[policy]["toxicity"][name]
            rows.append({"label": f"{name} {policy}", "source": name, "role": role, "policy": policy,
                         "toxic_share": numbers["toxic_share"], "toxic_count": numbers["toxic_count"],
                         "summaries": metrics[policy]["summaries"], "toxicity_mean": numbers["toxicity_mean"]})
    return pd.DataFrame(rows, columns=JUDGE_FIELDS)


def _tsv(frame: pd.DataFrame) -> str:
    """Tab-separated, fixed float format: the same frame always gives the same bytes."""
    return frame.to_csv(sep="\t", index=False, float_format="%.6f", lineterminator="\n")


def write_plot_data(before: pd.DataFrame, after: pd.DataFrame, metrics: dict[str, Any], judge: str,
                    out_dir: str | Path) -> dict[str, Path]:
    """The DVC plots' data (:data:`PLOT_DATA`) in ``out_dir``: per summary and per judge; returns the paths."""
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in PLOT_DATA.items()}
    write_text(paths["samples"], _tsv(sample_plot_data(before, after, judge)))
    write_text(paths["judges"], _tsv(judge_plot_data(metrics, judge)))
    return paths


# --------------------------------------------------------------------------- report


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:`` URI, to embed it in a page that must stand alone."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def markdown_to_html(text: str) -> str:
    """Markdown (CommonMark with GitHub's tables) as HTML. Raw HTML is let through: the report's only tags are
    the ``<br>`` of table cells, since :func:`escape_cell` turns ``<`` in any text into an entity."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def write_report(out_dir: str | Path, figures: dict[str, Path], metrics: dict[str, Any],
                 decision: PromotionDecision, table: pd.DataFrame, rows: int, registered_model: str, judge: str,
                 disagreements: pd.DataFrame | None = None) -> dict[str, Path]:
    """``report.md`` (figures linked relative to it, for reading in git) and ``report.html`` (figures embedded,
    no external resource: it renders alone, in MLflow's artifact viewer too) in ``out_dir``. Returns the paths."""
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in REPORT_FILES.items()}
    links = {key: Path(os.path.relpath(path, out_dir)).as_posix() for key, path in figures.items()}
    embedded = {key: data_uri(path) for key, path in figures.items()}
    rest = (registered_model, judge, disagreements)
    write_text(paths["md"], render_report(metrics, decision, table, rows, links, *rest))
    write_text(paths["html"], html_page(REPORT_TITLE, markdown_to_html(
        render_report(metrics, decision, table, rows, embedded, *rest))))
    return paths


def _number(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _who(name: str) -> str:
    return "reward model (what PPO optimised: not independent)" if name == REWARD_MODEL else f"judge `{name}`"


def headline(toxicity: dict[str, Any]) -> str:
    """``reward model 0.100, oracle 0.110, ...``: each source's toxic share, the reward model first."""
    return ", ".join(f"{'reward model' if name == REWARD_MODEL else name} {numbers['toxic_share']:.3f}"
                     for name, numbers in toxicity.items())


def render_report(metrics: dict[str, Any], decision: PromotionDecision, table: pd.DataFrame, rows: int,
                  plots: dict[str, str], registered_model: str, judge: str,
                  disagreements: pd.DataFrame | None = None) -> str:
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
            f"| {_who(name)} | {b['toxic_count']} ({b['toxic_share']:.1%}) | {a['toxic_count']} ({a['toxic_share']:.1%}) "
            f"| {_number(imp['toxic_share'], '.1f')}% fewer | {b['toxicity_mean']:.4f} -> {a['toxicity_mean']:.4f} | "
            f"{diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}], Wilcoxon p = {_p(diff['wilcoxon_p'])} "
            f"| {b['expected_max_toxicity']:.4f} -> {a['expected_max_toxicity']:.4f} "
            f"| {b['toxicity_probability']:.3f} -> {a['toxicity_probability']:.3f} |")
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
            lines.append(f"| {name} | {policy} | {c['both_toxic']} | {c['judge_only']} | {c['reward_model_only']} | "
                         f"{c['both_clean']} | {c['agreement']:.1%} |")
    if disagreements is not None:
        missed = disagreements[(disagreements["policy"] == "after") & (disagreements["disagreement"] == JUDGE_ONLY)]
        lines += ["", f"After PPO, summaries the reward model calls clean and a judge toxic ({len(missed)}; "
                      f"first {min(rows, len(missed))}):", ""]
        if len(missed):
            lines.append(markdown_table(missed.head(rows)[["judge", "response", "reward_model_toxicity",
                                                           "judge_toxicity", "judge_found"]]))
        else:
            lines.append("None.\n")
        lines.append("All of them, both ways and before PPO too: `reports/disagreements.md` and `.parquet` (and "
                     "`evaluate/disagreements.json` in the MLflow run).")
    lines += [
        "",
        "## Quality",
        "",
        "| metric | before | after | change |",
        "|---|---|---|---|",
        *[f"| {key.replace('rouge', 'ROUGE-')} | {before[key]:.4f} | {after[key]:.4f} | {after[key] - before[key]:+.4f} |"
          for key in ("rouge1", "rouge2", "rougeL")],
        *[f"| {label} | {before['quality'][key]:.4f} | {after['quality'][key]:.4f} | "
          f"{after['quality'][key] - before['quality'][key]:+.4f} |"
          for key, label in QUALITY_ROWS if key in after["quality"] and key in before["quality"]],
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
            shares = ", ".join(f"{'reward model' if n == REWARD_MODEL else n} {b['toxicity'][n]['toxic_share']:.1%} -> "
                               f"{a['toxicity'][n]['toxic_share']:.1%}" for n in b["toxicity"])
            lines.append(f"- {group} dialogues ({b['n']}): toxic summaries {shares}; reward {b['reward_mean']:.4f} -> "
                         f"{a['reward_mean']:.4f}, ROUGE-L {b['rougeL']:.4f} -> {a['rougeL']:.4f}")
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
