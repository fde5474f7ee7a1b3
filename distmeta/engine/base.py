"""The contract between the training loop and an engine (where steps run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from distmeta.engine.learner import Learner

__all__ = ["Engine", "LearnerRestored", "checkpoint_params"]


class LearnerRestored(Exception):
    """The learner was lost and restored from the checkpoint at ``step``: the loop rewinds.

    Tasks are named by ``(seed, step, index)``, so recomputing the steps after ``step`` gives
    the same parameters as a run that never failed.
    """

    def __init__(self, step: int):
        super().__init__(f"learner restored from the checkpoint of step {step}")
        self.step = step


class Engine(Protocol):
    """Runs outer steps; the training loop only sees this interface."""

    def run(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        """Apply the outer updates ``start..stop-1`` and yield each one's metrics, in order.

        When the iterator is exhausted every update before ``stop`` is applied and none
        after, so :meth:`state_dict` then describes exactly version ``stop``. Metric names
        ending in ``_max`` are maxima and those ending in ``_count`` are counts when several
        steps are summarised; the others are means. Raises :class:`LearnerRestored` when the
        loop must rewind.
        """
        ...

    def params(self) -> dict[str, torch.Tensor]:
        """The current meta-parameters, on the CPU."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (parameters, optimizer state, version).
        Raises :class:`LearnerRestored` when the loop must rewind."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release workers, actors and devices."""
        ...


def checkpoint_params(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The meta-parameters in an engine's :meth:`Engine.state_dict` (a checkpoint's
    ``engine`` entry), on the CPU. Every engine keeps its learner's state under
    ``learner``.

    Raises:
        KeyError, TypeError: ``state`` is not an engine state.
    """
    return Learner.params_of(state["learner"])
