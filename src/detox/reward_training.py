"""Train or fine-tune a sequence-classification reward model on labelled text.

One code path for both uses the original project lists: the built-in world trains
its small RoBERTa here, and a user fine-tunes any ``AutoModelForSequenceClassification``
(Meta's hate-speech RoBERTa included) on a ``text,label`` file through
``reward.finetune.path``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from detox.errors import SourceError
from detox.params import ClassifierTraining

log = logging.getLogger(__name__)


def read_labelled_file(path: str | Path) -> pd.DataFrame:
    """Read a ``text,label`` file (csv, parquet, jsonl/json)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"reward.finetune.path: {path} is not a file; give a csv, parquet or jsonl with text,label")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True),
               ".json": pd.read_json}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise SourceError(f"reward.finetune.path: {path} has suffix {path.suffix!r}; use one of {sorted(readers)}")
    frame = reader(path)
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise SourceError(f"{path}: missing column(s) {sorted(missing)}; the file needs columns text,label")
    return frame[["text", "label"]]


def encode_labels(labels: pd.Series, label2id: dict[str, int], origin: str) -> list[int]:
    """Map label names (e.g. ``hate``) or integer ids to the model's ids, failing on unknown ones."""
    ids = set(label2id.values())
    out: list[int] = []
    for row, value in enumerate(labels):
        if isinstance(value, str) and value in label2id:
            out.append(label2id[value])
        elif not isinstance(value, str) and int(value) == value and int(value) in ids:
            out.append(int(value))
        else:
            raise SourceError(
                f"{origin}: row {row} has label {value!r}; allowed: {sorted(label2id)} or ids {sorted(ids)}"
            )
    return out


def train_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    labels: list[int],
    cfg: ClassifierTraining,
    seed: int,
    holdout_share: float = 0.1,
    desc: str = "reward model",
) -> dict[str, float]:
    """Fine-tune ``model`` in place; return loss and accuracy on a held-out share of the data."""
    if len(texts) != len(labels) or len(texts) < 10:
        raise SourceError(f"{desc}: need at least 10 labelled texts with one label each (got {len(texts)})")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=generator).tolist()
    n_hold = max(1, int(len(texts) * holdout_share))
    held, train = order[:n_hold], order[n_hold:]

    def batches(index: list[int], shuffle: bool) -> list[list[int]]:
        if shuffle:
            index = [index[i] for i in torch.randperm(len(index), generator=generator).tolist()]
        return [index[i : i + cfg.batch_size] for i in range(0, len(index), cfg.batch_size)]

    def encode(batch: list[int]) -> dict[str, torch.Tensor]:
        enc = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                        max_length=cfg.max_tokens, return_tensors="pt")
        enc["labels"] = torch.tensor([labels[i] for i in batch])
        return enc

    torch.manual_seed(seed)
    random.seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    total = cfg.epochs * len(batches(train, False))
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 20), total)
    model.train()
    with tqdm(total=total, desc=f"train {desc}", unit="step") as bar:
        for _ in range(cfg.epochs):
            for batch in batches(train, True):
                loss = model(**encode(batch)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for batch in batches(held, False):
            out = model(**encode(batch))
            loss_sum += out.loss.item() * len(batch)
            correct += (out.logits.argmax(-1) == torch.tensor([labels[i] for i in batch])).sum().item()
    metrics = {"heldout_accuracy": correct / len(held), "heldout_loss": loss_sum / len(held),
               "train_examples": len(train), "heldout_examples": len(held)}
    log.info("%s: held-out accuracy %.4f on %d texts", desc, metrics["heldout_accuracy"], len(held))
    return metrics
