"""Model-Agnostic Meta-Learning, second order or first order (Finn et al., 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distmeta.algorithms.base import Execution, LossFn, MetaAlgorithm, TaskThreads
from distmeta.algorithms.differentiate import grad
from distmeta.algorithms.inner import InnerRule, Params, SGDRule

__all__ = ["MAML"]


class MAML(MetaAlgorithm):
    """MAML: meta-learn an initialisation from which a few gradient steps fit a task.

    Description:
        For each task, the inner loop takes ``inner_steps`` gradient steps on the support loss
        from the meta-parameters; the meta-gradient is the gradient of the mean query loss
        after adaptation with respect to the meta-parameters, differentiating through the
        inner loop (second order). With ``first_order=True`` the inner gradients are treated
        as constants, so the meta-gradient is the query-loss gradient at the adapted weights.

    Args:
        model: The network whose initialisation is meta-learned.
        loss_fn: Task loss, e.g. ``torch.nn.functional.mse_loss``.
        inner_lr: Inner-loop step size (default 0.01).
        inner_steps: Inner-loop steps per task (default 1).
        first_order: Drop second-order terms (default ``False``).
        execution: ``"auto"``, ``"loop"`` or ``"vmap"``; see :class:`MetaAlgorithm`.
        vmap_chunk_size: Tasks per vectorised call.
        compile: Compile the vectorised batch (see :class:`MetaAlgorithm`).
        inner_rule: Replaces plain SGD in the inner loop (Meta-SGD, learned optimizers).
        zero_init: Model parameters that every task starts from zero (see
            :class:`MetaAlgorithm`).
        task_threads: Tasks computed at once in a loop over tasks (see
            :class:`MetaAlgorithm`).

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks. ICML 2017.

    Example:
        >>> model = MLP(1, (40, 40), 1)
        >>> algo = MAML(model, F.mse_loss, inner_lr=0.01, inner_steps=1)
        >>> params = algo.init_params()
        >>> g, metrics = algo.meta_gradient(params, batch)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        execution: Execution = "auto",
        vmap_chunk_size: int | None = None,
        compile: bool = False,
        inner_rule: InnerRule | None = None,
        zero_init: Sequence[str] = (),
        task_threads: TaskThreads = "auto",
    ):
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        super().__init__(
            model,
            loss_fn,
            inner_rule if inner_rule is not None else SGDRule(inner_lr),
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
        if self.first_order:
            fast = self._inner_loop(meta, sx, sy, self.inner_steps)
            fast_grads, stats = grad(self._query_objective, has_aux=True)(fast, qx, qy)
            grads = {name: torch.zeros_like(p) for name, p in meta.items()}
            grads.update(fast_grads)
            return grads, stats

        def objective(meta: Params):
            fast = self._inner_loop(meta, sx, sy, self.inner_steps)
            return self._query_objective(fast, qx, qy)

        return grad(objective, has_aux=True)(meta)
