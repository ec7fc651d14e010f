"""Point a copied project's embedded MLflow store at the copy: ``python -m detox.tracking.relocate``.

``mlflow.db`` records absolute artifact locations (the experiments', the runs', the logged models' and
the registered versions'), so after ``cp -a`` of a project its copy would write its runs' artifacts
into the original's ``mlartifacts/`` and load its registered models from there. MLflow has no API
that changes them; this rewrites those four columns, from the project the store names
(:func:`detox.tracking.store.foreign_artifact_root`) to the one it runs in, in one transaction.
Run it in the copy's root, with the copy's ``mlartifacts/`` in place; nothing else is changed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from detox.common.errors import TrackingError
from detox.tracking.store import ARTIFACTS_DIR, foreign_artifact_root, local_store_path, project_root, tracking_uri

# (table, column) of every location mlflow.db records; model_versions.source is a models:/ URI.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


def foreign_roots(db: Path) -> set[Path]:
    """The other projects whose ``mlartifacts/`` the experiments of the store ``db`` point to."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT name, artifact_location FROM experiments").fetchall()
    return {root for name, location in rows if location and (root := foreign_artifact_root(location, name))}


def relocate(db: Path, old: Path, new: Path) -> int:
    """Rewrite every location under ``old`` (as a ``file://`` URI or a plain path) to the same place under
    ``new``, in one transaction; the number of values rewritten."""
    prefixes = [(f"{old.as_uri()}/", f"{new.as_uri()}/"), (f"{old}/", f"{new}/")]
    changed = 0
    with sqlite3.connect(db) as conn:  # commits on success, rolls back on any error
        for table, column in LOCATION_COLUMNS:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in columns:  # a store from an MLflow without that table
                continue
            for before, after in prefixes:
                changed += conn.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, len(before), before),
                ).rowcount
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    uri = tracking_uri()
    db = local_store_path(uri)
    try:
        if not uri.startswith("sqlite:") or db is None or not db.is_file():
            raise TrackingError(
                f"{uri}: not an embedded store with a database file here; run this in the root of "
                "the copied project (beside params.yaml and mlflow.db), with MLFLOW_TRACKING_URI unset"
            )
        new = project_root().resolve()
        if not (new / ARTIFACTS_DIR).is_dir():
            raise TrackingError(
                f"{new / ARTIFACTS_DIR}: not found; copy the original's {ARTIFACTS_DIR}/ beside "
                "mlflow.db first (the store's artifacts are there)"
            )
        roots = foreign_roots(db)
        if not roots:
            print(f"{db}: already points at {new / ARTIFACTS_DIR}; nothing to do")
            return 0
        for old in sorted(roots):
            print(f"{db}: {relocate(db, old, new)} locations moved from {old} to {new}")
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
