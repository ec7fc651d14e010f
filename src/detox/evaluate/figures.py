"""The evaluate stage's figures (PNG, for the report and MLflow).

They use matplotlib's object API (``Figure``, rendered by Agg), so no GUI backend and no global
pyplot state is involved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from detox.evaluate.columns import REWARD_MODEL
from detox.evaluate.thresholds import TOXIC_THRESHOLD

PLOT_FILES = {
    "judges": "toxic_share_by_judge.png",
    "rewards": "reward_distributions.png",
    "toxicity": "toxicity_before_after.png",
    "training": "ppo_training.png",
}
HISTORY_CURVES = [
    ("env/reward_mean", "reward (mean)"),
    ("objective/kl", "KL (mean, summed over tokens)"),
    ("env/toxicity_mean", "toxicity (mean)"),
]


def plot_judges(metrics: dict[str, Any]) -> Figure:
    """Toxic share before and after, one pair of bars per source: the reward model, then each judge."""
    names = list(metrics["before"]["toxicity"])
    fig = Figure(figsize=(1.8 * len(names) + 3, 4.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for offset, (key, label, color) in zip(
        (-0.2, 0.2), (("before", "before (baseline)", "tab:red"), ("after", "after (PPO)", "tab:blue")), strict=True
    ):
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
    groups = (
        [("summaries", np.ones_like(x, dtype=bool), "tab:blue")]
        if heated is None
        else [("of calm dialogues", ~heated, "tab:blue"), ("of heated dialogues", heated, "tab:red")]
    )
    for label, mask, color in groups:
        ax.scatter(
            x[mask],
            y[mask],
            s=18,
            alpha=0.5,
            color=color,
            edgecolors="none",
            label=f"{mask.sum()} {label}" if heated is None else f"{mask.sum()} summaries {label}",
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="no change")
    ax.axhline(TOXIC_THRESHOLD, color="grey", linewidth=0.5)
    ax.axvline(TOXIC_THRESHOLD, color="grey", linewidth=0.5)
    detoxified = int(((x > TOXIC_THRESHOLD) & (y <= TOXIC_THRESHOLD)).sum())
    turned_toxic = int(((x <= TOXIC_THRESHOLD) & (y > TOXIC_THRESHOLD)).sum())
    ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel="toxicity before (baseline)",
        ylabel="toxicity after (PPO)",
        title=f"Per-sample toxicity: {detoxified} detoxified, {turned_toxic} turned toxic",
    )
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


def write_plots(
    before: pd.DataFrame,
    after: pd.DataFrame,
    history: pd.DataFrame | None,
    out_dir: str | Path,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Path]:
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
