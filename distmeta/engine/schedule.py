"""The outer learning rate at each step: ``outer_lr``, or ``outer_lr`` held and then annealed.

A pure function of the step, so a resumed, restarted or extended run sets the same rate as an
uninterrupted one without any state of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distmeta.config import ExperimentConfig, OuterLRDecay

__all__ = ["OuterLRSchedule"]


@dataclass(frozen=True)
class OuterLRSchedule:
    """``lr`` for every step, or until ``decay.start`` and then down to ``decay.final * lr``
    at step ``steps``."""

    lr: float
    steps: int = 0
    decay: OuterLRDecay | None = None

    @classmethod
    def of(cls, config: ExperimentConfig) -> OuterLRSchedule:
        algorithm = config.algorithm
        return cls(algorithm.outer_lr, config.train.steps, algorithm.outer_lr_decay)

    def __call__(self, step: int) -> float:
        """The rate of the update that turns version ``step`` into ``step + 1``."""
        decay = self.decay
        if decay is None or step < decay.start:
            return self.lr
        progress = min((step - decay.start) / max(self.steps - decay.start, 1), 1.0)
        if decay.shape == "cosine":
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            remaining = 1.0 - progress
        return self.lr * (decay.final + (1.0 - decay.final) * remaining)
