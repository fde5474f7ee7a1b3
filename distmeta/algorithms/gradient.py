"""A meta-gradient summed over some tasks, exactly, so that it adds up the same everywhere.

Engines split a meta-batch among workers in different ways; for the parameters to come out
bit-for-bit the same, the sum of the per-task gradients must not depend on how it was split.
Floating-point addition is not associative, so each sum is kept as an unevaluated pair
``(sum, residual)`` built with error-free transformations (Knuth's TwoSum): ``sum + residual``
is the exact sum of the float32 (or float64) per-task gradients, in practice, whatever the
order and grouping. Rounding happens once, when the mean is taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["ACCUMULATOR_DTYPE", "GradientSum", "compensated_sum", "two_sum"]

ACCUMULATOR_DTYPE = torch.float64


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e == a + b`` exactly (Knuth, 1969)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def compensated_sum(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the first dimension as an exact ``(sum, residual)`` pair.

    A pairwise tree of :func:`two_sum` (a few vectorised operations per level, not one per
    row); the residuals of all additions are summed alongside. Input is promoted to
    :data:`ACCUMULATOR_DTYPE`.
    """
    sums = stacked.to(ACCUMULATOR_DTYPE)
    residuals = torch.zeros_like(sums)
    while sums.shape[0] > 1:
        pairs = sums.shape[0] // 2
        s, e = two_sum(sums[0 : 2 * pairs : 2], sums[1 : 2 * pairs : 2])
        r = residuals[0 : 2 * pairs : 2] + residuals[1 : 2 * pairs : 2] + e
        if sums.shape[0] % 2:
            s, r = torch.cat([s, sums[-1:]]), torch.cat([r, residuals[-1:]])
        sums, residuals = s, r
    return sums[0], residuals[0]


@dataclass
class GradientSum:
    """Sum of per-task meta-gradients and metrics over ``count`` tasks.

    Args:
        grads: Per-parameter leading sums in :data:`ACCUMULATOR_DTYPE`.
        residuals: Per-parameter corrections: ``grads + residuals`` is the exact sum.
        count: Number of tasks summed.
        stats: Sums of per-task metrics (``loss``; ``accuracy`` for classification).
    """

    grads: dict[str, torch.Tensor]
    residuals: dict[str, torch.Tensor]
    count: int
    stats: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def zeros_like(params: dict[str, torch.Tensor]) -> GradientSum:
        zeros = {n: torch.zeros_like(p, dtype=ACCUMULATOR_DTYPE) for n, p in params.items()}
        return GradientSum(zeros, {n: z.clone() for n, z in zeros.items()}, 0)

    def add_task(self, grads: dict[str, torch.Tensor]) -> None:
        """Add one task's gradient exactly."""
        for name, g in grads.items():
            s, e = two_sum(self.grads[name], g.to(ACCUMULATOR_DTYPE))
            self.grads[name], self.residuals[name] = s, self.residuals[name] + e
        self.count += 1

    def mean(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The mean gradient over the summed tasks, rounded once into ``dtype``."""
        if self.count <= 0:
            raise ValueError("cannot average a gradient over zero tasks")
        return {
            name: ((g + self.residuals[name]) / self.count).to(dtype)
            for name, g in self.grads.items()
        }

    def mean_stats(self) -> dict[str, float]:
        return {name: value / self.count for name, value in self.stats.items()}

    @staticmethod
    def total(parts: Iterable[GradientSum]) -> GradientSum:
        """Add sums exactly, so that neither order nor grouping changes the result.

        The one exact addition of partial sums in distmeta: the learner adds the slices of
        the workers with it, and so do the reduction tree and every transport (through
        :func:`~distmeta.engine.ray_engine.messages.merge_results`). No part is written to.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("no gradient sums to add")
        grads = {name: g.clone() for name, g in parts[0].grads.items()}
        residuals = {name: r.clone() for name, r in parts[0].residuals.items()}
        stats = dict(parts[0].stats)
        for part in parts[1:]:
            for name, g in part.grads.items():
                s, e = two_sum(grads[name], g.to(grads[name].device))
                grads[name] = s
                residuals[name] = residuals[name] + part.residuals[name].to(s.device) + e
            for name, value in part.stats.items():
                stats[name] = stats.get(name, 0.0) + value
        return GradientSum(grads, residuals, sum(p.count for p in parts), stats)
