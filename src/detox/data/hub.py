"""Everything that talks to the Hugging Face Hub: datasets and model snapshots.

With no network, every call fails within seconds with :class:`HubUnreachableError`
instead of hanging in retries: a short TCP check of the Hub endpoint runs first.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from detox.common.errors import HubUnreachableError, SourceError

CONNECT_TIMEOUT_S = 5.0

HOW_TO_AVOID = (
    "To run without the Hub, set data.source / policy.source / reward.source / reward.data.source to "
    "'builtin' (the offline world, the default) or to 'local' with data.local.path / policy.local.path / "
    "reward.local.path / reward.data.local.path pointing at files or model folders on disk."
)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def ensure_reachable(what: str) -> None:
    """Fail fast, with a message that says what to do, when the Hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise HubUnreachableError(f"cannot fetch {what}: HF_HUB_OFFLINE is set. {HOW_TO_AVOID}")
    url = urlparse(endpoint())
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise HubUnreachableError(
            f"cannot fetch {what}: the Hugging Face Hub at {endpoint()} is unreachable from this machine "
            f"({exc.__class__.__name__}: {exc}). {HOW_TO_AVOID}"
        ) from None


def load_dataset_splits(
    name: str, revision: str, splits: tuple[str, ...], what: str = "data.hub"
) -> tuple[dict[str, pd.DataFrame], str]:
    """Download a dataset's splits with ``datasets``; return frames and the resolved commit."""
    ensure_reachable(f"dataset {name}@{revision}")
    import datasets
    from huggingface_hub import HfApi

    try:
        commit = HfApi(endpoint=endpoint()).dataset_info(name, revision=revision).sha or revision
        loaded = datasets.load_dataset(name, revision=commit)
    except Exception as exc:  # network and Hub errors come in many classes; all are a fetch failure here
        raise SourceError(f"{what}: could not load dataset {name}@{revision}: {exc}") from exc
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise SourceError(f"{what}: dataset {name}@{revision} has no split(s) {missing}; it has {list(loaded)}")
    return {s: loaded[s].to_pandas() for s in splits}, commit


def download_model(repo_id: str, revision: str, out_dir: Path, what: str) -> str:
    """Snapshot a model repository into ``out_dir``; return the resolved commit."""
    ensure_reachable(f"{what} {repo_id}@{revision}")
    from huggingface_hub import HfApi, snapshot_download

    try:
        commit = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision).sha or revision
        snapshot_download(
            repo_id,
            revision=commit,
            local_dir=out_dir,
            ignore_patterns=["*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "*.onnx", "rust_model*"],
        )
    except Exception as exc:
        raise SourceError(f"{what}.hub: could not download {repo_id}@{revision}: {exc}") from exc
    return commit
