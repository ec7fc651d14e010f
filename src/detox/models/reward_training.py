"""The reward stage: train or fine-tune the reward classifier on labelled text, and measure it.

The built-in RoBERTa is trained from scratch (fetch wrote only its configuration and
tokenizer). A Hub or local classifier (Meta's hate-speech RoBERTa by default) is used as it
is, or fine-tuned on the labelled data when ``reward.train.enabled`` is true. Either way
the model is measured on a held-out share of the labelled data that it never trains on:
accuracy, per-class precision/recall/F1, ROC-AUC and expected calibration error of the
toxic label's probability, confusion counts, and the ROC and calibration curves that DVC
plots. Labels are matched to the model's ``label2id`` by name (or by id), so a classifier
whose labels are called ``toxic``/``clean`` trains on a file that uses those names.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from detox.common.errors import SourceError
from detox.common.params import Params
from detox.models.check import load_or_init
from detox.models.classifier import batch_outputs, label_index, token_limit
from detox.models.training import Fit, Schedule, fit

log = logging.getLogger(__name__)

CALIBRATION_BINS = 10


def load_labelled(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: labelled data not found; run `dvc repro fetch` first")
    return pd.read_parquet(path)


def encode_labels(labels: pd.Series, label2id: dict[str, int], origin: str) -> list[int]:
    """Map label names (``hate``, case-insensitive) or ids (``1``) to the model's ids; fail on any other."""
    by_name = {str(name).lower(): int(i) for name, i in label2id.items()}
    ids = set(by_name.values())
    out: list[int] = []
    for row, value in enumerate(labels):
        text = str(value).strip()
        if text.lower() in by_name:
            out.append(by_name[text.lower()])
        elif text.lstrip("-").isdigit() and int(text) in ids:
            out.append(int(text))
        else:
            raise SourceError(
                f"{origin}: row {row} has label {value!r}; the model's labels are "
                f"{sorted(label2id)} (or their ids {sorted(ids)})"
            )
    return out


def holdout_split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out): a seeded permutation, ``share`` of the rows held out (at least one)."""
    # Not sklearn's train_test_split, nor the n-gram judge's draw: either holds out other rows (results must stay).
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, int(round(n * share)))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def predict_probs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int, max_tokens: int
) -> np.ndarray:
    """Softmax probabilities, one row per text."""
    model.eval()
    out = batch_outputs(
        model, tokenizer, texts, batch_size, max_tokens, head=lambda logits: torch.softmax(logits, dim=-1).cpu()
    )
    return np.concatenate([probs.numpy() for probs in out]) if out else np.zeros((0, model.config.num_labels))


def expected_calibration_error(truth: np.ndarray, prob: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The mean gap |observed toxic share - mean predicted probability| over equal-width bins, weighted by size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            gap += mask.sum() * abs(truth[mask].mean() - prob[mask].mean())
    return float(gap / max(1, len(prob)))


def classifier_metrics(
    labels: np.ndarray, probs: np.ndarray, id2label: dict[int, str], toxic_id: int, hard: np.ndarray | None = None
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Held-out numbers and curves from true label ids and predicted probabilities.

    Returns the metrics and three tables: ``roc`` (fpr, tpr, threshold), ``calibration`` (per
    bin: mean predicted toxicity, observed toxic share, count) and ``predictions`` (actual,
    predicted label names: DVC's confusion template).
    """
    labels = np.asarray(labels)
    predicted = probs.argmax(axis=1)
    classes = sorted(id2label)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    truth = (labels == toxic_id).astype(int)
    prob = probs[:, toxic_id]
    flagged = (predicted == toxic_id).astype(int)
    tn, fp, fn, tp = confusion_matrix(truth, flagged, labels=[0, 1]).ravel()
    both = 0 < truth.sum() < len(truth)
    metrics: dict[str, Any] = {
        "examples": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "per_class": {
            id2label[c]: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "toxic_label": id2label[toxic_id],
        "roc_auc": float(roc_auc_score(truth, prob)) if both else None,
        "calibration_error": expected_calibration_error(truth, prob),
        "brier": float(np.mean((prob - truth) ** 2)),
        "confusion": {
            "true_positive": int(tp),
            "false_positive": int(fp),
            "true_negative": int(tn),
            "false_negative": int(fn),
        },
    }
    if hard is not None and hard.any():
        hard = hard.astype(bool)
        metrics["accuracy_hard"] = float((predicted[hard] == labels[hard]).mean())
        metrics["accuracy_clean"] = float((predicted[~hard] == labels[~hard]).mean()) if (~hard).any() else None
        metrics["hard_examples"] = int(hard.sum())
    if both:
        fpr, tpr, thresholds = roc_curve(truth, prob)
        roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})
    else:
        roc = pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(prob, edges[1:-1], right=True), 0, CALIBRATION_BINS - 1)
    rows = [
        {
            "bin": b,
            "predicted": float(prob[which == b].mean()),
            "observed": float(truth[which == b].mean()),
            "count": int((which == b).sum()),
        }
        for b in range(CALIBRATION_BINS)
        if (which == b).any()
    ]
    calibration = pd.DataFrame(rows, columns=["bin", "predicted", "observed", "count"])
    predictions = pd.DataFrame(
        {"actual": [id2label[int(i)] for i in labels], "predicted": [id2label[int(i)] for i in predicted]}
    )
    return metrics, {"roc": roc, "calibration": calibration, "predictions": predictions}


@dataclass
class RewardResult:
    trained: bool
    metrics: dict[str, Any]
    curves: dict[str, pd.DataFrame]
    fit: Fit | None


def trains_reward(params: Params) -> bool:
    enabled = params.reward.train.enabled
    return params.reward.source == "builtin" if enabled is None else enabled


def run_reward(params: Params, base_dir: Path, labelled_path: Path, out_dir: Path) -> RewardResult:
    """Train (or take as it is) the reward model in ``base_dir``; save it to the empty folder ``out_dir``
    (the caller swaps it in when all succeeded); measure it on the held-out labelled rows."""
    cfg = params.reward.train
    frame = load_labelled(labelled_path)
    model, tokenizer = load_or_init(base_dir, "classifier", params.seed)
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    label2id = {name: i for i, name in id2label.items()}
    labels = np.array(encode_labels(frame["label"], label2id, origin=str(labelled_path)))
    toxic_id = label_index(model, params.reward.toxic_label)
    label_index(model, params.reward.reward_label)  # fail now, not in the ppo stage
    texts = frame["text"].astype(str).tolist()
    max_tokens = token_limit(model, cfg.max_tokens)
    train_idx, held_idx = holdout_split(len(texts), cfg.holdout_share, params.seed)
    trained = trains_reward(params)

    def encode(index: np.ndarray) -> list[dict[str, Any]]:
        enc = tokenizer([texts[i] for i in index], truncation=True, max_length=max_tokens)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": int(labels[i])}
            for ids, mask, i in zip(enc["input_ids"], enc["attention_mask"], index, strict=True)
        ]

    held_texts = [texts[i] for i in held_idx]

    def held_accuracy(trained_model: PreTrainedModel) -> dict[str, float]:
        probs = predict_probs(trained_model, tokenizer, held_texts, cfg.batch_size * 2, max_tokens)
        trained_model.train()
        return {"eval_accuracy": float((probs.argmax(axis=1) == labels[held_idx]).mean())}

    record = None
    if trained:
        if len(train_idx) < 10:
            raise SourceError(f"{labelled_path}: {len(train_idx)} labelled rows to train on; need at least 10")
        schedule = Schedule.of(cfg)
        record = fit(
            model,
            encode(train_idx),
            DataCollatorWithPadding(tokenizer),
            schedule,
            params.seed,
            evaluation=encode(held_idx),
            on_epoch=held_accuracy,
            desc="reward model",
        )
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    else:
        shutil.copytree(base_dir, out_dir, dirs_exist_ok=True)
    probs = predict_probs(model, tokenizer, held_texts, cfg.batch_size * 2, max_tokens)
    hard = frame["hard"].to_numpy()[held_idx] if "hard" in frame.columns else None
    metrics, curves = classifier_metrics(labels[held_idx], probs, id2label, toxic_id, hard)
    summary: dict[str, Any] = {
        "trained": trained,
        "train_examples": int(len(train_idx)) if trained else 0,
        "heldout": metrics,
    }
    if record is not None:
        summary["training"] = {
            "epochs": cfg.epochs,
            "steps": record.steps,
            "train_loss": record.last("train_loss"),
            "eval_loss": record.last("eval_loss"),
        }
    summary["parameters"] = int(sum(p.numel() for p in model.parameters()))
    log.info(
        "reward model: held-out accuracy %.4f, ROC-AUC %s on %d texts",
        metrics["accuracy"],
        metrics["roc_auc"],
        metrics["examples"],
    )
    return RewardResult(trained=trained, metrics=summary, curves=curves, fit=record)
