"""Inner-loop update rules: how a task's fast weights move from one step to the next.

A rule is the Optax-style pair ``init`` / ``step`` and may own meta-parameters of its own
(Meta-SGD's learning rates, a learned optimizer's weights) and carry state between steps
(a learned optimizer's hidden state). Algorithms differentiate through ``step`` when the
rule's meta-parameters are learned.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["InnerRule", "MetaSGDRule", "Params", "SGDRule"]

Params = dict[str, torch.Tensor]


class InnerRule(Protocol):
    """One inner-loop step of gradient-based adaptation."""

    def meta_params(self, model_params: Params) -> Params:
        """The rule's own meta-parameters (empty for a fixed rule), keyed apart from the model's."""
        ...

    def init(self, meta: Params, fast: Params) -> Any:
        """State carried across the inner steps of one task."""
        ...

    def step(self, meta: Params, fast: Params, grads: Params, state: Any) -> tuple[Params, Any]:
        """Fast weights after one step, and the new state."""
        ...


class SGDRule:
    """Plain gradient descent with a fixed step size (MAML, first-order MAML, Reptile).

    Args:
        lr: Inner learning rate.
    """

    def __init__(self, lr: float):
        if not lr > 0:
            raise ValueError(f"inner learning rate must be positive, got {lr}")
        self.lr = float(lr)

    def meta_params(self, model_params: Params) -> Params:
        return {}

    def init(self, meta: Params, fast: Params) -> None:
        return None

    def step(self, meta: Params, fast: Params, grads: Params, state: None) -> tuple[Params, None]:
        # One operation per parameter (and one in each derivative), not a scaling then a
        # subtraction: the inner loop's steps are many small operations.
        return {name: torch.add(fast[name], grads[name], alpha=-self.lr) for name in fast}, None


class MetaSGDRule:
    """Gradient descent with a learned step size per parameter element (Li et al., 2017).

    Its meta-parameters are named ``<prefix><model parameter name>``, each shaped like the
    model parameter and initialised to ``lr``.

    Args:
        lr: Initial value of every learned step size.
        prefix: Of the rates' names: ``inner_lr.`` as the inner rule itself, another where a
            rule holds Meta-SGD's rates among its own parameters (the LSTM rule's
            ``start: metasgd``).
    """

    def __init__(self, lr: float, prefix: str = "inner_lr."):
        if not lr > 0:
            raise ValueError(f"initial inner learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.prefix = prefix

    def meta_params(self, model_params: Params) -> Params:
        return {self.prefix + name: torch.full_like(p, self.lr) for name, p in model_params.items()}

    def init(self, meta: Params, fast: Params) -> None:
        return None

    def step(self, meta: Params, fast: Params, grads: Params, state: None) -> tuple[Params, None]:
        return {name: fast[name] - meta[self.prefix + name] * grads[name] for name in fast}, None
