"""The local engine: every step in this process. The reference and the default."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from distmeta.config import ExperimentConfig
from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.engine.schedule import OuterLRSchedule, rule_lr_factors
from distmeta.experiment import build_experiment

__all__ = ["LocalEngine"]


class LocalEngine:
    """Samples the meta-batch of each step, computes its meta-gradient and applies it.

    Args:
        config: The experiment.
    """

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.experiment = build_experiment(config)
        initial = self.experiment.algorithm.init_params()
        self.layout = ParamLayout.of(initial)
        self.learner = Learner(
            self.layout,
            self.layout.flatten(initial),
            config.algorithm.outer_optimizer,
            OuterLRSchedule.of(config),
            rule_lr_factors(config, self.experiment.algorithm),
            config.algorithm.outer_clip_norm,
        )

    def run(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        exp = self.experiment
        for step in range(start, stop):
            batch = exp.plan.batch(exp.source, step).to(exp.device)
            total = exp.algorithm.meta_gradient_sum(self.learner.params(), batch)
            self.learner.apply(self.layout.flatten(total.mean(exp.dtype)))
            yield total.mean_stats()

    def params(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().clone() for name, p in self.learner.params().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])

    def close(self) -> None:
        """Nothing to release in one process."""
