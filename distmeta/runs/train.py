"""The training loop every engine shares: steps, metrics, checkpoints, resume, progress."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from distmeta.config import ExperimentConfig, config_to_dict, parse_config
from distmeta.engine import Engine, LearnerRestored, build_engine
from distmeta.engine.rundir import MetricsLog, RunDir
from distmeta.errors import ConfigError, RunError

__all__ = ["TrainResult", "TrainingCallback", "default_run_dir", "train"]

# Sections a resumed run may change: how long it runs, where it runs, where it is recorded.
_RESUMABLE_CHANGES = {"train.steps", "engine", "tracking"}


class TrainingCallback(Protocol):
    """Observes a training run (MLflow tracking, Ray Tune reporting)."""

    def on_start(self, config: ExperimentConfig, run_dir: RunDir, start_step: int) -> None: ...

    def on_metrics(self, record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, step: int, run_dir: RunDir, name: str) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    """How a training run ended."""

    run_dir: str
    steps: int
    metrics: dict[str, float]
    """The last logged record."""
    wall_time: float
    """Seconds spent in this process's loop (a resumed run counts only its own part)."""
    tasks_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)


def default_run_dir(config: ExperimentConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{config.task.name}-{config.algorithm.name}-{stamp}")


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _check_resumable(
    run_dir: RunDir, config: ExperimentConfig, allow_changes: Iterable[str] = ()
) -> None:
    stored = config_to_dict(parse_config(run_dir.read_config()))
    allowed_keys = _RESUMABLE_CHANGES | set(allow_changes)
    changed = [
        key
        for key in _differences(stored, config_to_dict(config))
        if not any(key == allowed or key.startswith(allowed + ".") for allowed in allowed_keys)
    ]
    if changed:
        raise ConfigError(
            f"--resume: the config differs from the run's in {', '.join(changed)} "
            "(only train.steps, engine.* and tracking.* may change)"
        )


class _Window:
    """Metrics of the steps since the last record."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name.endswith("_max"):
                self.sums[name] = max(self.sums.get(name, value), value)
            else:
                self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def record(self, step: int, tasks_per_step: int, elapsed: float) -> dict[str, Any]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        record: dict[str, Any] = {"step": step, "time": round(elapsed, 3)}
        for name, value in self.sums.items():
            keep = name.endswith(("_max", "_count"))
            record[name] = value if keep else value / self.steps
        record["tasks_per_s"] = self.steps * tasks_per_step / seconds
        return record


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} tasks/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=4,
    )


def train(
    config: ExperimentConfig,
    run_dir: str | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainingCallback] = (),
    progress: bool = True,
    allow_changes: Iterable[str] = (),
) -> TrainResult:
    """Meta-train ``config`` into ``run_dir`` on the configured engine.

    Args:
        config: The validated experiment.
        run_dir: Where the run's files go (local path, ``s3://``, ``gs://``); a new folder under
            ``runs/`` when omitted.
        resume: Continue from the newest checkpoint in ``run_dir``; the run then ends with
            exactly the parameters of an uninterrupted one.
        callbacks: Observers of the run (tracking, tuning).
        progress: Show a progress bar on stderr.
        allow_changes: Dotted config keys (or sections) a resume may change besides
            ``train.steps``, ``engine`` and ``tracking``: a PBT trial resumes another trial's
            checkpoint with perturbed hyperparameters.
    """
    folder = RunDir(run_dir or default_run_dir(config))
    start, checkpoint = 0, None
    if resume:
        _check_resumable(folder, config, allow_changes)
        checkpoint = folder.latest_checkpoint()
        if checkpoint is None:
            raise RunError(f"--resume: {folder.uri} has no checkpoint to resume from")
        start = int(checkpoint["step"])
    elif folder.exists("checkpoints") or folder.exists("final.pt"):
        raise RunError(f"{folder.uri} already holds a run: pass --resume or another --run-dir")
    folder.write_config(config_to_dict(config))

    engine = build_engine(config, folder)
    try:
        if checkpoint is not None:
            engine.load_state_dict(checkpoint["engine"])
            torch.set_rng_state(checkpoint["torch_rng"])
        return _loop(config, folder, engine, start, callbacks, progress)
    finally:
        engine.close()


def _loop(
    config: ExperimentConfig,
    folder: RunDir,
    engine: Engine,
    start: int,
    callbacks: Sequence[TrainingCallback],
    show_progress: bool,
) -> TrainResult:
    train_cfg = config.train
    metrics_log = MetricsLog(folder, keep_until=start)
    for callback in callbacks:
        callback.on_start(config, folder, start)
    console = Console(stderr=True)
    bar = _progress_bar(console) if show_progress else None
    bar_task = (
        bar.add_task("train", total=train_cfg.steps, completed=start, loss="-", rate="-")
        if bar
        else None
    )
    began = time.perf_counter()
    window, history, last = _Window(), [], {}
    step = start
    try:
        if bar:
            bar.start()
        while step < train_cfg.steps:
            boundary = min(
                (step // train_cfg.checkpoint_every + 1) * train_cfg.checkpoint_every,
                train_cfg.steps,
            )
            try:
                for metrics in engine.run(step, boundary):
                    window.add(metrics)
                    step += 1
                    if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                        last = window.record(
                            step, train_cfg.meta_batch_size, time.perf_counter() - began
                        )
                        window.reset()
                        metrics_log.append(last)
                        history.append(last)
                        for callback in callbacks:
                            callback.on_metrics(last)
                        if bar:
                            bar.update(
                                bar_task,
                                completed=step,
                                loss=f"{last['loss']:.4g}",
                                rate=f"{last['tasks_per_s']:.0f}",
                            )
                state = {"engine": engine.state_dict(), "torch_rng": torch.get_rng_state()}
            except LearnerRestored as restored:
                step = restored.step
                metrics_log.close()
                metrics_log = MetricsLog(folder, keep_until=step)
                history = [r for r in history if r["step"] <= step]
                window.reset()
                continue
            name = folder.save_checkpoint(step, state)
            for callback in callbacks:
                callback.on_checkpoint(step, folder, name)
    finally:
        if bar:
            bar.stop()
        metrics_log.close()
    folder.save_final(engine.params(), step)
    wall = time.perf_counter() - began
    tasks = (train_cfg.steps - start) * train_cfg.meta_batch_size
    result = TrainResult(folder.uri, step, last, wall, tasks / max(wall, 1e-9), history)
    for callback in callbacks:
        callback.on_end(result)
    return result
