"""``distmeta tune``: a hyperparameter search with Ray Tune over any config keys.

The search folder holds::

    config.yaml     the search's resolved config (tune section included)
    trials/         Tune's experiment: per trial its results, Tune checkpoints and ``run/``,
                    the trial's distmeta run folder
    trials.csv      one row per trial: outcome, reports, last metrics, sampled values
    continued/      with ``tune.continue_best``: the best trial trained on with the budget's
                    remaining steps (a run folder)
    best.yaml       the best run's config, runnable: ``distmeta train best.yaml``
"""

from __future__ import annotations

import csv
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.errors import RunError
from distmeta.tracking.quiet import temporary_environment
from distmeta.tune.continuation import CONTINUED_FOLDER, continuation_config, continue_best
from distmeta.tune.space import (
    SearchPlan,
    base_config,
    check_search,
    plan_search,
    set_value,
    trial_config,
)
from distmeta.tune.trainable import RUN_FOLDER, make_trainable

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from distmeta.tune.mlflow_parent import SearchRun

__all__ = ["SearchResult", "TrialSummary", "default_search_dir", "run_search"]

TRIALS = "trials"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
CONFIG_FILE = "config.yaml"
_CHECKPOINTS_KEPT = 4
"""Tune checkpoints kept per trial, except under PBT, which keeps them all: with a limit,
Ray 2.60's retention deletes a trial's old checkpoint after PBT restored the trial from
another's, then fails the trial when it finds that checkpoint gone (FileNotFoundError in
``register_checkpoint``: seen in a two-trial PBT test; Tune's long-known PBT/retention race)."""


@dataclass
class TrialSummary:
    """How one trial ended."""

    name: str
    status: str
    """``completed``, ``stopped`` (by the scheduler, before its last report), ``error``, or
    ``continued`` (the best trial trained on after the search)."""
    reports: int
    step: int
    """Training step of its last report."""
    metrics: dict[str, float]
    """Its last report (``val_loss``, ``val_accuracy``, ``train_loss``, ...)."""
    values: dict[str, Any]
    """The searched keys' values it trained with last."""
    run_dir: str
    error: str | None = None


@dataclass
class SearchResult:
    """What a search found."""

    search_dir: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary
    """The best trial, or its continuation (``tune.continue_best``)."""
    best_config: str
    """``best.yaml``: the config of ``best``, without the tune section."""
    steps: int = 0
    """Training steps of the whole search: the trials' and the continuation's."""
    tracking_run: str | None = None
    """Where the search's MLflow run is (``None`` without tracking)."""
    wall_time: float = 0.0
    """Seconds from the first trial's start to the end of the search."""


def default_search_dir() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"tune-{stamp}")


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _resources(config: ExperimentConfig):
    """The trial's placement group: its own bundle, and one per Ray engine worker."""
    from ray import tune

    assert config.tune is not None
    own = config.tune.trial_resources
    bundles = [{"CPU": own.num_cpus, "GPU": own.num_gpus}]
    if config.engine.name == "ray":
        worker = config.engine.worker_resources
        bundle = {"CPU": worker.num_cpus, "GPU": worker.num_gpus, **worker.resources}
        bundles += [dict(bundle) for _ in range(config.engine.workers)]
    return tune.PlacementGroupFactory([{k: v for k, v in b.items() if v > 0} for b in bundles])


def _last_line(error: BaseException | str) -> str:
    """The last non-empty line of a trial's error (Ray gives an exception, or for a trial that
    never ran, such as one whose actor could not be reused, the failure's text)."""
    text = str(error)
    cause = getattr(error, "cause", None) or getattr(error, "__cause__", None)
    if cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _summaries(results, plan, config: ExperimentConfig, trials_dir: str) -> list[TrialSummary]:
    searched = list(config.tune.space)
    summaries = []
    for result in results:
        metrics = dict(result.metrics or {})
        name = Path(result.path).name if result.path else metrics.get("trial_id", "?")
        reports = int(metrics.get("training_iteration", 0))
        if result.error is not None:
            status = "error"
        elif reports >= plan.reports:
            status = "completed"
        else:
            status = "stopped"
        values = {key: (result.config or {}).get(key) for key in searched}
        kept = {
            k: float(v)
            for k, v in metrics.items()
            if k.startswith(("val_", "train_")) and isinstance(v, int | float)
        }
        summaries.append(
            TrialSummary(
                name=name,
                status=status,
                reports=reports,
                step=int(metrics.get("step", 0)),
                metrics=kept,
                values=values,
                run_dir=f"{trials_dir}/{name}/{RUN_FOLDER}",
                error=None if result.error is None else _last_line(result.error),
            )
        )
    return summaries


def _best(trials: list[TrialSummary], metric: str, mode: str) -> TrialSummary | None:
    scored = [t for t in trials if math.isfinite(t.metrics.get(metric, math.nan))]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda t: t.metrics[metric])


def _write_trials(path: Path, trials: list[TrialSummary], searched: list[str]) -> None:
    metric_names = sorted({name for t in trials for name in t.metrics})
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["trial", "status", "reports", "step", *metric_names, *searched, "error"])
        for t in trials:
            writer.writerow(
                [
                    t.name,
                    t.status,
                    t.reports,
                    t.step,
                    *(t.metrics.get(name, "") for name in metric_names),
                    *(t.values.get(key, "") for key in searched),
                    t.error or "",
                ]
            )


def _trial_config(
    config: ExperimentConfig, base: dict[str, Any], trial: TrialSummary
) -> ExperimentConfig:
    """The trial's resolved config; a trial stopped early trains to its last report."""
    assert config.tune is not None
    steps = trial.step if trial.step < config.train.steps else config.train.steps
    fixed = {"train.steps": steps, "tracking.run_name": config.tracking.run_name}
    return trial_config(base, config.tune, trial.values, fixed)


def _write_best(
    path: Path,
    best_config: ExperimentConfig,
    best: TrialSummary,
    metric: str,
    search_dir: str,
    val_tasks: int,
) -> None:
    what = "Continued best trial" if best.status == "continued" else "Best trial"
    header = (
        f"# {what} of the search in {search_dir}: {best.name}, {metric} "
        f"{best.metrics[metric]:.6g} at step {best.step}\n"
        f"# ({val_tasks} tasks of the evaluation split, "
        f"{_eval_steps(best_config)} adaptation step(s)). Reproduce it (same seed and steps):\n"
        f"#   distmeta train {path} --run-dir RUN\n"
        f"#   distmeta eval RUN --tasks {val_tasks}\n"
    )
    body = yaml.safe_dump(config_to_dict(best_config), sort_keys=False)
    path.write_text(header + body)


def _continue_best(
    config: ExperimentConfig,
    base: dict[str, Any],
    best: TrialSummary,
    steps: int,
    root: Path,
    parent: SearchRun | None,
) -> tuple[TrialSummary, ExperimentConfig, int]:
    """The best run, its config and the steps it added: with ``tune.continue_best`` and steps
    left of its budget after the trials' ``steps``, the best trial trained on with them."""
    tune_config = config.tune
    assert tune_config is not None
    plan = tune_config.continue_best
    extra = 0 if plan is None else plan.budget_steps - steps
    if extra <= 0:
        return best, _trial_config(config, base, best), 0
    continued = continuation_config(base, tune_config, best.values, best.name, best.step, extra)
    reached = continue_best(
        continued,
        best.run_dir,
        best.name,
        best.step,
        str(root / CONTINUED_FOLDER),
        parent.run_id if parent is not None else None,
        tune_config.val_tasks,
    )
    summary = TrialSummary(
        reached.name, "continued", 1, reached.step, reached.metrics, best.values, reached.run_dir
    )
    return summary, continued, extra


def _eval_steps(config: ExperimentConfig) -> int:
    if config.eval.inner_steps is not None:
        return config.eval.inner_steps
    return config.algorithm.inner_steps


def _fit(
    config: ExperimentConfig,
    plan: SearchPlan,
    base: dict[str, Any],
    trials_dir: str,
    parent: SearchRun | None,
    progress: bool,
) -> ResultGrid:
    """Run the trials with Ray Tune; its result grid."""
    from ray import tune

    assert config.tune is not None
    trainable = make_trainable(
        base, config.tune, trials_dir, parent.run_id if parent is not None else None
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, _resources(config)),
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=plan.search_alg,
            scheduler=plan.scheduler,
            num_samples=plan.num_samples,
            # Each trial in its own process. Reusing a stopped trial's actor fails now and
            # then for function trainables under early stopping (ray-project/ray#29268: the
            # trial errors with "Trainable runner reuse requires reset_config()").
            reuse_actors=False,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=TRIALS,
            storage_path=str(Path(trials_dir).parent),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if config.tune.scheduler == "pbt" else _CHECKPOINTS_KEPT
            ),
            verbose=1 if progress else 0,
        ),
    )
    # Trials keep the driver's working directory: relative paths (task.path) resolve as they
    # do for `distmeta train`.
    with temporary_environment({"RAY_CHDIR_TO_TRIAL_DIR": "0"}):
        return tuner.fit()


def run_search(
    config: ExperimentConfig,
    search_dir: str | None = None,
    config_file: str | Path | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search the ``tune`` section's space: every trial a full training of ``config`` with
    sampled values, on the configured engine, reporting every ``tune.report_every`` steps.

    Args:
        config: An experiment with a ``tune`` section.
        search_dir: A new local folder for the search (default ``runs/tune-<time>``).
        config_file: The YAML file the config came from (logged to MLflow as written).
        progress: Show Tune's status table while it runs.

    Raises:
        ConfigError: The search is invalid (:func:`~distmeta.tune.space.check_search`),
            before any trial starts.
        RunError: ``search_dir`` already holds a search, or no trial reported the metric.
        TrackingError: The MLflow store cannot be used.
    """
    from distmeta.engine import ray_session  # Ray loads only for a search

    tune_config = check_search(config)
    plan = plan_search(config)
    root = Path(search_dir or default_search_dir()).expanduser().resolve()
    if (root / TRIALS).exists() or (root / BEST_FILE).exists():
        raise RunError(f"{root} already holds a search: pass another --run-dir")
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    trials_dir = str(root / TRIALS)

    base, parent = base_config(config), None
    if config.tracking.enabled:
        from distmeta.tune.mlflow_parent import SearchRun

        parent = SearchRun(config, str(root), config_file)  # checks the store first
    started = time.perf_counter()
    with parent or nullcontext():
        if parent is not None:
            parent.log_file(root / CONFIG_FILE)
            # Trials record in the same store wherever they run (never a path relative to
            # their folder).
            base = set_value(base, "tracking.uri", parent.tracking_uri)
        with ray_session(config.engine):
            results = _fit(config, plan, base, trials_dir, parent, progress)
            trials = _summaries(results, plan, config, trials_dir)
            best = _best(trials, plan.metric, plan.mode)
            if best is None:
                _write_trials(root / TRIALS_FILE, trials, list(tune_config.space))
                reasons = "; ".join(f"{t.name}: {t.error}" for t in trials if t.error)
                raise RunError(
                    f"no trial of the search in {root} reported a finite {plan.metric}"
                    + (f" ({reasons})" if reasons else "")
                )
            steps = sum(t.step for t in trials)
            best, best_config, extra = _continue_best(config, base, best, steps, root, parent)
            steps += extra
        ran = trials if best in trials else [*trials, best]
        _write_trials(root / TRIALS_FILE, ran, list(tune_config.space))
        _write_best(
            root / BEST_FILE, best_config, best, plan.metric, str(root), tune_config.val_tasks
        )
        if parent is not None:
            parent.log_file(root / TRIALS_FILE)
            parent.log_file(root / BEST_FILE)
            parent.finish(
                {f"best_{plan.metric}": best.metrics[plan.metric]},
                {"distmeta.tune.best_trial": best.name},
                {t.name: t.status for t in ran},
            )
    return SearchResult(
        search_dir=str(root),
        metric=plan.metric,
        mode=plan.mode,
        trials=trials,
        best=best,
        best_config=str(root / BEST_FILE),
        steps=steps,
        tracking_run=parent.run_url if parent else None,
        wall_time=time.perf_counter() - started,
    )
