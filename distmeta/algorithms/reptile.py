"""Reptile: move the initialisation towards each task's adapted weights (Nichol et al., 2018)."""

from __future__ import annotations

import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.differentiate import grad
from distmeta.algorithms.inner import Params

__all__ = ["Reptile"]


class Reptile(MetaAlgorithm):
    """Reptile, expressed as a meta-gradient so one learner serves every algorithm.

    Description:
        Each task runs ``inner_steps`` steps of the inner rule on its support set; the
        direction of the model's parameters is ``g = params - mean_over_tasks(adapted)``, so
        an outer SGD step with rate epsilon is Reptile's ``params + epsilon * (mean(adapted) -
        params)``. The query set measures the adapted model (metrics) and does not enter
        that direction. An inner rule with meta-parameters of its own (Meta-SGD's rates, a
        learned optimizer) has no Reptile direction: its meta-gradient is the gradient of the
        query loss after adaptation, differentiated through the inner loop.

    Args:
        model: The network.
        loss_fn: Task loss.
        inner_lr: Plain SGD's inner step size (default 0.01), or give ``inner_rule``.
        inner_steps: Inner steps per task (default 1).
        **options: ``inner_rule``, ``execution``, ``vmap_chunk_size``, ``compile``,
            ``zero_init``, ``task_threads``: see :class:`MetaAlgorithm`.

    References:
        Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. 2018.

    Example:
        >>> algo = Reptile(MLP(1, (40, 40), 1), F.mse_loss, inner_lr=0.02, inner_steps=5)
        >>> g, metrics = algo.meta_gradient(algo.init_params(), batch)
    """

    def _task_gradient(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        model = self.model_params(meta)
        rule_params = {name: p for name, p in meta.items() if name not in model}
        if not rule_params:
            fast = self._inner_loop(meta, sx, sy, self.inner_steps)
            _, stats = self._query_objective(fast, qx, qy)
            return {name: meta[name] - fast[name] for name in meta}, stats

        def objective(rule_params: Params):
            fast = self._inner_loop({**model, **rule_params}, sx, sy, self.inner_steps)
            loss, stats = self._query_objective(fast, qx, qy)
            return loss, (stats, fast)

        rule_grads, (stats, fast) = grad(objective, has_aux=True)(rule_params)
        return {**{name: model[name] - fast[name] for name in model}, **rule_grads}, stats
