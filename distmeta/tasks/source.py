"""What every task source offers: tasks rebuilt from ``(seed, step, index)`` alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from distmeta.tasks.batch import TaskBatch

__all__ = ["TaskSource", "task_rng"]


def task_rng(seed: int, step: int, index: int, stream: int = 0) -> np.random.Generator:
    """A random generator determined by ``(seed, step, index)`` alone.

    Philox is counter-based: the key is the seed and the counter's high words are the step and
    task index, so every task owns a disjoint stream of 2**128 draws, any process can rebuild
    any task without replaying the others, and building one costs microseconds.
    ``stream`` separates independent uses of the same task name (e.g. train and validation).
    """
    if min(seed, step, index, stream) < 0:
        raise ValueError(f"task name must be non-negative, got {(seed, step, index)}")
    return np.random.Generator(np.random.Philox(key=seed, counter=[0, stream, step, index]))


@runtime_checkable
class TaskSource(Protocol):
    """A distribution of tasks that any process can sample identically."""

    kind: str
    """``"regression"`` or ``"classification"``."""

    def sample(self, seed: int, step: int, indices: Sequence[int]) -> TaskBatch:
        """The tasks ``(seed, step, i)`` for ``i`` in ``indices``, stacked."""
        ...

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss of a prediction against targets."""
        ...
