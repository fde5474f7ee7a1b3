"""Where runs are recorded: the tracking URI, a checked connection to it, the experiment.

The embedded default is a sqlite database ``mlflow.db`` in the working directory with the
artifacts in ``mlartifacts/`` beside it (absolute paths, so a run started from another folder
finds the same store). ``tracking.uri`` (or ``MLFLOW_TRACKING_URI``) may name any MLflow
store instead: a server (``http://host:5000``), another database, Databricks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param

from distmeta.errors import TrackingError
from distmeta.tracking.quiet import quiet_mlflow, temporary_environment

__all__ = [
    "ARTIFACTS_FOLDER",
    "DEFAULT_DATABASE",
    "artifact_location",
    "error_reason",
    "experiment_id",
    "log_params",
    "open_store",
    "resolve_tracking_uri",
    "using_tracking_uri",
]

DEFAULT_DATABASE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
_SQLITE = "sqlite:///"
_PARAMS_PER_REQUEST = 100  # MLflow refuses more in one log_batch

# The reachability check must answer in seconds, not after MLflow's minutes of retries, yet
# survive a kept-alive connection the server drops as the request arrives: two quick retries.
_CHECK_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded
    sqlite store in the working directory; relative sqlite and file paths become absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{_SQLITE}{DEFAULT_DATABASE}"
    if uri.startswith(_SQLITE):
        path = unquote(uri[len(_SQLITE) :])
        return f"{_SQLITE}{Path(path).expanduser().resolve()}"
    if "://" not in uri:  # a bare path: MLflow's (retired) file store, made absolute
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(unquote(uri[len(_SQLITE) :])) if uri.startswith(_SQLITE) else None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a sqlite store keeps its artifacts: ``mlartifacts/`` beside
    the database file. ``None`` lets other stores (servers) decide."""
    database = _sqlite_path(uri)
    return None if database is None else (database.parent / ARTIFACTS_FOLDER).as_uri()


def error_reason(error: BaseException) -> str:
    """The first meaningful line of an error from MLflow, for a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def open_store(uri: str) -> MlflowClient:
    """A client of the tracking store at ``uri``, once the store has answered.

    Raises:
        TrackingError: The server cannot be reached or refuses, or the database cannot be
            opened or created (one line naming the store and the cause).
    """
    database = _sqlite_path(uri)
    if database is not None and not database.parent.is_dir():
        raise TrackingError(
            f"MLflow store {uri}: the folder {database.parent} does not exist or is not a folder"
        )
    with quiet_mlflow(), temporary_environment(_CHECK_ENV):
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
        except Exception as error:
            raise TrackingError(
                f"MLflow store {uri} cannot be used: {error_reason(error)}"
            ) from None
    return client


def _check_local_artifacts(location: str, uri: str) -> None:
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return
    folder = Path(unquote(parsed.path))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(
            f"MLflow store {uri}: cannot create the artifact folder {folder}: "
            f"{error.strerror or error}"
        ) from None
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"MLflow store {uri}: the artifact folder {folder} is not writable")


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, created (with local artifacts for sqlite stores)
    when missing; a deleted experiment of that name is restored.

    Raises:
        TrackingError: The store refuses to create it, or its local artifact folder cannot
            be written.
    """
    uri = client.tracking_uri
    with quiet_mlflow():
        try:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = artifact_location(uri)
                if location is not None:
                    _check_local_artifacts(location, uri)
                return client.create_experiment(name, artifact_location=location)
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
        except TrackingError:
            raise
        except Exception as error:
            raise TrackingError(
                f"MLflow store {uri}: cannot open experiment {name!r}: {error_reason(error)}"
            ) from None
    _check_local_artifacts(experiment.artifact_location, uri)
    return experiment.experiment_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` to the run in as few requests as MLflow accepts."""
    items = [Param(key, value) for key, value in params.items()]
    for first in range(0, len(items), _PARAMS_PER_REQUEST):
        client.log_batch(run_id, params=items[first : first + _PARAMS_PER_REQUEST])


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's module-level API (``mlflow.pyfunc``, model logging) at ``uri`` for the
    block, then restore the caller's setting, ``MLFLOW_TRACKING_URI`` included."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_uri = tracking_utils._tracking_uri  # None unless the caller called set_tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
