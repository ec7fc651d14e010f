"""The one training loop of every neural model this project trains: Hugging Face's ``Trainer``.

The sft stage trains (or fine-tunes) the seq2seq policy and the reward stage the sequence
classifier through :func:`fit`; only the examples and the collator differ. ``Trainer`` brings
what users expect of a Hugging Face training: AdamW with linear warm-up and decay, gradient
clipping, a progress bar, the device it finds (CPU here, a GPU where there is one) and a
per-epoch log. It writes nothing to disk (``save_strategy="no"``, a scratch ``output_dir``)
and reports nowhere: the stages log to MLflow themselves, with the names the project uses.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """What every training here is configured by (``sft.*``, ``reward.train.*``)."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    group_by_length: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16: Trainer's autocast (weights and optimizer stay fp32)

    @classmethod
    def of(cls, cfg: Any, **overrides: Any) -> Schedule:
        """The schedule of a params section that has the five fields (``sft``, ``reward.train``), with
        ``overrides`` of the other fields (``group_by_length`` and ``precision``, which only ``sft`` has)."""
        return cls(cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio, **overrides)


@dataclass
class Fit:
    """One training's record: a row per epoch (``epoch``, ``train_loss``, ``eval_loss`` and what
    ``on_epoch`` returned), the optimiser steps and the wall time."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    def last(self, key: str) -> float | None:
        values = [row[key] for row in self.history if key in row]
        return values[-1] if values else None


class _EpochRecorder(TrainerCallback):
    """Collects the per-epoch train and eval losses and runs ``on_epoch`` after each evaluation."""

    def __init__(
        self, fit: Fit, on_epoch: Callable[[PreTrainedModel], dict[str, float]] | None, evaluates: bool
    ) -> None:
        self.fit = fit
        self.on_epoch = on_epoch
        self.evaluates = evaluates

    def _row(self, epoch: float) -> dict[str, float]:
        number = int(round(epoch))
        for row in self.fit.history:
            if row["epoch"] == number:
                return row
        row = {"epoch": number}
        self.fit.history.append(row)
        return row

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and state.epoch is not None:
            self._row(state.epoch)["train_loss"] = float(logs["loss"])

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        row = self._row(state.epoch)
        if metrics and "eval_loss" in metrics:
            row["eval_loss"] = float(metrics["eval_loss"])
        if self.on_epoch is not None:
            row.update(self.on_epoch(kwargs["model"]))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.evaluates and self.on_epoch is not None:
            self._row(state.epoch).update(self.on_epoch(kwargs["model"]))


def fit(
    model: torch.nn.Module,
    train: Sequence[dict[str, Any]],
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    schedule: Schedule,
    seed: int,
    evaluation: Sequence[dict[str, Any]] | None = None,
    on_epoch: Callable[[PreTrainedModel], dict[str, float]] | None = None,
    desc: str = "train",
) -> Fit:
    """Train ``model`` in place on ``train`` (dicts of token ids with ``labels``) for ``schedule.epochs``.

    After every epoch the mean train loss is recorded, the loss on ``evaluation`` when given, and
    whatever ``on_epoch(model)`` returns (e.g. ROUGE of greedy summaries). The model is left in eval mode.
    """
    if not train:
        raise ValueError(f"{desc}: no training examples")
    record = Fit()
    set_seed(seed)
    with tempfile.TemporaryDirectory(prefix="detox-trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=schedule.epochs,
            per_device_train_batch_size=schedule.batch_size,
            per_device_eval_batch_size=schedule.batch_size,
            learning_rate=schedule.learning_rate,
            weight_decay=schedule.weight_decay,
            warmup_steps=schedule.warmup_ratio,  # a float below 1 is a share of the steps
            lr_scheduler_type="linear",
            # group_by_length: random megabatches of up to 50 batches, each sorted longest first, then cut
            train_sampling_strategy="group_by_length" if schedule.group_by_length else "random",
            max_grad_norm=schedule.max_grad_norm,
            bf16=schedule.precision == "bf16",  # on a CPU: torch.autocast("cpu", torch.bfloat16), use_cpu below
            use_cpu=schedule.precision == "bf16" and not torch.cuda.is_available(),
            fp16=schedule.precision == "fp16",
            seed=seed,
            data_seed=seed,
            eval_strategy="epoch" if evaluation else "no",
            logging_strategy="epoch",
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            disable_tqdm=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=list(train),  # a list is a map-style dataset: the DataLoader indexes it
            eval_dataset=list(evaluation) if evaluation else None,
            callbacks=[_EpochRecorder(record, on_epoch, evaluates=bool(evaluation))],
        )
        start = time.perf_counter()
        log.info("%s: %d examples, %d epochs of batch %d", desc, len(train), schedule.epochs, schedule.batch_size)
        output = trainer.train()
        record.seconds = time.perf_counter() - start
        record.steps = int(output.global_step)
    model.eval()
    for row in record.history:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise FloatingPointError(
                    f"{desc}: {key} is {value} after epoch {row['epoch']}; lower the learning rate"
                )
    return record
