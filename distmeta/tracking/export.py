"""Register a finished run in the MLflow Model Registry, and load a registered model back.

``export_model`` logs the run's model (see :mod:`~distmeta.tracking.flavor`) into the MLflow
run that tracked it (``tracking.json``), or into a new run of the configured experiment, then
registers it as the next version of a named model and points an alias at that version.
``load_registered_run`` turns ``models:/NAME@alias`` back into a
:class:`~distmeta.runs.Run`, so that evaluation treats it like a run folder.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.entities import Run as MlflowRun
from mlflow.models import Model

from distmeta.config import config_to_dict
from distmeta.engine.rundir import CONFIG_FILE, RunDir
from distmeta.errors import RunError, TrackingError
from distmeta.runs import Run, load_run
from distmeta.tracking import flavor
from distmeta.tracking.link import read_link
from distmeta.tracking.provenance import flatten_config, provenance_tags
from distmeta.tracking.quiet import quiet_mlflow
from distmeta.tracking.store import (
    error_reason,
    experiment_id,
    log_params,
    open_store,
    resolve_tracking_uri,
    using_tracking_uri,
)

__all__ = ["MODEL_NAME", "ExportResult", "export_model", "load_registered_run"]

MODEL_NAME = "model"
"""Name of the logged model inside its MLflow run."""


@dataclass(frozen=True)
class ExportResult:
    """Where an exported model landed."""

    name: str
    version: int
    alias: str | None
    tracking_uri: str
    run_id: str
    """The MLflow run the model was logged to."""
    model_id: str
    """The logged model (``models:/<model_id>``)."""

    @property
    def model_uri(self) -> str:
        """``models:/NAME@alias``, or ``models:/NAME/version`` without an alias."""
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


def _check_alias(alias: str) -> None:
    """Refuse an alias the registry would refuse, before anything is logged."""
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
    )

    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except mlflow.MlflowException as error:
        raise TrackingError(
            f"the model registry refuses the alias {alias!r}: {error.message}"
        ) from None


def _registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model ``name`` unless it exists."""
    try:
        client.create_registered_model(name)
    except mlflow.MlflowException as error:
        if error.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            return
        raise TrackingError(
            f"the model registry at {client.tracking_uri} refuses the name {name!r}: "
            f"{error_reason(error)}"
        ) from None


def _mlflow_run(client: MlflowClient, run: Run, folder: RunDir, uri: str) -> MlflowRun:
    """The MLflow run that tracked ``folder`` in this store, else a new run of the configured
    experiment recording the run's config."""
    link = read_link(folder)
    if link is not None and link.tracking_uri == uri:
        try:
            tracked = client.get_run(link.run_id)
        except mlflow.MlflowException:
            tracked = None  # deleted, or another store under the same URI
        if tracked is not None and tracked.info.lifecycle_stage == "active":
            return tracked
    experiment = experiment_id(client, run.config.tracking.experiment)
    name = run.config.tracking.run_name or Path(folder.uri.rstrip("/")).name
    created = client.create_run(
        experiment,
        run_name=f"{name} (export)",
        tags={**provenance_tags(), "distmeta.run_dir": folder.uri},
    )
    run_id = created.info.run_id
    log_params(client, run_id, flatten_config(config_to_dict(run.config)))
    client.set_terminated(run_id, "FINISHED")
    return created


def _export_uri(tracking_uri: str | None, folder: RunDir, run: Run) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the store that tracked the run,
    else the run's ``tracking.uri`` (default: the sqlite store in the working directory)."""
    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(tracking_uri)
    link = read_link(folder)
    return link.tracking_uri if link is not None else resolve_tracking_uri(run.config.tracking.uri)


def export_model(
    run_dir: str | Path,
    name: str,
    alias: str | None = None,
    tracking_uri: str | None = None,
) -> ExportResult:
    """Log the run in ``run_dir`` as an MLflow model and register it as a new version of
    ``name``, with ``alias`` pointing at that version.

    Args:
        run_dir: A finished run folder (holding ``final.pt``).
        name: Registered model name.
        alias: Alias to set on the new version (e.g. ``champion``); moved from any older one.
        tracking_uri: Store and registry; default ``MLFLOW_TRACKING_URI``, else the store that
            tracked the run, else the run's ``tracking.uri``.

    Raises:
        RunError: ``run_dir`` is missing or the run has not finished.
        TrackingError: The store cannot be used, or the registry refuses ``name`` or ``alias``.
    """
    folder = RunDir(run_dir)
    if not folder.exists():
        raise RunError(f"run directory {folder.uri} does not exist")
    run = load_run(folder.uri)
    if run.config.algorithm.name == "l2l":
        raise RunError(
            f"{folder.uri} meta-trained a learned optimizer (algorithm.name: l2l), not a model "
            "that adapts: use it as distmeta.optim.LearnedOptimizer(params, run=...) with this "
            "folder, or runs:/<MLflow run id> of its tracked run"
        )
    if alias is not None:
        _check_alias(alias)
    uri = _export_uri(tracking_uri, folder, run)
    client = open_store(uri)
    with quiet_mlflow():
        _registered_model(client, name)
        try:
            tracked = _mlflow_run(client, run, folder, uri)
            run_id = tracked.info.run_id
            # Created here, not by Model.log, so that the model lands in the run's experiment
            # rather than in whatever experiment MLflow's module-level state points at.
            logged = client.create_logged_model(
                tracked.info.experiment_id, name=MODEL_NAME, source_run_id=run_id
            )
            # MLflow's module-level state must name the store too: Model.log uses it, and
            # so does a local registry when it looks up the logged model of a new version.
            with using_tracking_uri(uri):
                info = Model.log(
                    artifact_path=None,
                    flavor=flavor,
                    run_id=run_id,
                    model_id=logged.model_id,
                    run=run,
                    run_dir=folder,
                )
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
                version = client.create_model_version(
                    name, source=info.model_uri, run_id=run_id, model_id=logged.model_id
                )
            if alias is not None:
                client.set_registered_model_alias(name, alias, version.version)
        except (TrackingError, RunError):
            raise
        except Exception as error:
            raise TrackingError(
                f"cannot register {folder.uri} as {name!r} in {uri}: {error_reason(error)}"
            ) from None
    return ExportResult(name, int(version.version), alias, uri, run_id, logged.model_id)


def load_registered_run(
    model_uri: str, overrides: list[str] | None = None, tracking_uri: str | None = None
) -> Run:
    """The run behind a model exported by distmeta (``models:/NAME@alias``,
    ``models:/NAME/3``), loaded like a run folder (:func:`~distmeta.runs.load_run`).

    Args:
        model_uri: The registered (or logged) model.
        overrides: ``key=value`` changes to its config, as for ``load_run``.
        tracking_uri: Store and registry; default ``MLFLOW_TRACKING_URI``, else the sqlite
            store in the working directory.

    Raises:
        TrackingError: The store cannot be used, the model does not exist, or it was not
            exported by distmeta.
    """
    uri = resolve_tracking_uri(tracking_uri)
    open_store(uri)
    with tempfile.TemporaryDirectory(prefix="distmeta-model-") as scratch:
        with quiet_mlflow(), using_tracking_uri(uri):
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=model_uri, dst_path=scratch, tracking_uri=uri
                )
            except Exception as error:
                raise TrackingError(
                    f"cannot load {model_uri} from {uri}: {error_reason(error)}"
                ) from None
        folder = Path(local) / "artifacts"
        if not (folder / CONFIG_FILE).is_file():
            raise TrackingError(f"{model_uri} was not exported by distmeta (no {CONFIG_FILE})")
        run = load_run(folder, overrides)
    return dataclasses.replace(run, run_dir=model_uri)
