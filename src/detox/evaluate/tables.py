"""The evaluate stage's tables and the data of its DVC plots, computed from the scored frames and written.

The reward diff table and the disagreements are written as parquet, markdown (and HTML); the plot
data files (TSV) are what ``dvc plots show`` / ``dvc plots diff`` draw and compare across experiments.
They hold no timings, so the same inputs give byte-identical files. Every file is written to a
temporary name beside its target and renamed, so a failed run leaves no half-written output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detox.common.io import write_parquet, write_text
from detox.evaluate.columns import REWARD_MODEL, judge_columns, sources
from detox.evaluate.pages import html_table, markdown_table
from detox.evaluate.scoring import check_paired

TABLE_COLUMNS = ["dialogue", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"]
DISAGREEMENT_COLUMNS = [
    "policy",
    "judge",
    "disagreement",
    "id",
    "sample",
    "dialogue",
    "response",
    "reward",
    "reward_model_toxicity",
    "judge_toxicity",
    "judge_found",
]
JUDGE_ONLY = "judge: toxic, reward model: clean"
MODEL_ONLY = "reward model: toxic, judge: clean"
# The data of the DVC plots (dvc.yaml's top-level `plots:` name these files and fields).
PLOT_DATA = {"samples": "samples.tsv", "judges": "judges.tsv"}
SAMPLE_FIELDS = [
    "id",
    "sample",
    "group",
    "reward_before",
    "reward_after",
    "reward_diff",
    "toxicity_before",
    "toxicity_after",
    "judge_toxicity_before",
    "judge_toxicity_after",
]
JUDGE_FIELDS = ["label", "source", "role", "policy", "toxic_share", "toxic_count", "summaries", "toxicity_mean"]


def disagreements(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Every summary on which the reward model and a judge disagree: after PPO first, then before.

    Within each, the summaries the reward model calls clean and a judge toxic come first: what
    PPO may have learned to slip past the reward model.
    """
    parts = []
    for policy, frame in (("after", after), ("before", before)):
        for judge in sources(frame):
            if judge == REWARD_MODEL:
                continue
            score, flag = judge_columns(judge)
            judged, model = frame[flag].to_numpy(dtype=bool), frame["toxic"].to_numpy(dtype=bool)
            for kind, mask in ((JUDGE_ONLY, judged & ~model), (MODEL_ONLY, model & ~judged)):
                rows = frame[mask]
                parts.append(
                    pd.DataFrame(
                        {
                            "policy": policy,
                            "judge": judge,
                            "disagreement": kind,
                            "id": rows["id"].astype(str).to_numpy(),
                            "sample": rows["sample"].to_numpy(),
                            "dialogue": rows["dialogue"].to_numpy(),
                            "response": rows["response"].to_numpy(),
                            "reward": rows["reward"].to_numpy(dtype=np.float64),
                            "reward_model_toxicity": rows["toxicity"].to_numpy(dtype=np.float64),
                            "judge_toxicity": rows[score].to_numpy(dtype=np.float64),
                            "judge_found": rows[f"why:{judge}"].to_numpy() if f"why:{judge}" in rows else "",
                        }
                    )
                )
    parts = [part for part in parts if len(part)]
    if not parts:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in DISAGREEMENT_COLUMNS})
    return pd.concat(parts, ignore_index=True)[DISAGREEMENT_COLUMNS]


def groups(frame: pd.DataFrame) -> np.ndarray:
    """Each row's group: ``heated`` or ``calm`` by the data's ``heated`` flag, ``all`` without one."""
    if "heated" not in frame.columns:
        return np.full(len(frame), "all", dtype=object)
    return np.where(frame["heated"].to_numpy(dtype=bool), "heated", "calm").astype(object)


def reward_diff_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The original project's table, one row per dialogue (its first sample), sorted by reward gain.

    Beside the original columns (:data:`TABLE_COLUMNS`): the reference summary, the dialogue's group
    (``heated`` / ``calm``, when the data has the flag; else ``all``), and the reward model's toxicity
    and each judge's, before and after.
    """
    check_paired(before, after)
    first_before = before[before["sample"] == 0] if "sample" in before else before
    first_after = after[after["sample"] == 0] if "sample" in after else after
    table = pd.DataFrame(
        {
            "dialogue": first_after["dialogue"].to_numpy(),
            "response_before": first_before["response"].to_numpy(),
            "response_after": first_after["response"].to_numpy(),
            "reward_before": first_before["reward"].to_numpy(dtype=np.float64),
            "reward_after": first_after["reward"].to_numpy(dtype=np.float64),
        }
    )
    table["reward_diff"] = table["reward_after"] - table["reward_before"]
    table["reference"] = first_after["reference"].to_numpy() if "reference" in first_after else ""
    table["group"] = groups(first_after)
    for name, (score, _) in sources(first_after).items():
        label = "reward_model_toxicity" if name == REWARD_MODEL else f"{name}_toxicity"
        table[f"{label}_before"] = first_before[score].to_numpy(dtype=np.float64)
        table[f"{label}_after"] = first_after[score].to_numpy(dtype=np.float64)
    return table.sort_values("reward_diff", ascending=False, kind="stable").reset_index(drop=True)


def write_reward_diff(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """``reward_diff.parquet``, ``.md`` and ``.html`` in ``out_dir``; returns their paths."""
    if list(table.columns[: len(TABLE_COLUMNS)]) != TABLE_COLUMNS:
        raise ValueError(f"expected the columns {TABLE_COLUMNS} first, got {list(table.columns)}")
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"reward_diff.{ext}" for ext in ("parquet", "md", "html")}
    write_parquet(paths["parquet"], table)
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
    write_text(
        paths["md"],
        "# Summaries on which the reward model and a judge disagree\n\n"
        f"{len(table)} rows; after PPO first, and within it the summaries the reward model calls clean and "
        "a judge toxic (what PPO may have learned to slip past the reward model).\n\n"
        + markdown_table(table.drop(columns="dialogue")),
    )
    return paths


def sample_plot_data(before: pd.DataFrame, after: pd.DataFrame, judge: str) -> pd.DataFrame:
    """One row per summary (:data:`SAMPLE_FIELDS`), paired: the reward and the reward model's toxicity before
    and after PPO, and the toxicity by ``judge`` (the promotion judge), in the scored frames' order."""
    check_paired(before, after)
    if judge not in sources(after) or judge not in sources(before):
        raise ValueError(f"the judge {judge!r} did not score both frames (sources: {list(sources(after))})")
    score = sources(after)[judge][0]
    frame = pd.DataFrame(
        {
            "id": after["id"].astype(str).to_numpy(),
            "sample": after["sample"].to_numpy() if "sample" in after else np.zeros(len(after), dtype=int),
            "group": groups(after),
            "reward_before": before["reward"].to_numpy(dtype=np.float64),
            "reward_after": after["reward"].to_numpy(dtype=np.float64),
        }
    )
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
            rows.append(
                {
                    "label": f"{name} {policy}",
                    "source": name,
                    "role": role,
                    "policy": policy,
                    "toxic_share": numbers["toxic_share"],
                    "toxic_count": numbers["toxic_count"],
                    "summaries": metrics[policy]["summaries"],
                    "toxicity_mean": numbers["toxicity_mean"],
                }
            )
    return pd.DataFrame(rows, columns=JUDGE_FIELDS)


def write_tsv(path: str | Path, frame: pd.DataFrame) -> None:
    """``frame`` tab-separated, fixed float format: the same frame always gives the same bytes."""
    write_text(path, frame.to_csv(sep="\t", index=False, float_format="%.6f", lineterminator="\n"))


def write_plot_data(
    before: pd.DataFrame, after: pd.DataFrame, metrics: dict[str, Any], judge: str, out_dir: str | Path
) -> dict[str, Path]:
    """The DVC plots' data (:data:`PLOT_DATA`) in ``out_dir``: per summary and per judge; returns the paths."""
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in PLOT_DATA.items()}
    write_tsv(paths["samples"], sample_plot_data(before, after, judge))
    write_tsv(paths["judges"], judge_plot_data(metrics, judge))
    return paths
