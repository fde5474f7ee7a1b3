"""What ``distmeta eval`` measures for each kind of run, chosen by its algorithm.

A run that meta-trained an initialisation (MAML, first-order MAML, Reptile) is measured by
adapting it to fresh tasks (:func:`~distmeta.runs.evaluate`); a run that meta-trained a
learned optimizer (``l2l``) by training fresh problems with it beside tuned hand-designed
optimizers (:func:`~distmeta.runs.compare_optimizers`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distmeta.runs.evaluate import EvalResult, evaluate
from distmeta.runs.finished import Run
from distmeta.runs.optimizers import compare_optimizers, learned_optimizer_curve

__all__ = ["CURVES", "EVALUATIONS", "curve_of_run", "evaluate_run"]

EVALUATIONS: dict[str, Callable[..., Any]] = {"l2l": compare_optimizers}
"""``algorithm.name`` -> its evaluation, called with the run, ``tasks`` and ``seed``, where it
is not :func:`~distmeta.runs.evaluate` (adaptation to fresh tasks)."""


def evaluate_run(run: Run, tasks: int | None = None, seed: int | None = None) -> Any:
    """The evaluation of ``run``'s kind on ``tasks`` fresh tasks (or problems) of ``seed``:
    an :class:`~distmeta.runs.EvalResult` or an :class:`~distmeta.runs.OptimizerComparison`,
    each with ``to_dict()``."""
    measure = EVALUATIONS.get(run.config.algorithm.name, evaluate)
    return measure(run, tasks=tasks, seed=seed)


CURVES: dict[str, Callable[..., EvalResult]] = {"l2l": learned_optimizer_curve}
"""``algorithm.name`` -> the loss curve a finished run is summarised by (a tracked run logs
it), where it is not the adaptation curve of :func:`~distmeta.runs.evaluate`: a learned
optimizer's is the optimizee's loss at each of its steps."""


def curve_of_run(run: Run, tasks: int | None = None) -> EvalResult:
    """The loss after each adaptation step (each optimizer step, for a learned optimizer) on
    ``tasks`` fresh tasks or problems."""
    return CURVES.get(run.config.algorithm.name, evaluate)(run, tasks=tasks)
