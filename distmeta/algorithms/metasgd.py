"""Meta-SGD: meta-learn the initialisation and a step size per parameter element."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from distmeta.algorithms.base import Execution, LossFn, TaskThreads
from distmeta.algorithms.inner import MetaSGDRule
from distmeta.algorithms.maml import MAML

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """MAML whose inner loop uses learned, element-wise learning rates.

    Description:
        The inner update is ``fast <- fast - alpha * grad`` with ``alpha`` a tensor shaped like
        each parameter, meta-learned together with the initialisation through the
        second-order meta-gradient. ``init_params()`` holds the model's parameters under their
        own names and the rates under ``inner_lr.<name>``.

    Args:
        model: The network.
        loss_fn: Task loss.
        inner_lr: Initial value of every learned rate (default 0.01).
        inner_steps: Inner steps per task (default 1).
        execution: ``"auto"``, ``"loop"`` or ``"vmap"``.
        vmap_chunk_size: Tasks per vectorised call.
        compile: Compile the vectorised batch (see :class:`MetaAlgorithm`).
        zero_init: Model parameters that every task starts from zero (see
            :class:`MetaAlgorithm`); their learned rates are still meta-learned.
        task_threads: Tasks computed at once in a loop over tasks (see
            :class:`MetaAlgorithm`).

    References:
        Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. 2017.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        execution: Execution = "auto",
        vmap_chunk_size: int | None = None,
        compile: bool = False,
        zero_init: Sequence[str] = (),
        task_threads: TaskThreads = "auto",
    ):
        super().__init__(
            model,
            loss_fn,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=False,
            execution=execution,
            vmap_chunk_size=vmap_chunk_size,
            compile=compile,
            inner_rule=MetaSGDRule(inner_lr),
            zero_init=zero_init,
            task_threads=task_threads,
        )
