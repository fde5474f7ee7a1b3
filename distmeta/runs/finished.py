"""A run loaded back from its folder: config, model, meta-parameters and algorithm.

A finished run holds ``final.pt``; any of its checkpoints can be loaded the same way (a Tune
trial measures each one as it is written).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distmeta.config import ExperimentConfig, apply_overrides, parse_config
from distmeta.engine import checkpoint_params
from distmeta.engine.rundir import RunDir
from distmeta.errors import CheckpointError, ConfigError, RunError
from distmeta.experiment import Algorithm, TaskShape, build_experiment, build_model

__all__ = ["Run", "fit_params", "load_run"]


@dataclass
class Run:
    """A trained run (finished, or at one of its checkpoints).

    ``model`` holds the meta-learned initialisation; ``algorithm.adapt(params, x, y)`` adapts it
    to a task, and ``torch.func.functional_call(model, task_params, x)`` predicts.
    """

    run_dir: str
    config: ExperimentConfig
    model: nn.Module
    params: dict[str, torch.Tensor]
    algorithm: Algorithm
    step: int

    def checkpoint_steps(self) -> list[int]:
        """Steps of the run's complete checkpoints, ascending."""
        return RunDir(self.run_dir).checkpoint_steps()

    def at_checkpoint(self, step: int) -> Run:
        """The same run (its config with any overrides, its algorithm) with the
        meta-parameters of its checkpoint at ``step``."""
        folder = RunDir(self.run_dir)
        params = _checkpoint_params(folder, self.config, self.algorithm, step)
        model = copy.deepcopy(self.model)
        _load_into(model, params)
        return dataclasses.replace(self, model=model, params=params, step=step)

    def params_for(self, tasks: TaskShape) -> dict[str, torch.Tensor]:
        """The meta-parameters for tasks of another shape (``eval.ways`` classes): the ones
        every task starts from zero (``algorithm.zero_init``) are not learned, so they are
        rebuilt at the size the model for ``tasks`` gives them; the rest must fit as they are.

        Raises:
            ConfigError: A learned parameter does not fit ``tasks`` (e.g. another number of
                ways with a learned output layer).
        """
        model = build_model(self.config, tasks)
        if all(p.shape == self.params[name].shape for name, p in model.named_parameters()):
            return self.params
        params = fit_params(self.algorithm, self.params, model)
        if params is None:
            trained = getattr(self.config.task, "ways", None)
            raise ConfigError(
                f"eval.ways: {tasks.output_size}-way evaluation needs the model's output layer "
                f"in algorithm.zero_init; the run's learned parameters fit {trained} ways"
            )
        return params


def fit_params(
    algorithm: Algorithm, stored: object, model: nn.Module | None = None
) -> dict[str, torch.Tensor] | None:
    """Stored meta-parameters made ready for ``algorithm`` (its device and dtype), or
    ``None`` when they do not fit it.

    Parameters the algorithm starts at zero for every task (``zero_init``) are not learned,
    so they are rebuilt (as zeros) at the shape ``model`` gives them (default: the
    algorithm's own model): a run meta-trained on 20-way tasks with its head at zero adapts
    to 5-way ones.
    """
    template = algorithm.init_params()
    # The model's parameters at ``model``'s shapes; a learned inner rule's own (Meta-SGD's
    # rates, an LSTM's weights) at the algorithm's.
    shapes = {**template, **(dict(model.named_parameters()) if model is not None else {})}
    if not isinstance(stored, dict) or set(stored) != set(template):
        return None
    learned = [name for name in template if name not in algorithm.zero_init]
    if any(tuple(stored[name].shape) != tuple(shapes[name].shape) for name in learned):
        return None
    reference = next(iter(template.values()))
    fitted = {name: torch.zeros_like(shapes[name]) for name in algorithm.zero_init}
    fitted.update({name: stored[name] for name in learned})
    return {
        name: fitted[name].detach().to(device=reference.device, dtype=reference.dtype)
        for name in template
    }


def load_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    device: str = "cpu",
    step: int | None = None,
) -> Run:
    """Load the run in ``run_dir`` (local path or URI) on ``device``.

    Args:
        run_dir: The run's folder.
        overrides: ``key=value`` changes to its config (e.g. ``eval.query=100``), applied
            before anything is built; the meta-parameters must still fit the model.
        device: Where the model and parameters go.
        step: Load the checkpoint of this step instead of the final parameters.
    """
    folder = RunDir(run_dir)
    if not folder.exists():
        raise RunError(f"run directory {folder.uri} does not exist")
    config = parse_config(apply_overrides(folder.read_config(), overrides or []))
    experiment = build_experiment(config, torch.device(device))
    if step is None:
        state = folder.load_final()
        params = _fitted(folder, "final.pt", config, experiment.algorithm, state.get("params"))
        step = int(state.get("step", 0))
    else:
        params = _checkpoint_params(folder, config, experiment.algorithm, step)
    _load_into(experiment.model, params)
    return Run(folder.uri, config, experiment.model, params, experiment.algorithm, step)


def _checkpoint_params(
    folder: RunDir, config: ExperimentConfig, algorithm: Algorithm, step: int
) -> dict[str, torch.Tensor]:
    """The meta-parameters of the checkpoint at ``step``, made ready for ``algorithm``."""
    name = folder.checkpoint_name(step)
    try:
        stored = checkpoint_params(folder.load_state(name)["engine"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{folder.describe(name)} holds no engine state ({error})") from None
    return _fitted(folder, name, config, algorithm, stored)


def _fitted(
    folder: RunDir, name: str, config: ExperimentConfig, algorithm: Algorithm, stored: object
) -> dict[str, torch.Tensor]:
    """``stored`` made ready for ``algorithm``; a :class:`CheckpointError` naming the file
    where they do not fit it."""
    params = fit_params(algorithm, stored)
    if params is None:
        raise CheckpointError(
            f"{folder.describe(name)} does not hold the parameters of this run's "
            f"{config.algorithm.name} / {config.model.name} model as configured "
            "(did an override change the model's shape, e.g. task.ways?)"
        )
    return params


def _load_into(model: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy the initialisation into ``model`` (a learned optimizer's run holds none)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in params:
                parameter.copy_(params[name])
