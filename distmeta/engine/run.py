"""A finished run, loaded back: its config, model, final meta-parameters and algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distmeta.algorithms import MetaAlgorithm
from distmeta.config import ExperimentConfig, apply_overrides, parse_config
from distmeta.engine.experiment import Experiment, build_experiment, evaluation_config
from distmeta.engine.rundir import RunDir
from distmeta.errors import CheckpointError, ConfigError, RunError

__all__ = ["Run", "evaluation_run", "fit_params", "load_run"]


@dataclass
class Run:
    """A finished training run.

    ``model`` holds the meta-learned initialisation; ``algorithm.adapt(params, x, y)`` adapts it
    to a task, and ``torch.func.functional_call(model, task_params, x)`` predicts.
    """

    run_dir: str
    config: ExperimentConfig
    model: nn.Module
    params: dict[str, torch.Tensor]
    algorithm: MetaAlgorithm
    step: int


def fit_params(
    algorithm: MetaAlgorithm, stored: object, device: str | torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor] | None:
    """Stored meta-parameters made ready for ``algorithm``, or None when they do not fit it.

    Parameters the algorithm starts at zero for every task (``zero_init``) are not learned, so
    they are rebuilt at the shape the configured model gives them: a run meta-trained on
    20-way tasks with its head at zero adapts to 5-way ones (``eval.ways``).
    """
    template = algorithm.init_params()
    if not isinstance(stored, dict) or set(stored) != set(template):
        return None
    learned = [name for name in template if name not in algorithm.zero_init]
    if any(stored[name].shape != template[name].shape for name in learned):
        return None
    fitted = {name: template[name] for name in template}
    fitted.update({name: stored[name] for name in learned})
    return {name: value.to(device=device, dtype=dtype) for name, value in fitted.items()}


def load_run(run_dir: str | Path, overrides: list[str] | None = None, device: str = "cpu") -> Run:
    """Load the run in ``run_dir`` (local path or URI) on ``device``.

    Args:
        run_dir: The run's folder.
        overrides: ``key=value`` changes to its config (e.g. ``eval.query=100``), applied
            before anything is built; the meta-parameters must still fit the model.
        device: Where the model and parameters go.
    """
    folder = RunDir(run_dir)
    if not folder.exists():
        raise RunError(f"run directory {folder.uri} does not exist")
    config = parse_config(apply_overrides(folder.read_config(), overrides or []))
    experiment = build_experiment(config, torch.device(device))
    final = folder.load_final()
    params = fit_params(experiment.algorithm, final.get("params"), device, experiment.dtype)
    if params is None:
        raise CheckpointError(
            f"{folder.describe('final.pt')} does not hold the parameters of this run's "
            f"{config.algorithm.name} / {config.model.name} model as configured "
            "(did an override change the model's shape, e.g. task.ways?)"
        )
    return _with_params(folder.uri, experiment, params, int(final.get("step", 0)))


def evaluation_run(run: Run) -> Run:
    """``run`` as evaluation adapts it: its model and algorithm rebuilt for ``eval.ways`` and
    ``eval.inner_lr`` where the config sets them (:func:`evaluation_config`), else ``run``."""
    config = evaluation_config(run.config)
    if config == run.config:
        return run
    device = next(iter(run.params.values())).device
    experiment = build_experiment(config, device)
    params = fit_params(experiment.algorithm, run.params, device, experiment.dtype)
    if params is None:
        raise ConfigError(
            f"eval.ways: {config.task.ways}-way evaluation needs the model's output layer in "
            f"algorithm.zero_init; the run's learned parameters fit {run.config.task.ways} ways"
        )
    return _with_params(run.run_dir, experiment, params, run.step)


def _with_params(
    run_dir: str, experiment: Experiment, params: dict[str, torch.Tensor], step: int
) -> Run:
    """The run of ``experiment`` whose model holds ``params``."""
    with torch.no_grad():
        for name, parameter in experiment.model.named_parameters():
            parameter.copy_(params[name])
    return Run(run_dir, experiment.config, experiment.model, params, experiment.algorithm, step)
