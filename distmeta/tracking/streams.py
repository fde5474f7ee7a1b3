"""Record an online evaluation on streams (``distmeta stream``) as one MLflow run."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from mlflow.entities import Metric

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.errors import TrackingError
from distmeta.runs import StreamReport
from distmeta.runs.stream_metrics import Interval, LearnerSummary
from distmeta.tracking.plots import plot_stream
from distmeta.tracking.provenance import flatten_config, provenance_tags
from distmeta.tracking.quiet import quiet_mlflow
from distmeta.tracking.store import (
    error_reason,
    experiment_id,
    log_params,
    open_store,
    resolve_tracking_uri,
)
from distmeta.tracking.writer import BATCH

__all__ = ["StreamTracker", "summary_metrics"]


def _intervals(prefix: str, summary: LearnerSummary) -> Iterator[tuple[str, Interval]]:
    for key, value in vars(summary).items():
        if isinstance(value, Interval):
            yield f"{prefix}.{key}", value
        elif isinstance(value, dict):
            for name, item in value.items():
                yield f"{prefix}.{key}.{name}", item


def summary_metrics(report: StreamReport) -> dict[str, float]:
    """The report's numbers as MLflow metrics: ``<learner>.<number>`` (``method.mean_loss``,
    ``frozen_meta.modes.ood_amplitude``, ``method.switch_detection.f1``) and each
    ``..._ci95`` beside it; numbers that are not finite are left out."""
    learners = {"method": report.method, "oracle": report.oracle, **report.baselines}
    metrics = {}
    for role, summary in learners.items():
        for key, value in _intervals(role, summary):
            metrics[key], metrics[f"{key}_ci95"] = value.mean, value.ci95
    return {key: value for key, value in metrics.items() if np.isfinite(value)}


class StreamTracker:
    """Logs a :class:`~distmeta.runs.StreamReport` to MLflow: the resolved config as params,
    the summary as metrics, every learner's loss over time (the mean over seeds and streams,
    as ``<learner>.loss`` by stream step), the report as ``report.json`` and the stream's
    plot under ``plots/``.

    Construction checks the store (``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///<cwd>/mlflow.db``), so an unusable one fails before any stream runs.

    Args:
        config: The experiment; its ``tracking`` section names the store and experiment.

    Example:
        >>> tracker = StreamTracker(config)  # doctest: +SKIP
        >>> tracker.log(run_streams(config, seeds=5))
    """

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.tracking_uri = resolve_tracking_uri(config.tracking.uri)
        self.client = open_store(self.tracking_uri)
        self.experiment_id = experiment_id(self.client, config.tracking.experiment)

    def log(self, report: StreamReport, run_dir: str | None = None) -> str:
        """Record ``report`` as a finished MLflow run; returns the run's id."""
        spec = self.config.stream
        name = self.config.tracking.run_name or f"stream-{spec.name}-{spec.method}"
        tags = {**provenance_tags(), "distmeta.command": "stream"}
        if run_dir is not None:
            tags["distmeta.run_dir"] = run_dir
        with quiet_mlflow(), tempfile.TemporaryDirectory(prefix="distmeta-stream-") as scratch:
            try:
                run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
                run_id = run.info.run_id
                log_params(self.client, run_id, flatten_config(config_to_dict(self.config)))
                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, 0) for k, v in summary_metrics(report).items()]
                for role, curve in self._curves(report).items():
                    metrics += [
                        Metric(f"{role}.loss", float(v), now, step)
                        for step, v in enumerate(curve)
                        if np.isfinite(v)
                    ]
                for first in range(0, len(metrics), BATCH):
                    self.client.log_batch(run_id, metrics=metrics[first : first + BATCH])
                folder = Path(scratch)
                (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
                self.client.log_artifact(run_id, str(folder / "report.json"))
                plot = folder / "stream.png"
                plot_stream(report, plot, f"{name}: online loss, {report.mode_names[0]} first")
                self.client.log_artifact(run_id, str(plot), "plots")
                self.client.set_terminated(run_id, "FINISHED")
            except Exception as error:
                raise TrackingError(
                    f"MLflow store {self.tracking_uri}: cannot record the stream run: "
                    f"{error_reason(error)}"
                ) from None
        return run_id

    @staticmethod
    def _curves(report: StreamReport) -> dict[str, np.ndarray]:
        """Each learner's loss at every step, the mean over seeds and streams."""
        records = [record for result in report.results for record in result.records]
        return {name: np.mean([r.loss[name] for r in records], axis=0) for name in records[0].loss}
