"""After a search: the best trial trains on with the steps its trials left of the budget.

ASHA stops the bad trials early, so a search given the compute of one long training leaves
part of it unspent. The best trial spends it: it resumes from its last checkpoint, with the
outer learning rate held as it was and annealed over the extra steps. Because the rate is held
up to the trial's last step, a from-scratch ``distmeta train best.yaml`` (the continued
config) reproduces the continued run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from distmeta.config import ExperimentConfig, TuneConfig
from distmeta.engine.rundir import CONFIG_FILE, RunDir
from distmeta.errors import CheckpointError
from distmeta.runs import train
from distmeta.tune.space import trial_config
from distmeta.tune.trainable import TRIAL_TAG, checkpoint_metrics

__all__ = ["CONTINUED_FOLDER", "Continuation", "continuation_config", "continue_best"]

CONTINUED_FOLDER = "continued"
"""The continued run's folder inside the search folder."""


@dataclass(frozen=True)
class Continuation:
    """What the continued run reached."""

    name: str
    step: int
    metrics: dict[str, float]
    run_dir: str


def continuation_config(
    base: dict[str, Any],
    tune_config: TuneConfig,
    values: dict[str, Any],
    trial: str,
    step: int,
    extra_steps: int,
) -> ExperimentConfig:
    """The best trial's config (``values`` at ``step``), ``extra_steps`` longer, with the
    outer learning rate annealed from ``step`` on."""
    plan = tune_config.continue_best
    assert plan is not None
    fixed: dict[str, Any] = {
        "train.steps": step + extra_steps,
        "tracking.run_name": f"{trial}-continued",
    }
    if plan.decay != "none":
        fixed["algorithm.outer_lr_decay"] = {
            "shape": plan.decay,
            "start": step,
            "final": plan.final,
        }
    return trial_config(base, tune_config, values, fixed)


def _seed_run_folder(trial_run: RunDir, step: int, folder: RunDir) -> None:
    """Put the trial's config and its checkpoint of ``step`` into a new run folder."""
    name = trial_run.checkpoint_name(step)
    if not trial_run.exists(name):
        raise CheckpointError(f"{trial_run.describe(name)} is missing: cannot continue the trial")
    folder.write_bytes(CONFIG_FILE, trial_run.read_bytes(CONFIG_FILE))
    folder.write_bytes(name, trial_run.read_bytes(name))


def continue_best(
    config: ExperimentConfig,
    trial_run_dir: str,
    trial: str,
    step: int,
    run_dir: str,
    parent_run_id: str | None,
    val_tasks: int,
) -> Continuation:
    """Resume the trial's run of ``trial_run_dir`` at ``step`` into ``run_dir`` and train it to
    ``config.train.steps``; its validation metrics as the trials measure them.

    Args:
        config: The continued config (:func:`continuation_config`).
        trial_run_dir: The best trial's run folder.
        trial: The best trial's name.
        step: The best trial's last checkpoint.
        run_dir: A new folder for the continued run.
        parent_run_id: The search's MLflow run; the continuation is a child of it.
        val_tasks: Validation tasks of the final measurement (``tune.val_tasks``).
    """
    folder = RunDir(run_dir)
    _seed_run_folder(RunDir(trial_run_dir), step, folder)
    name = f"{trial}-continued"
    tracker = None
    if config.tracking.enabled:
        from distmeta.tracking import MLflowTracker

        tracker = MLflowTracker(config, parent_run_id=parent_run_id, tags={TRIAL_TAG: name})
    with tracker or nullcontext():
        result = train(
            config,
            run_dir=folder.uri,
            resume=True,
            callbacks=[tracker] if tracker is not None else [],
            progress=False,
            allow_changes=["algorithm.outer_lr_decay"],
        )
    return Continuation(
        name,
        result.steps,
        checkpoint_metrics(folder, result.steps, val_tasks),
        folder.uri,
    )
