"""Offline evaluation of a learned optimizer: it against SGD, Adam and RMSprop on fresh problems.

What ``distmeta eval`` measures for a run that meta-trained a learned optimizer
(``algorithm.name: l2l``). Each hand-designed optimizer first gets its best learning rate on a
log grid from 1e-4 to 1 (:data:`LEARNING_RATES`), chosen on validation problems by the
log10 of the mean loss at the training horizon and at twice it, averaged (``eval.select_at:
both``, the two points the comparison reports), or at the horizon alone (``horizon``); then
every optimizer trains the same fresh test problems for twice the horizon, and the loss at
every step is reported (mean over the problems whose loss stayed finite, its 95 % interval,
how many diverged), with the log10 of the mean final loss at the horizon and at twice it.
For a problem whose data is redrawn mid-trajectory (``task.redraw_at``), also how many steps
after the redraw each optimizer needs to get back to its loss just before it.

Validation problems are the trajectories ``(seed, 1, i)``, test problems ``(seed, 0, i)``:
disjoint, and neither among the training ones for the default seed (``eval.seed``, else the
run's seed + 1). With ``eval.checkpoint: best`` the learned optimizer is chosen on the same
validation problems by the same score, among the run's checkpoints and final weights, as
a baseline's learning rate is among the grid's: meta-training that was unstable at its end
is judged by its best point, not by where it happened to stop.

All optimizers train the problems at once: the parameters of every problem are stacked, the
loss is the sum of the problems' losses (``vmap``), and each optimizer is one
``torch.optim`` optimizer over the stacked tensors. SGD, Adam, RMSprop and the LSTM act on
each coordinate alone, so this is the same as one optimizer per problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from distmeta.experiment import build_task_source
from distmeta.optim import LearnedOptimizer
from distmeta.runs.evaluate import EvalResult, _finite_mean_ci
from distmeta.runs.finished import Run
from distmeta.tasks import ProblemFamily, TaskId, Unroll

__all__ = [
    "BASELINES",
    "LEARNING_RATES",
    "OptimizerComparison",
    "OptimizerCurve",
    "compare_optimizers",
    "learned_optimizer",
    "learned_optimizer_curve",
    "loss_curves",
]

LEARNING_RATES = tuple(round(10.0 ** (k / 2), 6) for k in range(-8, 1))
"""The grid every baseline is tuned on: 1e-4, 3.2e-4, 1e-3, ..., 0.32, 1 (half decades)."""

BASELINES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
}
"""The hand-designed optimizers a learned one is compared with (``torch.optim``, defaults but
the learning rate)."""

VALIDATION_PROBLEMS = 32
"""Problems each learning rate of the grid is measured on."""

SELECTION_STEPS: dict[str, Callable[[int], tuple[int, ...]]] = {
    "horizon": lambda horizon: (horizon,),
    "both": lambda horizon: (horizon, 2 * horizon),
}
"""The validation steps a learning rate or checkpoint is scored at, by ``eval.select_at``:
the training horizon, or it and twice it (the two points the comparison reports)."""

MakeOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def loss_curves(
    model: nn.Module,
    family: ProblemFamily,
    names: list[TaskId],
    optimizers: dict[str, MakeOptimizer],
    steps: int,
) -> dict[str, torch.Tensor]:
    """The loss of every problem at optimizee steps ``0..steps`` under each optimizer:
    ``{name: [problems, steps + 1]}`` (float64; the loss at step ``k`` is the one whose
    gradient step ``k`` takes). All optimizers see the same problems and data."""
    loss_fn = family.loss_fn()
    reference = next(model.parameters())

    def one_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        return loss_fn(functional_call(model, params, (x,)), y)

    batched_loss = vmap(one_loss)
    initial = [family.initial_params(model, name) for name in names]
    runs = {}
    for label, make in optimizers.items():
        params = {
            n: torch.stack([p[n] for p in initial]).to(reference).requires_grad_()
            for n in initial[0]
        }
        runs[label] = (params, make(list(params.values())))
    curves: dict[str, list[torch.Tensor]] = {label: [] for label in optimizers}
    for k in range(steps + 1):
        data = Unroll.of(family, names, [k] * len(names), 1).to(reference.device, reference.dtype)
        x, y = data.inputs[:, 0], data.targets[:, 0]
        for label, (params, optimizer) in runs.items():
            losses = batched_loss(params, x, y)
            curves[label].append(losses.detach().double().cpu())
            if k < steps:
                optimizer.zero_grad()
                losses.sum().backward()
                optimizer.step()
    return {label: torch.stack(values, dim=1) for label, values in curves.items()}


def _mean_finite(losses: torch.Tensor) -> float:
    """The mean of the finite entries, infinite when none is."""
    finite = losses[losses.isfinite()]
    return float(finite.mean()) if finite.numel() else math.inf


def _log10(value: float) -> float:
    return math.log10(value) if 0 < value < math.inf else (math.inf if value > 0 else -math.inf)


@dataclass
class OptimizerCurve:
    """One optimizer on the test problems.

    ``loss`` is, at each step ``0..2 * horizon``, the mean over the problems whose loss is
    finite, ``loss_ci95`` its normal 95 % half-width, ``diverged`` how many are not finite.
    """

    lr: float | None
    """The learning rate chosen on validation problems (``None`` for the learned one)."""
    loss: list[float]
    loss_ci95: list[float]
    diverged: list[int]
    log10_final: dict[str, float]
    """``{"<horizon>": log10 mean loss at the horizon, "<2 horizon>": at twice it}``."""
    grid: dict[str, float] = field(default_factory=dict)
    """The validation score (``eval.select_at``: mean log10 loss at the horizon and twice it,
    or at the horizon) per learning rate (for the learned optimizer with ``eval.checkpoint:
    best``, per meta-training step)."""
    step: int | None = None
    """The learned optimizer's meta-training step (``None`` for the baselines)."""
    recovery_steps: int | None = None
    """With a redraw: steps after it until the mean loss is back at its value just before
    (``None``: not within twice the horizon, or no redraw)."""

    @staticmethod
    def of(curve: torch.Tensor, horizon: int, lr: float | None, redraw: int | None):
        finite = curve.isfinite()
        means, halves = _finite_mean_ci(curve, finite)
        ends = {str(horizon): horizon, str(curve.shape[1] - 1): curve.shape[1] - 1}
        result = OptimizerCurve(
            lr=lr,
            loss=means,
            loss_ci95=halves,
            diverged=(~finite).sum(dim=0).tolist(),
            log10_final={key: _log10(_mean_finite(curve[:, step])) for key, step in ends.items()},
        )
        if redraw is not None and 0 < redraw < len(means):
            result.recovery_steps = steps_to(means, redraw, means[redraw - 1])
        return result


def steps_to(loss: list[float], start: int, level: float) -> int | None:
    """Steps from step ``start`` (a redraw, or 0) until the mean ``loss`` is at most ``level``
    (``None``: never within the curve)."""
    reached = [k for k in range(start, len(loss)) if loss[k] <= level]
    return reached[0] - start if reached else None


@dataclass
class OptimizerComparison:
    """A learned optimizer against tuned SGD, Adam and RMSprop on ``problems`` fresh problems."""

    problems: int
    horizon: int
    """The training horizon (optimizee steps of a training trajectory)."""
    steps: list[int]
    curves: dict[str, OptimizerCurve]
    """``learned``, ``sgd``, ``adam``, ``rmsprop``."""
    redraw_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (infinite values as the strings ``"inf"``, ``"-inf"``)."""

        def plain(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))


def compare_optimizers(
    run: Run, tasks: int | None = None, seed: int | None = None
) -> OptimizerComparison:
    """The run's learned optimizer against SGD, Adam and RMSprop, each at its best learning
    rate on :data:`LEARNING_RATES` (see the module description).

    Args:
        run: A run holding a learned optimizer (``algorithm.inner_rule: lstm``).
        tasks: Test problems (default ``eval.tasks``).
        seed: Seed of the validation and test problems (default ``eval.seed``, else the
            run's seed + 1).
    """
    config = run.config
    tasks = tasks or config.eval.tasks
    if seed is None:
        seed = config.eval.seed if config.eval.seed is not None else config.seed + 1
    family = build_task_source(config, split="eval")
    horizon = config.algorithm.unroll.horizon

    validation = [(seed, 1, i) for i in range(VALIDATION_PROBLEMS)]
    candidates = {
        (name, lr): (lambda ps, make=make, lr=lr: make(ps, lr=lr))
        for name, make in BASELINES.items()
        for lr in LEARNING_RATES
    }
    scored_at = SELECTION_STEPS[config.eval.select_at](horizon)
    tuned = loss_curves(run.model, family, validation, candidates, scored_at[-1])
    grids: dict[str, dict[str, float]] = {name: {} for name in BASELINES}
    best: dict[str, float] = {}
    for (name, lr), curve in tuned.items():
        grids[name][f"{lr:g}"] = _validation_score(curve, scored_at)
    for name, grid in grids.items():
        best[name] = min(LEARNING_RATES, key=lambda lr, grid=grid: grid[f"{lr:g}"])
    learned, checkpoints = run, {}
    if config.eval.checkpoint == "best":
        learned, checkpoints = _best_checkpoint(run, family, validation, scored_at)

    test = [(seed, 0, i) for i in range(tasks)]
    optimizers: dict[str, MakeOptimizer] = {
        "learned": learned_optimizer(learned),
        **{
            name: (lambda ps, make=BASELINES[name], lr=best[name]: make(ps, lr=lr))
            for name in BASELINES
        },
    }
    curves = loss_curves(run.model, family, test, optimizers, 2 * horizon)
    redraw = getattr(config.task, "redraw_at", None)
    summaries = {
        name: OptimizerCurve.of(curve, horizon, best.get(name), redraw)
        for name, curve in curves.items()
    }
    for name, grid in grids.items():
        summaries[name].grid = grid
    summaries["learned"].grid, summaries["learned"].step = checkpoints, learned.step
    return OptimizerComparison(tasks, horizon, list(range(2 * horizon + 1)), summaries, redraw)


def _validation_score(curve: torch.Tensor, steps: tuple[int, ...]) -> float:
    """The mean over ``steps`` of log10 of the mean loss there, on validation curves
    ``[problems, steps]``; infinite where any problem's loss is not finite at one of them
    (such a candidate is never the best)."""
    if not curve[:, list(steps)].isfinite().all():
        return math.inf
    return sum(_log10(float(curve[:, step].mean())) for step in steps) / len(steps)


def _best_checkpoint(
    run: Run, family: ProblemFamily, validation: list[TaskId], scored_at: tuple[int, ...]
) -> tuple[Run, dict[str, float]]:
    """The run at its checkpoint (or final step) whose learned optimizer scores best on the
    validation problems at the steps ``scored_at``, and every candidate's score by step."""
    steps = sorted({*run.checkpoint_steps(), run.step})
    candidates = {step: run if step == run.step else run.at_checkpoint(step) for step in steps}
    curves = loss_curves(
        run.model,
        family,
        validation,
        {str(step): learned_optimizer(candidate) for step, candidate in candidates.items()},
        scored_at[-1],
    )
    scores = {step: _validation_score(curve, scored_at) for step, curve in curves.items()}
    chosen = min(candidates, key=lambda step: scores[str(step)])
    return candidates[chosen], scores


def learned_optimizer(run: Run) -> MakeOptimizer:
    """The run's learned optimizer as a factory: parameters -> a fresh
    :class:`~distmeta.optim.LearnedOptimizer` with the run's LSTM weights."""
    rule = run.algorithm.inner_rule
    weights = {n: p for n, p in run.params.items() if n.startswith("lstm.")}
    return lambda params: LearnedOptimizer(params, rule=rule, weights=weights)


def learned_optimizer_curve(
    run: Run, tasks: int | None = None, seed: int | None = None
) -> EvalResult:
    """The optimizee loss at steps ``0..horizon`` of the run's learned optimizer alone on
    fresh test problems (as :func:`compare_optimizers` measures it, without tuning the
    baselines): the curve a tracked run logs when it ends."""
    config = run.config
    tasks = tasks or config.eval.tasks
    if seed is None:
        seed = config.eval.seed if config.eval.seed is not None else config.seed + 1
    family = build_task_source(config, split="eval")
    names = [(seed, 0, i) for i in range(tasks)]
    horizon = config.algorithm.unroll.horizon
    curve = loss_curves(run.model, family, names, {"learned": learned_optimizer(run)}, horizon)
    return EvalResult.of(curve["learned"].unsqueeze(-1))
