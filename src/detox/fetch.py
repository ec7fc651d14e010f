"""The fetch stage's logic: data and both models from builtin, hub or local sources.

Everything is built in scratch folders and swapped in only when all of it
succeeded, so a failed fetch leaves the previous outputs as they were.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from detox.builtin.corpus import generate_corpus
from detox.builtin.models import build_policy, build_reward_model
from detox.data import COLUMNS, SPLITS, read_local_splits
from detox.errors import SourceError
from detox.hub import download_model, load_dataset_splits
from detox.io import atomic_dir, sha256_file, sha256_tree, write_json
from detox.params import HubRef, LocalRef, Params
from detox.reward_training import encode_labels, read_labelled_file, train_classifier

log = logging.getLogger(__name__)


def fetch_data(params: Params, out_dir: Path) -> dict[str, Any]:
    cfg = params.data
    record: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "builtin":
        splits = generate_corpus(cfg.builtin, params.seed)
        record.update(seed=params.seed, **cfg.builtin.model_dump())
    elif cfg.source == "hub":
        splits, commit = load_dataset_splits(cfg.hub.name, cfg.hub.revision, SPLITS)
        record.update(name=cfg.hub.name, revision=cfg.hub.revision, commit=commit)
    else:
        splits = read_local_splits(_local_path(cfg.local, "data"))
        record.update(path=str(cfg.local.path))
    record["splits"] = {}
    for split in SPLITS:
        frame = splits[split]
        # Keep DialogSum's columns first and any extra ones (e.g. the builtin `heated`) after them.
        frame = frame[[c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]]
        path = out_dir / f"{split}.parquet"
        frame.to_parquet(path, index=False)
        record["splits"][split] = {"rows": len(frame), "sha256": sha256_file(path)}
    return record


def _local_path(ref: LocalRef, section: str) -> Path:
    if not ref.path:
        raise SourceError(f"{section}.source is 'local' but {section}.local.path is empty; set it to a path on disk")
    return Path(ref.path)


def _copy_model(ref: LocalRef, section: str, out_dir: Path) -> None:
    src = _local_path(ref, section)
    if not (src / "config.json").is_file():
        raise SourceError(f"{section}.local.path: {src} is not a Hugging Face model folder (no config.json)")
    shutil.copytree(src, out_dir, dirs_exist_ok=True)


def _hub_model(ref: HubRef, section: str, out_dir: Path) -> dict[str, Any]:
    return {"name": ref.name, "revision": ref.revision, "commit": download_model(ref.name, ref.revision, out_dir, section)}


def fetch_policy(params: Params, train: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    cfg = params.policy
    record: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "builtin":
        record["training"] = build_policy(train, params.prompt.template, cfg.builtin, params.seed, out_dir)
    elif cfg.source == "hub":
        record.update(_hub_model(cfg.hub, "policy", out_dir))
    else:
        _copy_model(cfg.local, "policy", out_dir)
        record["path"] = str(cfg.local.path)
    return record


def fetch_reward(params: Params, out_dir: Path) -> dict[str, Any]:
    cfg = params.reward
    record: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "builtin":
        record["training"] = build_reward_model(cfg.builtin, params.seed, out_dir)
    elif cfg.source == "hub":
        record.update(_hub_model(cfg.hub, "reward", out_dir))
    else:
        _copy_model(cfg.local, "reward", out_dir)
        record["path"] = str(cfg.local.path)
    if cfg.finetune.path:
        record["finetune"] = finetune_reward(out_dir, cfg.finetune.path, params)
    return record


def finetune_reward(model_dir: Path, labelled: str, params: Params) -> dict[str, Any]:
    """Fine-tune the reward model in ``model_dir`` on a ``text,label`` file, in place."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    frame = read_labelled_file(labelled)
    labels = encode_labels(frame["label"], dict(model.config.label2id), origin=labelled)
    stats = train_classifier(model, tokenizer, frame["text"].astype(str).tolist(), labels,
                             params.reward.finetune.training, params.seed, desc="reward fine-tune")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return {"path": labelled, "sha256": sha256_file(labelled), **stats}


def run_fetch(params: Params, raw_dir: Path, policy_dir: Path, reward_dir: Path) -> dict[str, Any]:
    """Fetch everything; write the splits, both models and ``manifest.json``; return the manifest."""
    with atomic_dir(raw_dir) as raw, atomic_dir(policy_dir) as policy, atomic_dir(reward_dir) as reward:
        manifest: dict[str, Any] = {"data": fetch_data(params, raw)}
        manifest["reward"] = fetch_reward(params, reward)
        manifest["policy"] = fetch_policy(params, pd.read_parquet(raw / "train.parquet"), policy)
        manifest["policy"]["sha256"] = sha256_tree(policy)
        manifest["reward"]["sha256"] = sha256_tree(reward)
        write_json(raw / "manifest.json", manifest)
    return manifest
