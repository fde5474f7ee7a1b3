"""The MLflow run of a whole search: the parent of its trials' runs.

It records the search config (params, ``config.yaml``, the source file), and at the end the
trials table (``trials.csv``), the best config (``best.yaml``) and the best metric. Trials'
runs name it in their ``mlflow.parentRunId`` tag, which the MLflow UI nests them by.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.errors import TrackingError
from distmeta.tracking.provenance import flatten_config, provenance_tags
from distmeta.tracking.quiet import quiet_mlflow
from distmeta.tracking.store import (
    error_reason,
    experiment_id,
    log_params,
    open_store,
    resolve_tracking_uri,
)

__all__ = ["SearchRun"]

_STATUS_TAG = "distmeta.tune.status"


class SearchRun:
    """The parent MLflow run of a search; a context manager that ends it ``FINISHED`` only
    after :meth:`finish`, else ``FAILED`` (``KILLED`` on Ctrl-C).

    Args:
        config: The search's config (its ``tracking`` section names store and experiment).
        search_dir: The search's folder (a tag of the run).
        config_file: The YAML file the search was read from, logged as written.
    """

    def __init__(
        self, config: ExperimentConfig, search_dir: str, config_file: str | Path | None = None
    ):
        self.tracking_uri = resolve_tracking_uri(config.tracking.uri)
        self.client = open_store(self.tracking_uri)
        self.experiment_id = experiment_id(self.client, config.tracking.experiment)
        name = config.tracking.run_name or f"tune {Path(search_dir).name}"
        with quiet_mlflow():
            try:
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=name,
                    tags={**provenance_tags(), "distmeta.tune.dir": search_dir},
                )
                self.run_id = run.info.run_id
                log_params(self.client, self.run_id, flatten_config(config_to_dict(config)))
                if config_file is not None:
                    self.client.log_artifact(
                        self.run_id, str(Path(config_file).resolve()), "source_config"
                    )
            except Exception as error:
                raise self._error("cannot start the search's MLflow run", error) from None
        self._ended = False

    @property
    def run_url(self) -> str:
        if self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.run_id} in {self.tracking_uri}"

    def log_file(self, path: str | Path) -> None:
        with quiet_mlflow():
            try:
                self.client.log_artifact(self.run_id, str(path))
            except Exception as error:
                raise self._error(f"cannot log {path}", error) from None

    def finish(
        self, metrics: dict[str, float], tags: dict[str, str], trial_status: dict[str, str]
    ) -> None:
        """Log the results, mark each trial's run with its outcome and end the run.

        Args:
            metrics: The search's results (the best metric).
            tags: More tags of the run (the best trial).
            trial_status: Outcome of each trial by name (``completed``, ``stopped``,
                ``error``); a trial's run still open (its process was ended while it wrote)
                is closed ``KILLED`` when stopped, ``FAILED`` on error.
        """
        from distmeta.tune.trainable import TRIAL_TAG

        with quiet_mlflow():
            try:
                for name, value in metrics.items():
                    self.client.log_metric(self.run_id, name, value)
                for name, value in tags.items():
                    self.client.set_tag(self.run_id, name, value)
                children = self.client.search_runs(
                    [self.experiment_id],
                    filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
                    max_results=10_000,
                )
                for child in children:
                    status = trial_status.get(child.data.tags.get(TRIAL_TAG, ""))
                    if status is None:
                        continue
                    self.client.set_tag(child.info.run_id, _STATUS_TAG, status)
                    if child.info.status == "RUNNING":
                        ended = {"completed": "FINISHED", "stopped": "KILLED"}.get(status, "FAILED")
                        self.client.set_terminated(child.info.run_id, ended)
                self.client.set_terminated(self.run_id, "FINISHED")
            except Exception as error:
                raise self._error("cannot finish the search's MLflow run", error) from None
        self._ended = True

    def __enter__(self) -> SearchRun:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._ended:
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        # Best effort: the error that stopped the search is the one to report.
        with quiet_mlflow(), contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, status)
        self._ended = True

    def _error(self, what: str, error: BaseException) -> TrackingError:
        return TrackingError(f"MLflow store {self.tracking_uri}: {what}: {error_reason(error)}")
