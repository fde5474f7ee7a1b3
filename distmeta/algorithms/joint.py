"""Joint training: one model fit to the data of every task, with no adaptation."""

from __future__ import annotations

from typing import Any

import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.differentiate import grad
from distmeta.algorithms.inner import Params

__all__ = ["Joint"]


class Joint(MetaAlgorithm):
    """The jointly trained (multi-task) baseline, as an algorithm so one learner trains it.

    Description:
        Each task's "meta-gradient" is the gradient of the loss on its support and query sets
        together at the current parameters, with no inner loop: the outer optimizer then fits
        one model to all tasks pooled. This is the "pretrained" baseline of the MAML paper
        and the starting point of the ``no_adaptation`` and ``finetune`` baselines of streams.
        The metrics are those of the pooled sets. An inner rule's own meta-parameters get a
        zero gradient (joint training never adapts), though :meth:`adapt` still adapts.

    Args:
        model: The network.
        loss_fn: Task loss.
        inner_lr: Plain SGD's inner step size for :meth:`adapt` (default 0.01), or give
            ``inner_rule``.
        inner_steps: Inner steps of :meth:`adapt` (training takes none).
        **options: ``inner_rule``, ``execution``, ``vmap_chunk_size``, ``compile``,
            ``task_threads``: see :class:`MetaAlgorithm`.

    Raises:
        ValueError: ``zero_init`` names a parameter: never adapted, it would stay at zero.

    References:
        Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
        Networks. ICML 2017 (section 5.1, the pretrained baseline).

    Example:
        >>> algo = Joint(MLP(1, (40, 40), 1), F.mse_loss)
        >>> g, metrics = algo.meta_gradient(algo.init_params(), batch)  # pooled-data gradient
    """

    def __init__(self, *args: Any, **options: Any):
        if options.get("zero_init"):
            raise ValueError(
                f"zero_init {list(options['zero_init'])}: joint training never adapts, so a "
                "parameter held at zero would never be learned (a zeroed head passes no "
                "gradient to the layers below it)"
            )
        super().__init__(*args, **options)

    def _task_gradient(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        x, y = torch.cat([sx, qx]), torch.cat([sy, qy])

        def objective(meta: Params):
            return self._query_objective(self.model_params(meta), x, y)

        return grad(objective, has_aux=True)(meta)
