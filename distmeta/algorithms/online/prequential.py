"""One step of prequential evaluation: every learner predicts the batch, is scored, and only
then sees its labels.

This is the protocol itself, so that one stream in this process and a fleet's streams in
Ray's task workers are scored the same way. The order is the guarantee: ``predict`` gets the
inputs alone, the score is taken from its answer, and ``observe`` gets the labels after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from distmeta.algorithms.inner import Params
from distmeta.algorithms.online.method import OnlineLearner
from distmeta.tasks.stream import StreamBatch

__all__ = ["Score", "prequential_step"]


@dataclass(frozen=True)
class Score:
    """How one learner did on one step: its loss (and accuracy for classification) on the
    batch before seeing its labels, whether it declared a switch there (``None`` for
    learners that do not look for switches), and how it revised the previous step's
    declaration (``None``: it did not)."""

    loss: float
    accuracy: float | None
    detected_switch: bool | None
    revised_switch: bool | None = None


def prequential_step(
    learners: Mapping[str, OnlineLearner],
    metas: Mapping[str, Params],
    batch: StreamBatch,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, Score], dict[str, Params]]:
    """Predict, score, then reveal ``batch`` to every learner.

    Args:
        learners: The learners on this stream, by name.
        metas: The meta-parameters each meta-learned learner reads, by name.
        batch: The step's batch; only the oracle (``told_switches``) gets its ``switch``.
        loss_fn: The stream's loss.

    Returns:
        Each learner's :class:`Score`, and the meta-gradients the meta-learned ones returned
        (by name; none for a learner that made no meta-update).
    """
    scores, gradients = {}, {}
    classification = not batch.y.is_floating_point()
    for name, learner in learners.items():
        meta = metas[name] if learner.meta_learned else None
        with torch.no_grad():
            prediction = learner.predict(meta, batch.x)
            loss = float(loss_fn(prediction, batch.y))
            accuracy = (
                float((prediction.argmax(dim=-1) == batch.y).float().mean())
                if classification
                else None
            )
        update = learner.observe(
            meta, batch.x, batch.y, batch.switch if learner.told_switches else None
        )
        scores[name] = Score(loss, accuracy, update.detected_switch, update.revised_switch)
        if update.gradient is not None:
            gradients[name] = update.gradient
    return scores, gradients
