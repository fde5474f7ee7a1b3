"""One Tune trial: a full distmeta training that reports a validation metric with each
checkpoint, and resumes from a checkpoint Tune hands it (PBT's exploit, a retried trial).

The trial's run folder is ``<search folder>/trials/<trial>/run``, an ordinary run folder:
``distmeta eval`` and ``load_run`` read it like any other.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from distmeta.config import ExperimentConfig, TuneConfig
from distmeta.engine.rundir import CONFIG_FILE, FINAL_FILE, RunDir
from distmeta.errors import CheckpointError
from distmeta.runs import TrainResult, curve_of_run, load_run, train
from distmeta.tune.space import trial_config

__all__ = ["RUN_FOLDER", "TRIAL_TAG", "TuneReporter", "checkpoint_metrics", "make_trainable"]

RUN_FOLDER = "run"
"""The run folder's name inside a trial's folder."""
TRIAL_TAG = "distmeta.tune.trial"
"""MLflow tag naming the Tune trial a child run records."""


def checkpoint_metrics(run_dir: RunDir, step: int, tasks: int) -> dict[str, float]:
    """``val_loss`` (and ``val_accuracy``) of the checkpoint of ``step``: the query metrics
    after ``eval.inner_steps`` adaptation steps on ``tasks`` tasks of the evaluation split,
    exactly as :func:`~distmeta.runs.evaluate` measures the finished run (a learned
    optimizer: the loss of fresh problems at its training horizon,
    :func:`~distmeta.runs.curve_of_run`)."""
    result = curve_of_run(load_run(run_dir.uri, step=step), tasks=tasks)
    metrics = {"val_loss": result.loss[-1]}
    if result.accuracy is not None:
        metrics["val_accuracy"] = result.accuracy[-1]
    return metrics


def _copy_into(run_dir: RunDir, name: str, folder: str) -> None:
    """Put the run's file ``name`` at ``folder/name`` (a hard link when both are local)."""
    target = os.path.join(folder, name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if isinstance(run_dir.fs, pafs.LocalFileSystem):
        source = f"{run_dir.path.rstrip('/')}/{name}"
        try:
            os.link(source, target)
            return
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(source, target)
            return
    with open(target, "wb") as stream:
        stream.write(run_dir.read_bytes(name))


class TuneReporter:
    """A :class:`~distmeta.runs.TrainingCallback` that reports to Ray Tune.

    Description:
        After each checkpoint it measures the checkpoint's meta-parameters on ``tasks`` tasks
        of the evaluation split (:func:`checkpoint_metrics`) and reports ``val_loss``
        (``val_accuracy``), ``train_loss`` (``train_accuracy``) of the last record and
        ``step``, with a Tune checkpoint holding that checkpoint file and ``config.yaml``
        (a minimal run folder; not the whole, growing run folder).

        A scheduler stops a trial by raising ``SystemExit`` inside ``tune.report``, which
        Tune does at the last report as well; so the report of the final step waits for
        :meth:`report_final`, called once training (and its tracking) has finished. It says
        ``done``, so that no scheduler acts on it (PBT would restart a finished trial from
        another's checkpoint). A trial resumed at its final step (nothing left to train)
        reports that checkpoint.

    Args:
        config: The trial's experiment.
        tasks: Validation tasks per report.
    """

    def __init__(self, config: ExperimentConfig, tasks: int):
        self.config = config
        self.tasks = tasks
        self._last: dict[str, Any] = {}
        self._final: tuple[dict[str, Any], RunDir, int] | None = None

    def on_start(self, config: ExperimentConfig, run_dir: RunDir, start_step: int) -> None:
        if start_step >= config.train.steps:
            self.on_checkpoint(start_step, run_dir, run_dir.checkpoint_name(start_step))

    def on_metrics(self, record: dict[str, Any]) -> None:
        self._last = record

    def on_checkpoint(self, step: int, run_dir: RunDir, name: str) -> None:
        metrics: dict[str, Any] = checkpoint_metrics(run_dir, step, self.tasks)
        for field in ("loss", "accuracy"):
            if field in self._last:
                metrics[f"train_{field}"] = float(self._last[field])
        metrics["step"] = step
        if step >= self.config.train.steps:
            self._final = ({**metrics, "done": True}, run_dir, step)
        else:
            self._report(metrics, run_dir, step)

    def on_end(self, result: TrainResult) -> None:
        """Nothing: the final report waits for :meth:`report_final`."""

    def report_final(self) -> None:
        """Report the final step's metrics and checkpoint (after training has finished)."""
        if self._final is not None:
            final, self._final = self._final, None
            self._report(*final)

    def _report(self, metrics: dict[str, Any], run_dir: RunDir, step: int) -> None:
        # Beside the run folder when it is local, so that its files are hard links.
        local = isinstance(run_dir.fs, pafs.LocalFileSystem)
        folder = tempfile.mkdtemp(
            prefix=".report-", dir=os.path.dirname(run_dir.path.rstrip("/")) if local else None
        )
        try:
            _copy_into(run_dir, CONFIG_FILE, folder)
            _copy_into(run_dir, run_dir.checkpoint_name(step), folder)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _delete(run_dir: RunDir, name: str) -> None:
    path = f"{run_dir.path.rstrip('/')}/{name}"
    info = run_dir.fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        run_dir.fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        run_dir.fs.delete_file(path)


def restore_checkpoint(checkpoint: tune.Checkpoint, run_dir: RunDir) -> None:
    """Make ``run_dir`` resume from a checkpoint :class:`TuneReporter` reported (perhaps by
    another trial): its checkpoints and final parameters are replaced by that one."""
    with checkpoint.as_directory() as folder:
        source = RunDir(folder)
        steps = source.checkpoint_steps()
        if not steps or not source.exists(CONFIG_FILE):
            raise CheckpointError(f"Tune checkpoint {checkpoint.path} holds no distmeta checkpoint")
        _delete(run_dir, "checkpoints")
        _delete(run_dir, FINAL_FILE)
        name = source.checkpoint_name(steps[-1])
        run_dir.write_bytes(CONFIG_FILE, source.read_bytes(CONFIG_FILE))
        run_dir.write_bytes(name, source.read_bytes(name))


def make_trainable(
    base: dict[str, Any],
    tune_config: TuneConfig,
    trials_dir: str,
    parent_run_id: str | None,
) -> Callable[[dict[str, Any]], None]:
    """The function Tune runs for each trial.

    Args:
        base: Every trial's resolved config before its sampled values (``tracking.uri``
            absolute, so that trials on any node record in the same store).
        tune_config: The search.
        trials_dir: Absolute folder of the trials (``<search>/trials``).
        parent_run_id: The search's MLflow run; each tracked trial is a child of it.
    """
    searched = tuple(tune_config.space)

    def run_trial(sampled: dict[str, Any]) -> None:
        # One line per reported checkpoint otherwise, from every trial.
        logging.getLogger("ray.train").setLevel(logging.WARNING)
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        name = tune.get_context().get_trial_name()
        config = trial_config(base, tune_config, sampled, {"tracking.run_name": name})
        run_dir = RunDir(f"{trials_dir.rstrip('/')}/{name}/{RUN_FOLDER}")
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            restore_checkpoint(checkpoint, run_dir)
        elif run_dir.exists():  # a restarted trial without a checkpoint starts over
            run_dir.fs.delete_dir(run_dir.path)
        reporter = TuneReporter(config, tune_config.val_tasks)
        tracker = None
        if config.tracking.enabled:
            from distmeta.tracking import MLflowTracker

            tracker = MLflowTracker(config, parent_run_id=parent_run_id, tags={TRIAL_TAG: name})
        with tracker or nullcontext():
            train(
                config,
                run_dir=run_dir.uri,
                resume=checkpoint is not None,
                callbacks=[c for c in (tracker, reporter) if c is not None],
                progress=False,
                allow_changes=searched,
            )
        reporter.report_final()

    return run_trial
