"""Record a training run in MLflow: a :class:`~distmeta.engine.TrainingCallback`.

The callback sees only what every engine reports (config, metric records, checkpoint files,
the result), so the local engine, the Ray engine and Tune trials are tracked the same way.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow.fs as pafs
from mlflow.entities import Metric

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.engine.rundir import CONFIG_FILE, FINAL_FILE, MetricsLog, RunDir
from distmeta.errors import TrackingError
from distmeta.runs import TrainResult, curve_of_run, load_run
from distmeta.tracking.link import TrackingLink, read_link, write_link
from distmeta.tracking.plots import plot_adaptation_curve, plot_learning_curve
from distmeta.tracking.provenance import flatten_config, provenance_tags
from distmeta.tracking.quiet import quiet_mlflow
from distmeta.tracking.store import (
    error_reason,
    experiment_id,
    log_params,
    open_store,
    resolve_tracking_uri,
)
from distmeta.tracking.uploader import RunUploader
from distmeta.tracking.writer import BATCH

__all__ = ["ADAPTATION_TASKS", "MLflowTracker", "peak_memory_mb"]

ADAPTATION_TASKS = 100
"""At most this many fresh tasks (``eval.tasks`` if fewer) draw the adaptation curve."""

_NOT_METRICS = {"step", "time"}
_SAMPLED = ("tasks_per_s",)
"""Logged, like the peak memory, with at most one record per ``interval``."""


def _metric_values(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics record, except its step and elapsed time."""
    return {
        name: value
        for name, value in record.items()
        if name not in _NOT_METRICS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB here


class MLflowTracker:
    """Record a training run in MLflow.

    Description:
        Construction checks the store (``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else
        ``sqlite:///<cwd>/mlflow.db``) and opens the experiment, so an unreachable server or
        an unwritable store fails before training starts.

        ``on_start`` opens an MLflow run, or continues the one ``tracking.json`` in a resumed
        run folder names, and records the link in the folder. It logs the resolved config
        flattened as params, the git commit and package versions as tags (see
        :mod:`~distmeta.tracking.provenance`), the resolved ``config.yaml`` and the source
        config file. Every metric record (loss, accuracy; tasks/s and the peak memory with at
        most one record per ``interval``) and every checkpoint file is queued and sent by a
        writer process (:class:`~distmeta.tracking.uploader.RunUploader`), so training does
        not wait on the store. ``on_end`` sends the rest and ``final.pt``, draws the learning
        curve and the adaptation curve on fresh tasks (PNG under ``plots/``; the latter also as
        metrics ``adapt_loss`` and ``adapt_accuracy`` whose step is the number of adaptation
        steps), and ends the run ``FINISHED``.

        Use it as a context manager: a run that fails or is interrupted then ends ``FAILED``
        or ``KILLED`` instead of staying ``RUNNING``.

    Args:
        config: The experiment; its ``tracking`` section names the store, the experiment and
            the run.
        config_file: The YAML file the config was read from, logged as written (comments
            included) under ``source_config/``.
        interval: Seconds between background sends (see :class:`RunUploader`).
        parent_run_id: Make the new MLflow run a child of this one (a Tune trial under its
            search's run).
        tags: Extra tags of the new MLflow run.

    Example:
        >>> with MLflowTracker(config) as tracker:  # doctest: +SKIP
        ...     dm.train(config, run_dir="runs/a", callbacks=[tracker])
    """

    def __init__(
        self,
        config: ExperimentConfig,
        config_file: str | Path | None = None,
        interval: float = 1.0,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.tracking_uri = resolve_tracking_uri(config.tracking.uri)
        self.client = open_store(self.tracking_uri)
        self.experiment_id = experiment_id(self.client, config.tracking.experiment)
        self.config_file = None if config_file is None else Path(config_file)
        self.interval = interval
        self.tags = dict(tags or {})
        if parent_run_id is not None:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.run_id: str | None = None
        self._run_dir: RunDir | None = None
        self._uploader: RunUploader | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="distmeta-mlflow-")
        self._ended = False
        self._next_sample = 0.0

    @property
    def run_url(self) -> str:
        """Where to see the run: its page on a tracking server, else its id and store."""
        if self.tracking_uri.startswith(("http://", "https://")):
            base = self.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.run_id} in {self.tracking_uri}"

    # --- TrainingCallback ---------------------------------------------------------------

    def on_start(self, config: ExperimentConfig, run_dir: RunDir, start_step: int) -> None:
        self._run_dir = run_dir
        params = flatten_config(config_to_dict(config))
        with quiet_mlflow():
            try:
                run = self._continued_run(run_dir) if start_step else None
                if run is None:
                    self._start_run(config, run_dir, params, start_step)
                else:
                    self._continue_run(run, params)
            except TrackingError:
                raise
            except Exception as error:
                raise self._error("cannot start the MLflow run", error) from None
        write_link(run_dir, TrackingLink(self.tracking_uri, self.experiment_id, self.run_id))
        self._uploader = RunUploader(self.tracking_uri, self.run_id, self.interval)
        self._uploader.log_file(self._local(run_dir, CONFIG_FILE))
        if self.config_file is not None:
            self._uploader.log_file(str(self.config_file.resolve()), "source_config")

    def on_metrics(self, record: dict[str, Any]) -> None:
        values = _metric_values(record)
        now = time.monotonic()
        if now >= self._next_sample:
            values["memory_peak_mb"] = peak_memory_mb()
            self._next_sample = now + self.interval
        else:  # rates need no per-step resolution, and every value costs the store CPU
            for name in _SAMPLED:
                values.pop(name, None)
        self._require_uploader().log_metrics(int(record["step"]), values)

    def on_checkpoint(self, step: int, run_dir: RunDir, name: str) -> None:
        path = self._local(run_dir, run_dir.checkpoint_name(step))
        self._require_uploader().log_file(path, "checkpoints")

    def on_end(self, result: TrainResult) -> None:
        self._require_uploader().close()
        run_dir = self._run_dir
        assert run_dir is not None  # set by on_start, which the uploader also needs
        with quiet_mlflow():
            try:
                self.client.log_artifact(self.run_id, self._local(run_dir, FINAL_FILE))
                self._log_curves(run_dir)
                self.client.set_terminated(self.run_id, "FINISHED")
            except Exception as error:
                raise self._error("cannot finish the MLflow run", error) from None
        self._ended = True
        self._scratch.cleanup()

    # --- context manager: never leave a failed run RUNNING ------------------------------

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.run_id is not None and not self._ended:
            # Stopped from outside (Ctrl-C; a Tune scheduler ending a trial) rather than failed.
            stopped = isinstance(error, KeyboardInterrupt | SystemExit)
            status = "KILLED" if stopped else "FAILED"
            with quiet_mlflow():
                try:  # best effort: the error that stopped training is the one to report
                    if self._uploader is not None:
                        self._uploader.close()
                    self.client.set_terminated(self.run_id, status)
                except Exception:
                    pass
            self._ended = True
        self._scratch.cleanup()

    # --- helpers --------------------------------------------------------------------------

    def _continued_run(self, run_dir: RunDir):
        """The MLflow run a resumed folder links to, if it lives in this store."""
        link = read_link(run_dir)
        if link is None or link.tracking_uri != self.tracking_uri:
            return None
        try:
            run = self.client.get_run(link.run_id)
        except Exception:  # deleted for good, or the store was replaced
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _start_run(
        self, config: ExperimentConfig, run_dir: RunDir, params: dict[str, str], start_step: int
    ) -> None:
        where = run_dir.path if isinstance(run_dir.fs, pafs.LocalFileSystem) else run_dir.uri
        run = self.client.create_run(
            self.experiment_id,
            run_name=config.tracking.run_name or Path(where.rstrip("/")).name,
            tags={**provenance_tags(), "distmeta.run_dir": where, **self.tags},
        )
        self.run_id = run.info.run_id
        log_params(self.client, self.run_id, params)
        if start_step:  # resumed into a new MLflow run: bring the history it missed
            now = int(time.time() * 1000)
            self._log_metrics(
                Metric(name, value, now, record["step"])
                for record in MetricsLog.read(run_dir)
                if record["step"] <= start_step
                for name, value in _metric_values(record).items()
            )

    def _continue_run(self, run, params: dict[str, str]) -> None:
        self.run_id = run.info.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        logged = run.data.params
        log_params(self.client, self.run_id, {k: v for k, v in params.items() if k not in logged})
        # Params are immutable in MLflow; what a resume changed (train.steps, engine.*) is a tag.
        for key, value in params.items():
            if key in logged and logged[key] != value:
                self.client.set_tag(self.run_id, f"resumed.{key}", value)

    def _log_metrics(self, metrics: Iterable[Metric]) -> None:
        metrics = list(metrics)
        for first in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first : first + BATCH])

    def _log_curves(self, run_dir: RunDir) -> None:
        scratch = Path(self._scratch.name)
        name = Path(run_dir.uri.rstrip("/")).name
        records = MetricsLog.read(run_dir)
        if records:
            plot_learning_curve(records, scratch / "learning_curve.png", f"{name}: meta-training")
            self.client.log_artifact(self.run_id, str(scratch / "learning_curve.png"), "plots")
        run = load_run(run_dir.uri)
        result = curve_of_run(run, tasks=min(run.config.eval.tasks, ADAPTATION_TASKS))
        title = f"{name}: adaptation on {result.tasks} fresh tasks"
        plot_adaptation_curve(result, scratch / "adaptation_curve.png", title)
        self.client.log_artifact(self.run_id, str(scratch / "adaptation_curve.png"), "plots")
        curves = {"adapt_loss": result.loss, "adapt_accuracy": result.accuracy or []}
        now = int(time.time() * 1000)
        self._log_metrics(
            Metric(metric, value, now, step)
            for metric, values in curves.items()
            for step, value in zip(result.steps, values, strict=False)
        )

    def _local(self, run_dir: RunDir, name: str) -> str:
        """A local path holding the run folder's file ``name`` (a copy for remote folders)."""
        if isinstance(run_dir.fs, pafs.LocalFileSystem):
            return f"{run_dir.path.rstrip('/')}/{name}"
        copy = Path(self._scratch.name) / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(run_dir.read_bytes(name))
        return str(copy)

    def _require_uploader(self) -> RunUploader:
        if self._uploader is None:
            raise RuntimeError("MLflowTracker: on_start was not called")
        return self._uploader

    def _error(self, what: str, error: BaseException) -> TrackingError:
        return TrackingError(f"MLflow store {self.tracking_uri}: {what}: {error_reason(error)}")
