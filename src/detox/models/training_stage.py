"""What the sft and reward stages share: train into a scratch folder inside an MLflow run, log the run and
register the model, then write the plot tables, the metrics and the timings.

The model folder is swapped in, and plots/ and metrics/ are written, only once everything succeeded,
so a failure leaves the previous outputs as they were.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from detox.common.io import atomic_dir, sha256_tree, write_json, write_text
from detox.common.params import Params
from detox.common.timings import write_timings
from detox.models.training import Fit
from detox.tracking.provenance import stage_params
from detox.tracking.registry import PolicyModel
from detox.tracking.results import log_training
from detox.tracking.runs import Tracker

HISTORY_FILE = "history.tsv"


@dataclass(frozen=True)
class Trained:
    """What a stage's training hands back: its numbers, its plot tables by file name (``history.tsv`` among
    them), the model to register (None when nothing was trained) and the registered version's tags."""

    trained: bool
    metrics: dict[str, Any]
    fit: Fit | None
    tables: Mapping[str, pd.DataFrame]
    model: PolicyModel | None
    tags: Mapping[str, Any]


def history_table(fit: Fit | None, columns: Sequence[str]) -> pd.DataFrame:
    """A row per epoch of ``fit`` (none when nothing was trained)."""
    return pd.DataFrame(fit.history if fit else [], columns=list(columns))


def run_training(
    stage: str,
    params: Params,
    out_dir: Path,
    plots_dir: Path,
    metrics_path: Path,
    registered_model: str,
    train: Callable[[Path], Trained],
) -> tuple[Trained, str | None]:
    """Run ``train(scratch)`` in the stage's MLflow run; return what it trained and the registered version."""
    tracker = Tracker(params.tracking.experiment)  # a tracking server that is down fails here, before training
    raw = params.model_dump(mode="json")
    # The run spans the training, so MLflow shows how long it took; any failure ends it FAILED.
    with (
        tracker.run(stage, params=stage_params(stage, raw)),
        atomic_dir(out_dir) as scratch,
        tempfile.TemporaryDirectory(prefix=f"detox-{stage}-") as logged,
    ):
        result = train(scratch)
        timings = {"seconds": round(result.fit.seconds, 1)} if result.fit else {}
        texts = {
            name: table.to_csv(sep="," if name.endswith(".csv") else "\t", index=False)
            for name, table in result.tables.items()
        }
        for name, text in texts.items():  # for MLflow now; to plots/ once everything succeeded
            write_text(Path(logged) / name, text)
        version = log_training(
            tracker,
            stage,
            result.tables[HISTORY_FILE].to_dict("records"),
            {**result.metrics, "timing": timings},
            [Path(logged) / name for name in result.tables],
            result.model,
            registered_model,
            {"sha256": sha256_tree(scratch), "stage": stage, **result.tags},
        )
    for name, text in texts.items():
        write_text(plots_dir / name, text)
    write_json(metrics_path, result.metrics)
    write_timings(stage, timings)  # not a DVC metric: it varies by run
    return result, version
