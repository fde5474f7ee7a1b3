"""The variable of the DeepMind quadratic problems: one ``x`` per independent problem."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QuadraticVariable"]


class QuadraticVariable(nn.Module):
    """``x`` of a batch of quadratic problems ``||W_b x_b - y_b||^2`` (the optimizee of
    :class:`~distmeta.tasks.Quadratic`): called with the matrices ``W [problems, dims,
    dims]``, it returns ``W_b x_b`` for every problem ``b``.

    Args:
        problems: Independent problems in the batch (128 in the reference implementation).
        dims: Dimension of each problem's ``x``.
    """

    def __init__(self, problems: int = 128, dims: int = 10):
        super().__init__()
        if min(problems, dims) <= 0:
            raise ValueError(f"problems and dims must be positive, got {(problems, dims)}")
        self.x = nn.Parameter(torch.zeros(problems, dims))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return (w @ self.x.unsqueeze(-1)).squeeze(-1)
