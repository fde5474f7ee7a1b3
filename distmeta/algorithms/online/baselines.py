"""The baselines that run beside an online meta-learner on the same stream (OSAKA's):
a fixed model, the meta-learned initialisation adapted but never meta-updated, and models
trained online from a jointly trained start or from scratch."""

from __future__ import annotations

import copy
from typing import Any

import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.inner import Params
from distmeta.algorithms.online.method import OnlineUpdate, cloned, predict_with

__all__ = ["FrozenMeta", "NoAdaptation", "OnlineTraining"]


class NoAdaptation:
    """A fixed model that never learns on the stream: the jointly trained model.

    Args:
        algorithm: Gives the network's forward pass.
        params: The model's parameters.

    Example:
        >>> baseline = NoAdaptation(algorithm, joint_params)
        >>> prediction = baseline.predict(None, batch.x)
    """

    meta_learned = False
    told_switches = False

    def __init__(self, algorithm: MetaAlgorithm, params: Params):
        self.algorithm = algorithm
        self.params = cloned(algorithm.model_params(params))

    def predict(self, meta: Params | None, x: torch.Tensor) -> torch.Tensor:
        return self.algorithm.forward(self.params, x)

    def observe(
        self, meta: Params | None, x: torch.Tensor, y: torch.Tensor, switch: bool | None = None
    ) -> OnlineUpdate:
        return OnlineUpdate()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing changes between steps."""


class FrozenMeta:
    """The meta-learned initialisation, adapted to every batch, never meta-updated (what
    OSAKA calls MAML on its streams).

    Each batch is predicted by the initialisation adapted (the algorithm's inner loop) on the
    previous batch; the first by the initialisation itself.

    Args:
        algorithm: The meta-learning algorithm of the pretrained run (its inner loop).
        initial: Its meta-parameters.
        steps: Inner steps of each adaptation (``None``: the algorithm's own).

    Example:
        >>> baseline = FrozenMeta(run.algorithm, run.params)
        >>> baseline.observe(None, batch.x, batch.y)  # adapts for the next batch
    """

    meta_learned = False
    told_switches = False

    def __init__(self, algorithm: MetaAlgorithm, initial: Params, steps: int | None = None):
        self.algorithm, self.steps = algorithm, steps
        self.initial = cloned(initial)
        self.fast: Params | None = None

    def predict(self, meta: Params | None, x: torch.Tensor) -> torch.Tensor:
        return predict_with(self.algorithm, self.fast, self.initial, x)

    def observe(
        self, meta: Params | None, x: torch.Tensor, y: torch.Tensor, switch: bool | None = None
    ) -> OnlineUpdate:
        self.fast = self.algorithm.adapt(self.initial, x, y, self.steps)
        return OnlineUpdate()

    def state_dict(self) -> dict[str, Any]:
        return {"fast": cloned(self.fast)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fast = cloned(state["fast"])


class OnlineTraining:
    """A model trained on every revealed batch with Adam: ``finetune`` (starting from the
    jointly trained model) and ``online_sgd`` (from a fresh initialisation).

    Adam, as OSAKA's online baselines use it (its ``online_sgd`` is trained by Adam too).

    Args:
        algorithm: Gives the network's forward pass and loss.
        start: The model's starting parameters.
        lr: Adam's learning rate.
        steps: Gradient steps on each revealed batch.

    Example:
        >>> baseline = OnlineTraining(algorithm, joint_params, lr=1e-3)
        >>> baseline.observe(None, batch.x, batch.y)  # one Adam step on the batch
    """

    meta_learned = False
    told_switches = False

    def __init__(self, algorithm: MetaAlgorithm, start: Params, lr: float, steps: int = 1):
        if not lr > 0 or steps < 1:
            raise ValueError(f"lr must be positive and steps >= 1, got {lr} and {steps}")
        self.algorithm, self.steps = algorithm, steps
        self.weights = {
            name: p.detach().clone().requires_grad_()
            for name, p in algorithm.model_params(start).items()
        }
        self.optimizer = torch.optim.Adam(self.weights.values(), lr=lr)

    def predict(self, meta: Params | None, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.algorithm.forward(self.weights, x)

    def observe(
        self, meta: Params | None, x: torch.Tensor, y: torch.Tensor, switch: bool | None = None
    ) -> OnlineUpdate:
        for _ in range(self.steps):
            self.optimizer.zero_grad()
            with torch.enable_grad():
                self.algorithm.loss_fn(self.algorithm.forward(self.weights, x), y).backward()
            self.optimizer.step()
        return OnlineUpdate()

    def state_dict(self) -> dict[str, Any]:
        # Adam updates its moments in place: the state must not alias them.
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        return {"weights": cloned(self.weights), "optimizer": optimizer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["weights"].items():
                self.weights[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
