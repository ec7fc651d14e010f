"""The fetch stage's logic: data, labelled reward data and both model folders from builtin, hub or
local sources. It trains nothing: the builtin models are written as configurations and tokenizers.

Everything is built in scratch folders and swapped in only when all of it
succeeded, so a failed fetch leaves the previous outputs as they were.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from detox.common.errors import SourceError
from detox.common.io import atomic_dir, sha256_file, sha256_tree, write_json
from detox.common.params import HubRef, LocalRef, Params, PolicyParams, RewardParams
from detox.data.corpus import generate_corpus
from detox.data.hub import download_model, load_dataset_splits
from detox.data.reading import COLUMNS, SPLITS, check_dialogues, read_local_splits, read_table
from detox.data.sentences import labelled_sentences
from detox.models.builtin import ID2LABEL, write_policy_base, write_reward_base
from detox.models.check import check_model_folder

log = logging.getLogger(__name__)

LABELLED_FILE = "labelled.parquet"
MANIFEST = "manifest.json"


def fetch_data(params: Params, out_dir: Path) -> dict[str, Any]:
    cfg = params.data
    record: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "builtin":
        splits = generate_corpus(cfg.builtin, params.seed)
        record.update(seed=params.seed, **cfg.builtin.model_dump())
    elif cfg.source == "hub":
        splits, commit = load_dataset_splits(cfg.hub.name, cfg.hub.revision, SPLITS)
        splits = {
            split: check_dialogues(frame, f"data.hub {cfg.hub.name}@{cfg.hub.revision}, split {split}")
            for split, frame in splits.items()
        }
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
    commit = download_model(ref.name, ref.revision, out_dir, section)
    return {"name": ref.name, "revision": ref.revision, "commit": commit}


def fetch_policy(params: Params, train: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    return _fetch_model(
        "policy",
        params.policy,
        "seq2seq",
        out_dir,
        lambda out: write_policy_base(train, params.prompt.template, params.policy.builtin, out),
    )


def fetch_reward(params: Params, labelled: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    cfg = params.reward
    texts = labelled["text"].dropna().astype(str).tolist() if cfg.source == "builtin" else []
    return _fetch_model(
        "reward",
        cfg,
        "classifier",
        out_dir,
        lambda out: write_reward_base(texts, cfg.builtin, out),
        labels={"reward.reward_label": cfg.reward_label, "reward.toxic_label": cfg.toxic_label},
    )


def _fetch_model(
    section: str,
    cfg: PolicyParams | RewardParams,
    kind: str,
    out_dir: Path,
    write_builtin: Callable[[Path], dict[str, Any]],
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``section`` model folder (``kind``: seq2seq or classifier) from its source into ``out_dir``."""
    record: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "builtin":
        record.update(write_builtin(out_dir), weights=False)
    elif cfg.source == "hub":
        record.update(_hub_model(cfg.hub, section, out_dir))
    else:
        _copy_model(cfg.local, section, out_dir)
        record["path"] = str(cfg.local.path)
    # Before anything is replaced: a folder that would load only half fails here, naming the file.
    check_model_folder(
        out_dir,
        kind,
        f"{section}.{cfg.source}",
        weights=cfg.source != "builtin",
        shown=_origin(cfg.source, cfg.hub, cfg.local),
        labels=labels,
    )
    return record


def _origin(source: str, hub: HubRef, local: LocalRef) -> str | None:
    """How a model folder's source is named in errors: the user's path, or the Hub id and revision."""
    if source == "local":
        return str(local.path)
    if source == "hub":
        return f"{hub.name}@{hub.revision}"
    return None


def fetch_labelled(params: Params, test: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """The reward stage's labelled ``text,label`` data -> ``out_dir/labelled.parquet`` (labels as text).

    The built-in generator's sentences that equal a test summary are dropped, so the reward model
    never trains on what the policy is evaluated against; other sources are checked for it by validate.
    """
    cfg = params.reward.data
    record: dict[str, Any] = {"source": cfg.source}
    if cfg.source == "builtin":
        frame = labelled_sentences(cfg.builtin.num_sentences, params.seed, hard_share=cfg.builtin.hard_share)
        frame["label"] = frame["label"].map(ID2LABEL)
        overlap = frame["text"].isin(set(test["summary"].astype(str)))
        frame = frame[~overlap].reset_index(drop=True)
        record.update(seed=params.seed, **cfg.builtin.model_dump(), dropped_test_overlap=int(overlap.sum()))
    elif cfg.source == "hub":
        name = str(cfg.hub.name)
        splits, commit = load_dataset_splits(name, cfg.hub.revision, (cfg.hub.split,), what="reward.data.hub")
        frame = _text_label(
            splits[cfg.hub.split],
            cfg.hub.text_column,
            cfg.hub.label_column,
            f"reward.data.hub {name}@{cfg.hub.revision}",
        )
        record.update(name=name, revision=cfg.hub.revision, commit=commit, split=cfg.hub.split)
    else:
        path = _local_path(cfg.local, "reward.data")
        if not path.is_file():
            raise SourceError(
                f"reward.data.local.path: {path} is not a file; give a csv, parquet or jsonl "
                "file with columns text,label"
            )
        frame = _text_label(read_table(path), "text", "label", str(path))
        record["path"] = str(path)
    frame["label"] = frame["label"].map(_label_text)
    path = out_dir / LABELLED_FILE
    frame.to_parquet(path, index=False)
    record.update(rows=len(frame), sha256=sha256_file(path))
    return record


def _text_label(frame: pd.DataFrame, text: str, label: str, origin: str) -> pd.DataFrame:
    missing = [column for column in (text, label) if column not in frame.columns]
    if missing:
        raise SourceError(
            f"{origin}: no column(s) {missing}; it has {list(frame.columns)}. Labelled data needs "
            "a text and a label column"
        )
    return frame[[text, label]].rename(columns={text: "text", label: "label"}).reset_index(drop=True)


def _label_text(value: Any) -> str | None:
    """A label as text: names stay, integer ids (also 1.0 from a csv) become "1"; missing stays missing."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return str(int(value))
    return str(value)


def run_fetch(params: Params, raw_dir: Path, labelled_dir: Path, base_dir: Path) -> dict[str, Any]:
    """Fetch everything; write the splits to ``raw_dir``, the labelled data to ``labelled_dir`` and both
    model folders to ``base_dir/{policy,reward}``; return the manifest (data, labelled, policy, reward).

    Each output folder holds the ``manifest.json`` of what it holds, so a change to the labelled data
    leaves ``data/raw`` and ``models/base/policy`` byte-identical and DVC does not retrain the policy.
    Nothing is trained here: the sft and reward stages train the models.
    """
    with atomic_dir(raw_dir) as raw, atomic_dir(labelled_dir) as labelled, atomic_dir(base_dir) as base:
        manifest: dict[str, Any] = {"data": fetch_data(params, raw)}
        manifest["labelled"] = fetch_labelled(params, pd.read_parquet(raw / "test.parquet"), labelled)
        (base / "policy").mkdir()
        (base / "reward").mkdir()
        manifest["policy"] = fetch_policy(params, pd.read_parquet(raw / "train.parquet"), base / "policy")
        manifest["reward"] = fetch_reward(params, pd.read_parquet(labelled / LABELLED_FILE), base / "reward")
        manifest["policy"]["sha256"] = sha256_tree(base / "policy")
        manifest["reward"]["sha256"] = sha256_tree(base / "reward")
        write_json(raw / MANIFEST, {"data": manifest["data"]})
        write_json(labelled / MANIFEST, {"labelled": manifest["labelled"]})
        write_json(base / MANIFEST, {"policy": manifest["policy"], "reward": manifest["reward"]})
    return manifest
