"""A finished run, loaded back: its config, model, final meta-parameters and algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distmeta.algorithms import MetaAlgorithm
from distmeta.config import ExperimentConfig, apply_overrides, parse_config
from distmeta.engine.experiment import build_experiment
from distmeta.engine.rundir import RunDir
from distmeta.errors import CheckpointError, RunError

__all__ = ["Run", "load_run"]


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
    params = final.get("params")
    template = experiment.algorithm.init_params()
    fits = isinstance(params, dict) and set(params) == set(template)
    if fits:
        fits = all(params[name].shape == value.shape for name, value in template.items())
    if not fits:
        raise CheckpointError(
            f"{folder.describe('final.pt')} does not hold the parameters of this run's "
            f"{config.algorithm.name} / {config.model.name} model as configured "
            "(did an override change the model's shape, e.g. task.ways?)"
        )
    params = {name: params[name].to(device=device, dtype=experiment.dtype) for name in template}
    with torch.no_grad():
        for name, parameter in experiment.model.named_parameters():
            parameter.copy_(params[name])
    return Run(
        folder.uri,
        config,
        experiment.model,
        params,
        experiment.algorithm,
        int(final.get("step", 0)),
    )
