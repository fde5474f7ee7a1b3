"""``grad``: ``torch.func.grad``'s contract, computed by ``torch.autograd`` where it can be.

The algorithms write a task's meta-gradient once, as nested gradients of pure functions of a
parameter dict. Vectorised over tasks (``torch.func.vmap``), those gradients must be
``torch.func.grad`` transforms. One task at a time, plain autograd computes the same numbers
faster: ``torch.func.grad`` always records the graph of its own backward pass (that is how it
nests), so the outermost backward of a second-order meta-gradient builds a third-order graph
that nobody uses (and functions with their own second derivative, like Conv4's fused batch
norm, must then compute it differentiably), and every operation pays the transforms'
dispatch. Second-order MAML on the Omniglot Conv4, one task at a time on one CPU thread, runs
25% faster with autograd at 1 inner step and 45% faster at 5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map

from distmeta.algorithms.inner import Params

__all__ = ["grad", "value_and_grad"]


def grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """The gradient of ``fn(params, *args)`` with respect to the dict ``params``.

    Under any ``torch.func`` transform or ``torch.compile`` this is
    ``torch.func.grad(fn, has_aux=has_aux)``.
    Otherwise autograd computes it, recording the graph of the gradient itself only when
    ``params`` already depend on tensors being differentiated (an enclosing call of this
    function), which is when a caller will differentiate through it.

    Args:
        fn: Returns a scalar tensor, or ``(scalar, aux)`` with ``has_aux``.
        has_aux: Whether ``fn`` returns auxiliary outputs, passed through undifferentiated.

    Returns:
        A function of ``(params, *args)`` returning the gradients (a dict with the keys of
        ``params``; zeros for entries ``fn`` does not use), or ``(gradients, aux)``.
    """
    transformed = torch.func.grad(fn, has_aux=has_aux)

    def gradient(params: Params, *args: Any) -> Any:
        if _transformed():
            return transformed(params, *args)
        nested = any(p.requires_grad for p in params.values())
        output, grads = _autograd(fn, params, args, has_aux, create_graph=nested)
        if not has_aux:
            return grads
        aux = output[1]
        if not nested:
            aux = tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux)
        return grads, aux

    return gradient


def _transformed() -> bool:
    """Whether a ``torch.func`` transform or ``torch.compile`` is running."""
    return torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None


def _autograd(
    fn: Callable[..., Any],
    params: Params,
    args: tuple[Any, ...],
    has_aux: bool,
    create_graph: bool,
    retain_graph: bool | None = None,
) -> tuple[Any, Params]:
    """``fn(params, *args)`` and the gradient of its (first) output with plain autograd."""
    with torch.enable_grad():
        inputs = {
            name: p if p.requires_grad else p.detach().requires_grad_()
            for name, p in params.items()
        }
        output = fn(inputs, *args)
        grads = torch.autograd.grad(
            output[0] if has_aux else output,
            list(inputs.values()),
            create_graph=create_graph,
            retain_graph=retain_graph,
            allow_unused=True,
            materialize_grads=True,
        )
    return output, dict(zip(inputs, grads, strict=True))


def value_and_grad(
    fn: Callable[..., torch.Tensor], create_graph: bool = False
) -> Callable[..., tuple[torch.Tensor, Params]]:
    """``fn(params, *args)`` and its gradient with respect to the dict ``params``.

    The value stays differentiable with respect to whatever ``params`` depend on (an unroll
    differentiates a sum of such values); the gradient is differentiable too only with
    ``create_graph`` (second order), else it is a constant, like the paper's learned optimizer
    treats its input gradient. Under any ``torch.func`` transform this is
    ``torch.func.grad_and_value``.
    """
    transformed = torch.func.grad_and_value(fn)

    def value_and_gradient(params: Params, *args: Any) -> tuple[torch.Tensor, Params]:
        if _transformed():
            grads, value = transformed(params, *args)
            if not create_graph:
                grads = {name: g.detach() for name, g in grads.items()}
            return value, grads
        return _autograd(fn, params, args, False, create_graph, retain_graph=True)

    return value_and_gradient
