"""What every online learner on a stream answers: predict a batch, then learn from its labels.

A learner never owns the meta-parameters it reads: the caller passes them in (a learner in
this process, or the fleet's learner actor on Ray) and applies the meta-gradient the learner
returns. So the same learner code runs alone on one stream and as one of many streams that
share a set of meta-parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.inner import Params

__all__ = [
    "Afresh",
    "OnlineLearner",
    "OnlineUpdate",
    "adapted_afresh",
    "cloned",
    "loss_of",
    "predict_with",
    "scaled",
]


@dataclass(frozen=True)
class OnlineUpdate:
    """What a learner did with a revealed batch.

    Args:
        gradient: The meta-gradient to apply to the meta-parameters it read (already scaled
            by the learner's modulation), or ``None`` for no meta-update.
        detected_switch: Whether the learner declared that a new task began at this batch;
            ``None`` for learners that do not look for switches.
        revised_switch: A second look at the previous batch's declaration: ``True`` where a
            task began there after all, ``False`` where the switch declared there is
            withdrawn, ``None`` where it stands.
    """

    gradient: Params | None = None
    detected_switch: bool | None = None
    revised_switch: bool | None = None


@runtime_checkable
class OnlineLearner(Protocol):
    """Predicts each batch of a stream before its labels are revealed, then learns from them.

    ``meta`` is the current shared meta-parameters for learners that read them
    (``meta_learned``), ``None`` for the others. ``switch`` is the truth about the stream and
    reaches only learners that are told it (``told_switches``: the oracle).
    """

    meta_learned: bool
    """Reads and updates the shared meta-parameters."""
    told_switches: bool
    """Is told where the switches are (the oracle): ``observe`` then gets ``switch``."""

    def predict(self, meta: Params | None, x: torch.Tensor) -> torch.Tensor:
        """The prediction for inputs ``x``, before their labels are known."""
        ...

    def observe(
        self, meta: Params | None, x: torch.Tensor, y: torch.Tensor, switch: bool | None = None
    ) -> OnlineUpdate:
        """Learn from the revealed batch ``(x, y)``; the meta-gradient to apply, if any."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything the learner carries between steps, so another process can go on."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def cloned(params: Params | None) -> Params | None:
    """Detached copies (a state that must not alias the caller's tensors)."""
    if params is None:
        return None
    return {name: p.detach().clone() for name, p in params.items()}


def scaled(gradient: Params, weight: float) -> Params:
    """``weight`` times every tensor of ``gradient``."""
    return {name: g * weight for name, g in gradient.items()}


def predict_with(
    algorithm: MetaAlgorithm, fast: Params | None, start: Params | None, x: torch.Tensor
) -> torch.Tensor:
    """The prediction of the fast weights ``fast``, or of the parameters ``start`` they are
    adapted from while there are none yet (a stream's first batch)."""
    weights = fast if fast is not None else algorithm.model_params(start)
    return algorithm.forward(weights, x)


def loss_of(algorithm: MetaAlgorithm, weights: Params, x: torch.Tensor, y: torch.Tensor) -> float:
    """The loss of ``weights`` on ``(x, y)``, without a graph."""
    with torch.no_grad():
        return float(algorithm.loss_fn(algorithm.forward(weights, x), y))


class Afresh(NamedTuple):
    """Weights adapted afresh on a batch, and their loss on it (scored once, used by the
    switch tests too)."""

    weights: Params
    loss: float


def adapted_afresh(
    algorithm: MetaAlgorithm,
    meta: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int | None,
) -> Afresh:
    """The weights adapted afresh from the meta-parameters ``meta`` on ``(x, y)`` by the
    algorithm's inner loop (``steps`` steps), unless that adaptation did not lower their loss
    on it: the inner rate overshot on a task steeper than the start was meta-trained for (a
    sinusoid's amplitude 5-10) or diverged. Then the meta-parameters' own weights, unadapted.
    A learner restarting at a switch must never take weights whose loss is not finite (the
    sinusoid's oracle did, BENCHMARKS.md, "Streams", stop 40), and a switch test must not
    compare with them (a loss minus NaN is never above a threshold: the switch goes
    undetected). The meta-parameters' own loss comes from the adaptation's first step."""
    adapted, start_loss = algorithm.adapt_scored(meta, x, y, steps)
    adapted_loss = loss_of(algorithm, adapted, x, y)
    if adapted_loss < start_loss:
        return Afresh(adapted, adapted_loss)
    return Afresh(cloned(algorithm.model_params(meta)), start_loss)
