"""The contract between the training loop and an engine (where steps run)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["Engine", "LearnerRestored"]


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

    def train_step(self, step: int) -> dict[str, float]:
        """Apply one outer update whose tasks are ``(seed, step, i)``; return its metrics."""
        ...

    def params(self) -> dict[str, torch.Tensor]:
        """The current meta-parameters, on the CPU."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (parameters, optimizer state, version)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release workers, actors and devices."""
        ...
