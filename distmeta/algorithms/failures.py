"""Naming the task that broke a meta-batch: its ``(seed, step, index)`` and what went wrong.

A batch is computed in one go (vectorised, or on several threads), so a non-finite value in
the sum does not say which task produced it. These functions go back over the tasks one at a
time and raise :class:`~distmeta.errors.TaskFailedError` for the first that raises or is not
finite: an engine can then retry it or stop the run naming it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distmeta.errors import TaskFailedError
from distmeta.tasks.batch import TaskBatch

__all__ = ["find_failing_task", "task_failure"]

OneTask = Callable[[int], tuple[dict[str, torch.Tensor], torch.Tensor]]


def task_failure(batch: TaskBatch, index: int, reason: str) -> TaskFailedError:
    """The error for task ``index`` of ``batch``, named by its id when the batch has ids."""
    task_id = batch.task_id(index)
    if task_id is None:
        reason = f"{reason} (task {index} of the batch)"
    return TaskFailedError(task_id, reason)


def find_failing_task(one_task: OneTask, batch: TaskBatch) -> None:
    """Raise for the first task of ``batch`` whose ``one_task(index) -> (gradient, metrics)``
    raises (``one_task`` names it) or is not finite; return if every task is fine."""
    for index in range(len(batch)):
        grads, stats = one_task(index)
        if not bool(stats.isfinite().all()):
            raise task_failure(batch, index, "the query loss is not finite")
        bad = sorted(name for name, g in grads.items() if not bool(g.isfinite().all()))
        if bad:
            raise task_failure(batch, index, f"the meta-gradient is not finite in {bad}")
