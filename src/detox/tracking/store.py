"""Where MLflow runs go, and whether that place answers or can be written, asked before any work.

By default runs go to an embedded store, ``sqlite:///mlflow.db`` beside ``params.yaml``
(artifacts under ``mlartifacts/``), also for experiments that DVC runs in a scratch copy
(``dvc exp run --temp``, queued runs); ``MLFLOW_TRACKING_URI`` points them at a tracking
server instead (docs/scaling-out.md).

A server that is down fails fast: :func:`check_tracking_server` asks an ``http(s)`` server
one question with a short timeout and no retries, and raises
:class:`~detox.common.errors.TrackingError` (the fix in its message) when it gets no answer;
:func:`check_local_store` does the same for a store that cannot be written, and
:func:`check_artifact_location` for an embedded store copied from another project (``cp -a``),
whose artifacts would still go to the other project's ``mlartifacts/``.

:func:`ui_url` gives the links into the MLflow UI that the stages log and the README shows.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from detox.common.errors import TrackingError, error_chain
from detox.common.io import cannot_create_files, nearest_existing

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PREFLIGHT_TIMEOUT_S = 5.0  # connect and read, one try: a live server answers in milliseconds
ARTIFACTS_DIR = "mlartifacts"  # beside params.yaml: the embedded store's artifacts, one folder per experiment
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# The MLflow UI (3.17) opens an experiment on its GenAI overview (traces) or on its runs after a global
# switch that it keeps in the browser (localStorage "mlflow.workflowType_v1", default "genai") and that
# this URL parameter overrides; it does not read the experiment's mlflow.experimentKind tag, and no
# server or tag setting changes that. So every link the project gives carries the parameter.
UI_WORKFLOW_PARAM, UI_WORKFLOW = "workflowType", "machine_learning"


def project_root() -> Path:
    """The DVC project's root. DVC sets ``DVC_ROOT`` for stage commands, and to the real
    project (not its scratch copy) for ``dvc exp run --temp`` and queued experiments, so
    the embedded store of every experiment is the one beside ``params.yaml``."""
    return Path(os.environ.get("DVC_ROOT") or ".")


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if os.environ.get("DVC_ROOT"):
        return f"sqlite:///{(project_root() / 'mlflow.db').resolve()}"
    return DEFAULT_TRACKING_URI


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _how_to_fix(uri: str) -> str:
    url = urlparse(uri)
    host = url.hostname if url.hostname in ("127.0.0.1", "localhost") else "0.0.0.0"
    port = url.port or (443 if url.scheme == "https" else 80)
    return (
        f"Start the server (e.g. `mlflow server --host {host} --port {port} --backend-store-uri "
        "sqlite:///mlflow-server.db --artifacts-destination ./mlartifacts-server`), correct MLFLOW_TRACKING_URI, "
        "or unset MLFLOW_TRACKING_URI to log to the embedded store (sqlite:///mlflow.db beside params.yaml)."
    )


def check_tracking_server(
    experiment: str = "Default", uri: str | None = None, timeout: float = PREFLIGHT_TIMEOUT_S
) -> None:
    """Raise :class:`TrackingError` within ``timeout`` seconds when an ``http(s)`` tracking URI does not answer.

    One ``GET /api/2.0/mlflow/experiments/get-by-name`` without retries, with the credentials MLflow
    would use (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, ``MLFLOW_TRACKING_TOKEN``). Any other
    store (``sqlite:``, a local path, ``databricks``) is left to MLflow.
    """
    uri = uri or tracking_uri()
    if not is_remote(uri):
        return
    from mlflow.tracking._tracking_service.utils import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/get-by-name",
            "GET",
            max_retries=0,
            backoff_factor=0,
            backoff_jitter=0,
            timeout=timeout,
            raise_on_status=False,
            params={"experiment_name": experiment},
        )
    except Exception as exc:  # requests' and MLflow's exceptions come in many classes; all mean "no answer"
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI): "
            f"{failure_reason(exc)}. {_how_to_fix(uri)}"
        ) from None
    if response.status_code == 200:
        return
    try:
        error_code = response.json().get("error_code")
    except ValueError:
        error_code = None
    if response.status_code == 404 and error_code == "RESOURCE_DOES_NOT_EXIST":
        return  # a new experiment: created by the first run
    if response.status_code in (401, 403):
        raise TrackingError(
            f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) refused this client "
            f"(HTTP {response.status_code}): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, to credentials it accepts, "
            "or unset MLFLOW_TRACKING_URI to log to the embedded store."
        )
    raise TrackingError(
        f"{uri} (MLFLOW_TRACKING_URI) answered HTTP {response.status_code} to an MLflow API "
        f"request ({error_code or 'not an MLflow error'}): is it an MLflow tracking server, and is "
        f"the URI its root? {_how_to_fix(uri)}"
    )


def failure_reason(exc: BaseException) -> str:
    """A short, one-line cause of a failed HTTP request (refused, timed out, unknown host)."""
    text = " ".join(str(e) for e in error_chain(exc))
    for pattern, reason in (
        (r"Connection refused", "connection refused (nothing listens on that port)"),
        (r"Read timed out", "no answer within the timeout"),
        (r"timed out", "the connection timed out"),
        (
            r"Name or service not known|nodename nor servname|Temporary failure in name resolution"
            r"|getaddrinfo failed",
            "the host name does not resolve",
        ),
        (r"No route to host|Network is unreachable", "no route to the host"),
        (
            r"SSL|certificate",
            "TLS handshake failed (MLFLOW_TRACKING_INSECURE_TLS or MLFLOW_TRACKING_SERVER_CERT_PATH may help)",
        ),
    ):
        if re.search(pattern, text):
            return reason
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:200]}"


def disk_full(exc: BaseException) -> str | None:
    """What filled up when ``exc``, or an error it arose from, is a full disk: the file an ``ENOSPC``
    (or ``EDQUOT``) was about, or the embedded store for SQLite's "database or disk is full"; else None."""
    chain = error_chain(exc)
    for error in chain:  # the file is the more precise answer; SQLite's error often wraps it
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(error.filename or "a file")
    if any("database or disk is full" in str(error) for error in chain):
        return str(local_store_path(tracking_uri()) or tracking_uri())
    return None


def is_connection_failure(exc: BaseException) -> bool:
    """True when ``exc`` (an MLflow or requests error) means the tracking server could not be reached."""
    import requests

    return any(
        isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) for e in error_chain(exc)
    )


def ui_url(fragment: str) -> str:
    """A link to ``fragment`` (``experiments/1/runs/<id>``, ``models/<name>/versions/2``) in the MLflow UI:
    on the tracking server, or for an embedded store where ``mlflow ui`` serves it by default; with the
    parameter that opens the UI on runs and models (:data:`UI_WORKFLOW_PARAM`)."""
    uri = tracking_uri()
    host = uri.rstrip("/") if is_remote(uri) else LOCAL_UI
    return f"{host}/#/{fragment}?{UI_WORKFLOW_PARAM}={UI_WORKFLOW}"


def artifact_location(experiment: str) -> str | None:
    """With a local store (sqlite or a folder), artifacts go to mlartifacts/ beside params.yaml (the DVC
    project's root, also for `dvc exp run --temp`); a tracking server decides its own.

    Decided from the URI, not from whether ``MLFLOW_TRACKING_URI`` is set: ``mlflow.set_tracking_uri``
    sets that variable, so after the first tracker it is always set.
    """
    if urlparse(tracking_uri()).scheme in ("http", "https", "databricks"):
        return None
    return (project_root() / ARTIFACTS_DIR / experiment).resolve().as_uri()


def foreign_artifact_root(location: str, experiment: str) -> Path | None:
    """The project an experiment's artifact location belongs to, when it is another one than this.

    Only a location of the shape this project creates (``file://<project>/mlartifacts/<experiment>``)
    is read so: an experiment given another artifact location on purpose is left alone.
    """
    url = urlparse(location)
    if url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    if path.name != experiment or path.parent.name != ARTIFACTS_DIR:
        return None
    root = path.parent.parent
    return None if root == project_root().resolve() else root


def check_artifact_location(experiment: str) -> None:
    """Raise :class:`TrackingError` when the embedded store's experiment keeps its artifacts in another
    project's ``mlartifacts/``: the project was copied (``cp -a``) or moved with its ``mlflow.db``, which
    records absolute locations, so its runs would write into, and its models load from, the other one."""
    uri = tracking_uri()
    path = local_store_path(uri)
    if urlparse(uri).scheme != "sqlite" or path is None or not path.is_file():
        return
    import mlflow

    found = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    other = foreign_artifact_root(found.artifact_location, experiment) if found else None
    if other is not None:
        raise TrackingError(
            f"{path}: the MLflow experiment {experiment!r} keeps its artifacts in {other / ARTIFACTS_DIR}, not in "
            f"this project's {ARTIFACTS_DIR}/ (the project was copied or moved with its store): run "
            "`python -m detox.tracking.relocate` here to point the store at this project's copy, or move "
            f"mlflow.db and {ARTIFACTS_DIR}/ aside to start a new store"
        )


def preflight(experiment: str = "Default") -> None:
    """Before any work: a tracking server answers, or the local store and its artifact folder can be written
    and belong to this project."""
    check_tracking_server(experiment)
    check_local_store()
    check_artifact_location(experiment)


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI writes to (``sqlite:///x.db``, ``file:///x``, a path)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else parsed.path
        return Path(path) if path and path != ":memory:" else None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def _probe_writable(path: Path, is_file: bool) -> str | None:
    """None when ``path`` (a file, or a folder to create files in) can be written; else why not."""
    import sqlite3

    if is_file and path.is_dir():
        return "it is a folder, not a database file"
    if is_file and path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5) as conn:
                conn.execute("BEGIN IMMEDIATE")  # takes the write lock; refused on a read-only file
                conn.rollback()
        except sqlite3.Error as exc:
            return f"sqlite: {exc}"
        if not os.access(path, os.W_OK):
            return "no write permission"
        return None
    folder = nearest_existing(path.parent if is_file else path)
    reason = cannot_create_files(folder)
    return f"cannot create files in {folder}: {reason}" if reason else None


def check_local_store(uri: str | None = None) -> None:
    """Raise :class:`TrackingError` (one line) when a local store or its artifact folder cannot be written.

    Runs before any work, so a read-only ``mlflow.db`` stops a stage at once instead of after training."""
    uri = uri or tracking_uri()
    path = local_store_path(uri)
    if path is None:
        return
    checks = [(path, urlparse(uri).scheme == "sqlite")]
    if urlparse(uri).scheme == "sqlite":
        checks.append((project_root() / ARTIFACTS_DIR, False))
    for target, is_file in checks:
        reason = _probe_writable(target.resolve() if not target.is_absolute() else target, is_file)
        if reason:
            raise TrackingError(
                f"the MLflow store {target} cannot be written ({reason}); make it writable "
                "(e.g. chmod u+w), or set MLFLOW_TRACKING_URI to a store this user can write"
            )
