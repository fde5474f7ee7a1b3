"""What every stream offers: one labelled batch of its current task per time step.

A stream is a task source whose task at step ``t`` depends on ``t``: its switches and drift
are functions of its seed and ``t`` (:mod:`.switching`), so any process rebuilds step ``t``
of stream ``(seed, index)`` without the steps before it. Each batch also carries the truth
about the stream (the mode, whether a switch happened, which task it is) for evaluation only:
online learners never see it (the oracle is told the switches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from distmeta.tasks.switching import Schedule

__all__ = ["Stream", "StreamBatch"]


@dataclass(frozen=True)
class StreamBatch:
    """Step ``step`` of a stream: inputs, labels and the truth kept for evaluation.

    Args:
        step: The time step.
        x: ``[n, *input_shape]`` inputs.
        y: ``[n, outputs]`` targets (regression) or ``[n]`` class ids (classification).
        mode: Mode of the current task (0 in-distribution; 1, 2 out of distribution).
        switch: Whether a new task begins at this step.
        task: Which task this is: the same number whenever the same task comes back
            (a pendulum regime), else the segment's number.
    """

    step: int
    x: torch.Tensor
    y: torch.Tensor
    mode: int
    switch: bool
    task: int


@runtime_checkable
class Stream(Protocol):
    """One concrete stream of tasks, named by the run's seed and its index in a fleet."""

    kind: str
    """``"regression"`` or ``"classification"``."""
    input_shape: tuple[int, ...]
    output_size: int
    mode_names: tuple[str, str, str]
    """Names of the modes, in-distribution first (reports and plots use them)."""
    schedule: Schedule

    def __len__(self) -> int:
        """Number of steps."""
        ...

    def batch(self, step: int) -> StreamBatch:
        """The labelled batch of step ``step``."""
        ...

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss of a prediction against targets."""
        ...
