"""Model-Agnostic Meta-Learning, second order or first order (Finn et al., 2017)."""

from __future__ import annotations

from collections.abc import Sequence
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

        With ``step_loss_weights`` the meta-loss is the weighted mean of the query losses
        after every inner step, not only after the last (the multi-step loss of MAML++,
        Antoniou et al. 2019). A loss after the last step alone lets meta-training learn an
        initialisation whose curvature exceeds what the inner rate can descend twice: one
        step that overshoots in the sharpest directions can still land well, the steps after
        it then oscillate or diverge (the sinusoid study in BENCHMARKS.md). A loss after
        every step holds each of them to account.

        Meta-SGD (Li et al., 2017) is MAML with the
        :class:`~distmeta.algorithms.inner.MetaSGDRule`.

    Args:
        model: The network whose initialisation is meta-learned.
        loss_fn: Task loss, e.g. ``torch.nn.functional.mse_loss``.
        inner_lr: Plain SGD's inner step size (default 0.01), or give ``inner_rule``.
        inner_steps: Inner-loop steps per task (default 1).
        first_order: Drop second-order terms (default ``False``).
        step_loss_weights: One non-negative weight per inner step for the query loss after
            that step (normalised to sum to 1); ``None``: the loss after the last step only.
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

    def __init__(
        self,
        *args: Any,
        first_order: bool = False,
        step_loss_weights: Sequence[float] | None = None,
        **options: Any,
    ):
        self.first_order = bool(first_order)
        super().__init__(*args, **options)
        self.step_loss_weights = _normalised(step_loss_weights, self.inner_steps)

    def _task_gradient(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        if self.first_order:
            grads: Params = {}
            for weight, fast in self._weighted_steps(meta, sx, sy):
                fast_grads, stats = grad(self._query_objective, has_aux=True)(fast, qx, qy)
                for name, g in fast_grads.items():
                    grads[name] = _plus(grads.get(name), weight, g)
            # A rule's own meta-parameters (e.g. learned rates) get no first-order gradient.
            return {
                name: grads[name] if name in grads else torch.zeros_like(p)
                for name, p in meta.items()
            }, stats

        def objective(meta: Params):
            loss = None
            for weight, fast in self._weighted_steps(meta, sx, sy):
                step_loss, stats = self._query_objective(fast, qx, qy)
                loss = _plus(loss, weight, step_loss)
            return loss, stats

        return grad(objective, has_aux=True)(meta)

    def _weighted_steps(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor
    ) -> list[tuple[float, Params]]:
        """The fast weights whose query losses make the meta-loss, with their weights: after
        the last inner step only (weight 1), or after every step with a positive weight.
        The last entry is always the fully adapted weights (their metrics are reported)."""
        if self.step_loss_weights is None:
            return [(1.0, self._inner_loop(meta, sx, sy, self.inner_steps))]
        seen: list[Params] = []
        self._inner_loop(meta, sx, sy, self.inner_steps, observe=seen.append)
        weighted = zip(self.step_loss_weights, seen[1:], strict=True)
        return [
            (w, fast) for i, (w, fast) in enumerate(weighted) if w > 0 or i == self.inner_steps - 1
        ]


def _plus(total: torch.Tensor | None, weight: float, term: torch.Tensor) -> torch.Tensor:
    """``total + weight * term``, exactly ``term`` for the one unweighted loss of plain MAML."""
    weighted = term if weight == 1.0 else weight * term
    return weighted if total is None else total + weighted


def _normalised(weights: Sequence[float] | None, steps: int) -> tuple[float, ...] | None:
    if weights is None:
        return None
    weights = tuple(float(w) for w in weights)
    if len(weights) != steps:
        raise ValueError(
            f"step_loss_weights needs one weight per inner step ({steps}), got {len(weights)}"
        )
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"step_loss_weights must be non-negative with a positive sum, got {list(weights)}"
        )
    return tuple(w / sum(weights) for w in weights)
