"""The outer learning rate at each step: ``outer_lr``, or ``outer_lr`` held and then annealed.

A pure function of the step, so a resumed, restarted or extended run sets the same rate as an
uninterrupted one without any state of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distmeta.config import ExperimentConfig, OuterLRDecay

if TYPE_CHECKING:
    from distmeta.algorithms.base import MetaAlgorithm

__all__ = ["OuterLRSchedule", "rule_lr_factors"]


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


def rule_lr_factors(config: ExperimentConfig, algorithm: MetaAlgorithm) -> dict[str, float]:
    """The inner rule's meta-parameters (those of ``algorithm`` that are not the model's) at
    ``algorithm.rule_outer_lr``, as factors of the schedule's rate: a
    :class:`~distmeta.engine.learner.Learner`'s ``lr_factors``. None where the rule steps at
    ``outer_lr`` (the config refuses ``rule_outer_lr`` for ``l2l``, which meta-trains the
    rule alone)."""
    rate = config.algorithm.rule_outer_lr
    if rate is None:
        return {}
    model = set(algorithm.model_param_names)
    factor = rate / config.algorithm.outer_lr
    return {name: factor for name in algorithm.param_names if name not in model}
