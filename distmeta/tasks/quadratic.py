"""The quadratic problems of "Learning to learn by gradient descent by gradient descent"."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from distmeta.tasks.batch import TaskId
from distmeta.tasks.source import task_rng

__all__ = ["Quadratic", "quadratic_loss"]


def quadratic_loss(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean over problems of ||W_b x_b - y_b||^2`` from the predictions ``W_b x_b``."""
    return (prediction - y).square().sum(dim=-1).mean()


class Quadratic:
    """Batches of quadratic problems ``f(x) = mean_b ||W_b x_b - y_b||^2``, exactly as in the
    reference implementation (``problems.quadratic`` of google-deepmind/learning-to-learn).

    Description:
        A trajectory optimises ``problems`` independent problems at once, each its own ``x_b``
        in ``dims`` dimensions; ``W_b`` and ``y_b`` are drawn from U[0, 1) and ``x_b`` starts
        at N(0, ``init_std``^2). With ``redraw_at``, the problem is non-stationary: from
        optimizee step ``redraw_at`` on, every ``W_b`` and ``y_b`` is drawn anew (the optimizer
        must notice the change and find the new minimum). Everything is drawn from
        :func:`~distmeta.tasks.source.task_rng` of the trajectory's name. The optimizee is
        :class:`~distmeta.models.QuadraticVariable`.

    Args:
        problems: Independent problems per trajectory (128 in the reference).
        dims: Dimension of each ``x_b`` (10).
        init_std: Standard deviation of the initial ``x`` (0.01).
        redraw_at: Optimizee step from which ``W`` and ``y`` are redrawn; ``None``: never.
        dtype: Floating-point type of the tensors.
    """

    kind = "regression"

    def __init__(
        self,
        problems: int = 128,
        dims: int = 10,
        init_std: float = 0.01,
        redraw_at: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if min(problems, dims) <= 0:
            raise ValueError(f"problems and dims must be positive, got {(problems, dims)}")
        if not init_std >= 0:
            raise ValueError(f"init_std must be non-negative, got {init_std}")
        if redraw_at is not None and redraw_at < 1:
            raise ValueError(f"redraw_at must be a positive step, got {redraw_at}")
        self.problems, self.dims = int(problems), int(dims)
        self.init_std, self.redraw_at, self.dtype = float(init_std), redraw_at, dtype
        self.input_shape = (self.dims, self.dims)
        self.output_size = self.dims

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return quadratic_loss

    def _problem(self, name: TaskId, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = task_rng(*name, stream=stream)
        w = rng.random((self.problems, self.dims, self.dims))
        y = rng.random((self.problems, self.dims))
        return torch.from_numpy(w).to(self.dtype), torch.from_numpy(y).to(self.dtype)

    def initial_params(self, model: nn.Module, name: TaskId) -> dict[str, torch.Tensor]:
        x = task_rng(*name, stream=2).normal(0.0, self.init_std, (self.problems, self.dims))
        return {"x": torch.from_numpy(np.asarray(x)).to(self.dtype)}

    def steps(self, name: TaskId, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        before = self._problem(name, 0)
        if self.redraw_at is None or first + count <= self.redraw_at:
            return before[0].expand(count, -1, -1, -1), before[1].expand(count, -1, -1)
        after = self._problem(name, 1)
        redrawn = torch.arange(first, first + count) >= self.redraw_at
        w = torch.where(redrawn.view(-1, 1, 1, 1), after[0], before[0])
        y = torch.where(redrawn.view(-1, 1, 1), after[1], before[1])
        return w, y

    def query_set(self, name: TaskId) -> tuple[torch.Tensor, torch.Tensor]:
        """The problem in force at the end of the trajectory (after any redraw)."""
        return self._problem(name, 0 if self.redraw_at is None else 1)
