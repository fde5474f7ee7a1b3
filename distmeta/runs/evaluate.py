"""Offline evaluation on fresh tasks: loss (and accuracy) after 0..k adaptation steps.

The evaluation settings (``eval.tasks``, ``eval.seed``, ``eval.inner_steps``,
``eval.inner_lr``) reach the algorithm as arguments; the evaluation tasks (``eval.ways``,
``eval.shots``, ``eval.query``, the held-out classes) come from the task source's ``eval``
split. A task whose adaptation diverges is counted and left out of the mean, never hidden in
it: the mean is over the tasks whose loss stayed finite, beside the median over all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from distmeta.experiment import build_task_source
from distmeta.runs.finished import Run

__all__ = ["EvalResult", "adaptation_curves", "evaluate"]

_CHUNK = 100
"""Tasks per evaluation batch: bounds memory, not results."""


@dataclass
class EvalResult:
    """Query metrics over ``tasks`` fresh tasks after each number of adaptation steps.

    ``loss`` and ``accuracy`` are means over the tasks whose loss is finite at that step;
    ``diverged`` counts the others (their loss is infinite or NaN); ``loss_median`` is over
    every task (infinite where more than half diverged).
    """

    tasks: int
    steps: list[int]
    loss: list[float]
    loss_ci95: list[float]
    loss_median: list[float]
    diverged: list[int]
    accuracy: list[float] | None = None
    accuracy_ci95: list[float] | None = None

    @staticmethod
    def of(curve: torch.Tensor) -> EvalResult:
        """The summary of per-task curves ``[tasks, steps + 1, metrics]`` (loss first, then
        accuracy for classification), as :func:`adaptation_curves` gives them."""
        loss = curve[..., 0]
        finite = loss.isfinite()
        mean, ci = _finite_mean_ci(loss, finite)
        result = EvalResult(
            tasks=curve.shape[0],
            steps=list(range(curve.shape[1])),
            loss=mean,
            loss_ci95=ci,
            loss_median=loss.where(~loss.isnan(), math.inf).median(dim=0).values.tolist(),
            diverged=(~finite).sum(dim=0).tolist(),
        )
        if curve.shape[-1] > 1:
            result.accuracy, result.accuracy_ci95 = _finite_mean_ci(curve[..., 1], finite)
        return result

    def to_dict(self) -> dict:
        """Plain data for JSON: a value that is not finite (an infinite median, the mean of a
        step where every task diverged) becomes the string ``"inf"`` or ``"nan"``."""

        def plain(values: list) -> list:
            return [v if not isinstance(v, float) or math.isfinite(v) else str(v) for v in values]

        return {
            k: plain(v) if isinstance(v, list) else v
            for k, v in asdict(self).items()
            if v is not None
        }


def _finite_mean_ci(values: torch.Tensor, finite: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per step (column), mean and normal 95% half-width over the rows where ``finite``."""
    means, halves = [], []
    for column, keep in zip(values.T, finite.T, strict=True):
        kept = column[keep]
        n = kept.numel()
        means.append(float(kept.mean()) if n else math.nan)
        halves.append(float(1.96 * kept.std() / math.sqrt(n)) if n > 1 else 0.0)
    return means, halves


def adaptation_curves(
    run: Run,
    tasks: int | None = None,
    seed: int | None = None,
    steps: int | None = None,
    inner_lr: float | None = None,
) -> torch.Tensor:
    """Per task, the query metrics after 0..``steps`` adaptation steps: ``[tasks, steps + 1,
    metrics]`` (loss, and accuracy for classification), float64. Two runs measured with the
    same arguments meet the same tasks, so their difference can be compared task by task.

    Args: as :func:`evaluate`.
    """
    config = run.config
    tasks = tasks or config.eval.tasks
    if seed is None:
        seed = config.eval.seed if config.eval.seed is not None else config.seed + 1
    if steps is None:
        steps = config.eval.inner_steps
    if steps is None:
        steps = config.algorithm.inner_steps
    if inner_lr is None:
        inner_lr = config.eval.inner_lr
    source = build_task_source(config, split="eval")
    params = run.params_for(source)
    device = next(iter(params.values())).device
    curves = []
    for chunk, first in enumerate(range(0, tasks, _CHUNK)):
        batch = source.sample(seed, chunk, range(min(_CHUNK, tasks - first))).to(device)
        curve = run.algorithm.adaptation_curve(params, batch, steps, inner_lr=inner_lr)
        curves.append(curve.double().cpu())
    return torch.cat(curves)


def evaluate(
    run: Run,
    tasks: int | None = None,
    seed: int | None = None,
    steps: int | None = None,
    inner_lr: float | None = None,
) -> EvalResult:
    """Adapt the run's meta-parameters to fresh tasks and measure the query set.

    Args:
        run: A loaded run (:func:`~distmeta.runs.finished.load_run`).
        tasks: Number of tasks (default ``eval.tasks``).
        seed: Seed of the tasks (default ``eval.seed``, else the training seed + 1, whose
            tasks training never saw).
        steps: Adaptation steps (default ``eval.inner_steps``, else ``algorithm.inner_steps``).
        inner_lr: Adaptation rate of plain SGD (default ``eval.inner_lr``, else the inner
            rule's own).
    """
    return EvalResult.of(adaptation_curves(run, tasks, seed, steps, inner_lr))
