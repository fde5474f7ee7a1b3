"""Reptile: move the initialisation towards each task's adapted weights (Nichol et al., 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distmeta.algorithms.base import Execution, LossFn, MetaAlgorithm, TaskThreads
from distmeta.algorithms.inner import Params, SGDRule

__all__ = ["Reptile"]


class Reptile(MetaAlgorithm):
    """Reptile, expressed as a meta-gradient so one learner serves every algorithm.

    Description:
        Each task runs ``inner_steps`` full-batch SGD steps at ``inner_lr`` on its support set;
        the direction is ``g = params - mean_over_tasks(adapted_params)``, so an outer SGD step
        with rate epsilon is Reptile's ``params + epsilon * (mean(adapted) - params)``. The
        query set only measures the adapted model (metrics), it does not enter ``g``.

    Args:
        model: The network.
        loss_fn: Task loss.
        inner_lr: Inner SGD step size (default 0.01).
        inner_steps: Inner SGD steps per task (default 1).
        execution: ``"auto"``, ``"loop"`` or ``"vmap"``.
        vmap_chunk_size: Tasks per vectorised call.
        compile: Compile the vectorised batch (see :class:`MetaAlgorithm`).
        zero_init: Model parameters that every task starts from zero (see
            :class:`MetaAlgorithm`).
        task_threads: Tasks computed at once in a loop over tasks (see
            :class:`MetaAlgorithm`).

    References:
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. 2018.
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
        self.inner_lr = float(inner_lr)
        super().__init__(
            model,
            loss_fn,
            SGDRule(inner_lr),
            inner_steps,
            execution,
            vmap_chunk_size,
            compile,
            zero_init,
            task_threads,
        )

    def _task_gradient(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        fast = self._inner_loop(meta, sx, sy, self.inner_steps)
        _, stats = self._query_objective(fast, qx, qy)
        return {name: meta[name] - fast[name] for name in meta}, stats
