"""What travels between the driver, task workers and the learner (small, versioned)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from distmeta.algorithms.gradient import GradientSum
from distmeta.engine.fleet import StreamRecord

__all__ = ["ParamsMessage", "SliceResult", "StreamChunk", "merge_results"]

_FLAT = "flat"
"""The one entry of a slice's sum as a :class:`GradientSum`: all parameters, flattened."""


@dataclass(frozen=True)
class ParamsMessage:
    """The meta-parameters at one version: a flat float array read zero-copy by workers."""

    version: int
    flat: np.ndarray


@dataclass(frozen=True)
class SliceResult:
    """The finished meta-gradient of tasks ``(seed, step, start..stop-1)``.

    ``grad_sum + residual`` is the exact sum of their per-task meta-gradients (see
    :mod:`distmeta.algorithms.gradient`), computed on the parameters of ``version``.
    ``stats`` are sums of per-task metrics; ``compute_s`` is the longest time one worker
    spent computing any part of it (for the overhead benchmark).
    """

    step: int
    start: int
    stop: int
    version: int
    grad_sum: np.ndarray
    residual: np.ndarray
    stats: dict[str, float]
    compute_s: float

    @property
    def count(self) -> int:
        return self.stop - self.start

    def mean_gradient(self) -> torch.Tensor:
        """The mean over the tasks, rounded once from the exact sum."""
        return (_read_only(self.grad_sum) + _read_only(self.residual)) / self.count

    def mean_stats(self) -> dict[str, float]:
        return {name: value / self.count for name, value in self.stats.items()}

    def gradient_sum(self) -> GradientSum:
        """The sum as a :class:`GradientSum` of one flat tensor (views of the arrays, which
        results read from Ray hold read-only: only read)."""
        return GradientSum(
            {_FLAT: _read_only(self.grad_sum)},
            {_FLAT: _read_only(self.residual)},
            self.count,
            dict(self.stats),
        )


def _read_only(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns of non-writable arrays
        return torch.from_numpy(array)


def merge_results(results: list[SliceResult]) -> SliceResult:
    """One result for adjacent slices of the same step and version, added exactly
    (:meth:`~distmeta.algorithms.gradient.GradientSum.total`, the one exact sum).

    Exact addition makes the merged sum independent of the grouping, so the learner may
    add all slices itself or receive them pre-merged by a reduction tree and apply the
    same bits. Raises ``ValueError`` when the slices overlap, leave a gap or disagree.
    """
    ordered = sorted(results, key=lambda r: r.start)
    first = ordered[0]
    bounds = [(r.start, r.stop) for r in ordered]
    for before, after in pairwise(ordered):
        if after.start != before.stop or (after.step, after.version) != (first.step, first.version):
            raise ValueError(
                f"step {first.step}: slices {bounds} are not adjacent parts of one step"
            )
    if len(ordered) == 1:
        return first
    total = GradientSum.total(result.gradient_sum() for result in ordered)
    return SliceResult(
        first.step,
        first.start,
        ordered[-1].stop,
        first.version,
        total.grads[_FLAT].numpy(),
        total.residuals[_FLAT].numpy(),
        total.stats,
        max(r.compute_s for r in ordered),
    )


@dataclass(frozen=True)
class StreamChunk:
    """A fleet worker's report of one chunk of steps of its streams (the meta-gradients
    travel apart, as one :class:`SliceResult` per meta-learned learner, straight to its
    learner).

    Args:
        records: Each stream's record of the chunk's steps.
        counts: Meta-gradients each learner's result sums (0: nothing to apply).
        compute_s: Seconds the worker computed.
    """

    records: list[StreamRecord]
    counts: dict[str, int]
    compute_s: float
