"""Evaluation on fresh tasks: loss (and accuracy) after 0..k adaptation steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from distmeta.engine.experiment import build_task_source
from distmeta.engine.run import Run, evaluation_run

__all__ = ["EvalResult", "adaptation_curves", "evaluate"]

_CHUNK = 100
"""Tasks per evaluation batch: bounds memory, not results."""


@dataclass
class EvalResult:
    """Mean query metrics over ``tasks`` fresh tasks after each number of adaptation steps."""

    tasks: int
    steps: list[int]
    loss: list[float]
    loss_ci95: list[float]
    accuracy: list[float] | None = None
    accuracy_ci95: list[float] | None = None

    def to_dict(self) -> dict:
        """Plain data for JSON; a diverged (non-finite) value becomes ``None`` (JSON null)."""

        def finite(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {
            k: (finite(v) if k != "steps" and isinstance(v, list) else v)
            for k, v in asdict(self).items()
            if v is not None
        }


def _ci95(values: torch.Tensor) -> torch.Tensor:
    """Half-width of the normal 95% interval of the mean over the first dimension."""
    n = values.shape[0]
    if n < 2:
        return torch.zeros(values.shape[1:], dtype=values.dtype)
    return 1.96 * values.std(dim=0) / math.sqrt(n)


def adaptation_curves(
    run: Run, tasks: int | None = None, seed: int | None = None, steps: int | None = None
) -> torch.Tensor:
    """Per task, the query metrics after 0..``steps`` adaptation steps: ``[tasks, steps + 1,
    metrics]`` (loss, and accuracy for classification), float64. Two runs measured with the
    same arguments meet the same tasks, so their difference can be compared task by task.

    Args: as :func:`evaluate`.
    """
    run = evaluation_run(run)
    config = run.config
    tasks = tasks or config.eval.tasks
    if seed is None:
        seed = config.eval.seed if config.eval.seed is not None else config.seed + 1
    if steps is None:
        steps = (
            config.eval.inner_steps
            if config.eval.inner_steps is not None
            else config.algorithm.inner_steps
        )
    source = build_task_source(config, split="eval")
    device = next(iter(run.params.values())).device
    curves = []
    for chunk, first in enumerate(range(0, tasks, _CHUNK)):
        batch = source.sample(seed, chunk, range(min(_CHUNK, tasks - first))).to(device)
        curves.append(run.algorithm.adaptation_curve(run.params, batch, steps).double().cpu())
    return torch.cat(curves)


def evaluate(
    run: Run, tasks: int | None = None, seed: int | None = None, steps: int | None = None
) -> EvalResult:
    """Adapt the run's meta-parameters to fresh tasks and measure the query set.

    Args:
        run: A loaded run (:func:`~distmeta.engine.run.load_run`).
        tasks: Number of tasks (default ``eval.tasks``).
        seed: Seed of the tasks (default ``eval.seed``, else the training seed + 1, whose
            tasks training never saw).
        steps: Adaptation steps (default ``eval.inner_steps``, else ``algorithm.inner_steps``).
    """
    curve = adaptation_curves(run, tasks, seed, steps)
    mean, ci = curve.mean(dim=0), _ci95(curve)
    result = EvalResult(
        curve.shape[0], list(range(curve.shape[1])), mean[:, 0].tolist(), ci[:, 0].tolist()
    )
    if curve.shape[-1] > 1:
        result.accuracy, result.accuracy_ci95 = mean[:, 1].tolist(), ci[:, 1].tolist()
    return result
