"""A meta-gradient summed over some tasks, in a form that adds up the same way everywhere."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["ACCUMULATOR_DTYPE", "GradientSum"]

ACCUMULATOR_DTYPE = torch.float64
"""Per-task gradients are summed in float64: a float32 gradient's 24-bit mantissas then add
without rounding in practice, so the sum does not depend on how tasks were split among
workers, and the mean rounds to the same float32 value in every engine."""


@dataclass
class GradientSum:
    """Sum of per-task meta-gradients and metrics over ``count`` tasks.

    Args:
        grads: Per-parameter sums in :data:`ACCUMULATOR_DTYPE`.
        count: Number of tasks summed.
        stats: Sums of per-task metrics (``loss``; ``accuracy`` for classification).
    """

    grads: dict[str, torch.Tensor]
    count: int
    stats: dict[str, float] = field(default_factory=dict)

    def mean(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The mean gradient over the summed tasks, in the parameters' dtype."""
        if self.count <= 0:
            raise ValueError("cannot average a gradient over zero tasks")
        return {name: (g / self.count).to(dtype) for name, g in self.grads.items()}

    def mean_stats(self) -> dict[str, float]:
        return {name: value / self.count for name, value in self.stats.items()}

    def to(self, device: torch.device | str) -> GradientSum:
        return GradientSum({k: v.to(device) for k, v in self.grads.items()}, self.count, self.stats)

    @staticmethod
    def total(parts: Iterable[GradientSum]) -> GradientSum:
        """Add sums in the given order (callers pass them in task order)."""
        parts = list(parts)
        if not parts:
            raise ValueError("no gradient sums to add")
        grads = {name: g.clone() for name, g in parts[0].grads.items()}
        stats = dict(parts[0].stats)
        for part in parts[1:]:
            for name, g in part.grads.items():
                grads[name] += g.to(grads[name].device)
            for name, value in part.stats.items():
                stats[name] = stats.get(name, 0.0) + value
        return GradientSum(grads, sum(p.count for p in parts), stats)
