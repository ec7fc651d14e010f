"""Small file helpers that never leave a half-written output behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary file in ``path``'s folder to write; renamed onto ``path`` when the block succeeds, deleted
    when it fails (a full disk, an interrupt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a scratch folder beside ``path``; on success it replaces ``path`` whole.

    On an exception the scratch folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(scratch, 0o777 & ~_umask())
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    # The swap is two renames: an interrupt between them would leave no output at all, so
    # SIGINT and SIGTERM wait until both are done.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(scratch, path)
        else:
            old = None
            os.replace(scratch, path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """One hash for a folder: its files' relative paths and contents, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def nearest_existing(path: str | Path) -> Path:
    """``path``, or its nearest ancestor that exists: where a new file or folder at ``path`` is created."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def cannot_create_files(folder: str | Path) -> str | None:
    """None when a file can be created in ``folder`` (tried, not guessed from its mode: ACLs, read-only
    mounts and immutable folders all show); else the reason, e.g. ``Permission denied``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".detox-write-check-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(probe)
    return None
