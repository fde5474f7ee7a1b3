"""Model-Agnostic Meta-Learning, second order or first order (Finn et al., 2017)."""

from __future__ import annotations

from typing import Any

import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.differentiate import grad
from distmeta.algorithms.inner import Params

__all__ = ["MAML"]


class MAML(MetaAlgorithm):
    """MAML: meta-learn an initialisation from which a few inner steps fit a task.

    Description:
        For each task, the inner loop takes ``inner_steps`` steps of the inner rule on the
        support loss from the meta-parameters; the meta-gradient is the gradient of the mean
        query loss after adaptation with respect to every meta-parameter (the model's and the
        rule's own, e.g. Meta-SGD's learned rates), differentiating through the inner loop
        (second order). With ``first_order=True`` the inner gradients are treated as
        constants, so the meta-gradient is the query-loss gradient at the adapted weights and
        a rule's own meta-parameters get none.

        Meta-SGD (Li et al., 2017) is MAML with the
        :class:`~distmeta.algorithms.inner.MetaSGDRule`.

    Args:
        model: The network whose initialisation is meta-learned.
        loss_fn: Task loss, e.g. ``torch.nn.functional.mse_loss``.
        inner_lr: Plain SGD's inner step size (default 0.01), or give ``inner_rule``.
        inner_steps: Inner-loop steps per task (default 1).
        first_order: Drop second-order terms (default ``False``).
        **options: ``inner_rule``, ``execution``, ``vmap_chunk_size``, ``compile``,
            ``zero_init``, ``task_threads``: see :class:`MetaAlgorithm`.

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks. ICML 2017.
        Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. 2017.

    Example:
        >>> model = MLP(1, (40, 40), 1)
        >>> algo = MAML(model, F.mse_loss, inner_lr=0.01, inner_steps=1)
        >>> params = algo.init_params()
        >>> g, metrics = algo.meta_gradient(params, batch)
        >>> metasgd = MAML(model, F.mse_loss, inner_rule=MetaSGDRule(0.01))
    """

    def __init__(self, *args: Any, first_order: bool = False, **options: Any):
        self.first_order = bool(first_order)
        super().__init__(*args, **options)

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
