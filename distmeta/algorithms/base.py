"""What every meta-learning algorithm shares: parameters, the inner loop, batching over tasks.

An algorithm answers one question: given meta-parameters and a batch of tasks, what is the
meta-gradient ``g`` (so that the outer step is ``params <- outer_optimizer(params, g)``)?
Subclasses define the gradient of one task as a pure function of the parameters, written with
:func:`distmeta.algorithms.differentiate.grad` (``torch.func.grad`` under ``vmap``, plain
autograd one task at a time); this class runs it over the tasks of a batch, either one task at
a time (on one or several threads, :mod:`.task_threads`) or vectorised with
``torch.func.vmap`` (:mod:`.execution` chooses), and sums the results exactly in task order.
How a task adapts is the inner rule's business (:mod:`.inner`), a choice separate from the
algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.func import functional_call, vmap

from distmeta.algorithms.differentiate import grad
from distmeta.algorithms.execution import (
    Execution,
    TaskThreads,
    choose_execution,
    choose_task_threads,
)
from distmeta.algorithms.failures import find_failing_task, task_failure
from distmeta.algorithms.gradient import ACCUMULATOR_DTYPE, GradientSum, compensated_sum
from distmeta.algorithms.inner import InnerRule, Params, SGDRule
from distmeta.algorithms.task_threads import TaskThreadPool
from distmeta.errors import TaskFailedError
from distmeta.tasks.batch import TaskBatch

__all__ = ["LossFn", "MetaAlgorithm", "check_execution_options", "check_param_names"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_Result = TypeVar("_Result")


def check_param_names(params: Params, names: Sequence[str]) -> None:
    """Refuse ``params`` that are not a dict holding exactly the meta-parameters ``names``."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of tensors, got {type(params).__name__}")
    if params.keys() != set(names):
        missing = sorted(set(names) - params.keys())
        extra = sorted(params.keys() - set(names))
        raise ValueError(f"params do not match the algorithm: missing {missing}, extra {extra}")


def check_execution_options(model: nn.Module, execution: str, task_threads: object) -> None:
    """Refuse a model that is not a module, and ``execution`` / ``task_threads`` values an
    algorithm cannot run with (every algorithm takes these options)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if execution not in ("auto", "loop", "vmap"):
        raise ValueError(f"execution must be 'auto', 'loop' or 'vmap', got {execution!r}")
    if task_threads != "auto" and (
        isinstance(task_threads, bool) or not isinstance(task_threads, int) or task_threads < 1
    ):
        raise ValueError(f"task_threads must be 'auto' or a positive integer, got {task_threads!r}")


def _detached(params: Params) -> Params:
    return {name: p.detach() for name, p in params.items()}


class MetaAlgorithm(ABC):
    """Base class: a model, a task loss, an inner rule and a number of inner steps.

    Args:
        model: The network; its parameters are the template of the meta-parameters and it is
            only ever called functionally (``torch.func.functional_call``).
        loss_fn: Loss of predictions against targets, e.g. ``F.mse_loss``, ``F.cross_entropy``.
        inner_lr: Step size of plain gradient descent in the inner loop (default 0.01);
            shorthand for ``inner_rule=SGDRule(inner_lr)``, so give one or the other.
        inner_steps: Inner-loop steps per task in meta-training and in :meth:`adapt`.
        inner_rule: How fast weights move in the inner loop (:mod:`distmeta.algorithms.inner`:
            ``SGDRule``, ``MetaSGDRule`` with learned per-parameter rates); a rule's own
            meta-parameters join the model's.
        execution: ``"loop"`` (one task at a time), ``"vmap"`` (all tasks in one vectorised
            call) or ``"auto"`` (:func:`~distmeta.algorithms.execution.choose_execution`).
            Both are exact; they differ in speed and memory.
        vmap_chunk_size: Tasks per vectorised call when vectorising (``None``: all at once).
        compile: Compile the vectorised batch with ``torch.compile``. It costs tens of seconds
            once per process (minutes for a convolutional network) and pays back on long runs:
            sinusoid MAML steps run about 8x faster on a CPU, second-order MAML on the Omniglot
            Conv4 2.4x (1 inner step) and 3.6x (5) faster than eager ``vmap`` on an H200 after
            70 s and 190 s of compiling (see BENCHMARKS.md); results then agree with eager
            execution to float rounding, not bit for bit.
        zero_init: Names of model parameters that every task starts from zero and that are not
            meta-learned: they stay zero in :meth:`init_params`, their meta-gradient is zero,
            and the inner loop still adapts them. For a classifier's last layer this is the
            "zeroing trick" (Kao et al., ICLR 2022): tasks number their classes in random
            order, so a learned head only adds noise, and a head that starts at zero makes
            the first inner step a comparison of the query's features with each class's.
        task_threads: Tasks computed at once when looping over tasks, each in its own Python
            thread (the calling one and helpers, :mod:`~distmeta.algorithms.task_threads`)
            with single-threaded operations (the results are summed in task order, as one at
            a time). ``"auto"``: :func:`~distmeta.algorithms.execution.choose_task_threads`.
            Memory grows with the tasks in flight.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float | None = None,
        inner_steps: int = 1,
        *,
        inner_rule: InnerRule | None = None,
        execution: Execution = "auto",
        vmap_chunk_size: int | None = None,
        compile: bool = False,
        zero_init: Sequence[str] = (),
        task_threads: TaskThreads = "auto",
    ):
        check_execution_options(model, execution, task_threads)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if inner_rule is not None and inner_lr is not None:
            raise ValueError("give inner_lr (plain SGD) or inner_rule, not both")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be a positive integer, got {inner_steps!r}")
        if vmap_chunk_size is not None and vmap_chunk_size < 1:
            raise ValueError(f"vmap_chunk_size must be positive, got {vmap_chunk_size}")
        if isinstance(zero_init, str):
            raise TypeError(f"zero_init must be a sequence of parameter names, got {zero_init!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.inner_rule = inner_rule if inner_rule is not None else SGDRule(inner_lr or 0.01)
        self.inner_steps = inner_steps
        self.execution = execution
        self.vmap_chunk_size = vmap_chunk_size
        self.task_threads = task_threads
        self._threads = TaskThreadPool(model)
        self._batched_sum_fn = torch.compile(self._batched_sum) if compile else self._batched_sum
        self.model_param_names = tuple(name for name, _ in model.named_parameters())
        unknown = sorted(set(zero_init) - set(self.model_param_names))
        if unknown:
            raise ValueError(
                f"zero_init names {unknown}, which are not parameters of the model "
                f"(its parameters: {list(self.model_param_names)})"
            )
        zeroed = set(zero_init)
        self.zero_init = tuple(name for name in self.model_param_names if name in zeroed)
        self.param_names = tuple(self.init_params())

    # --- parameters -------------------------------------------------------------------------

    def init_params(self) -> Params:
        """All meta-parameters: the model's initial weights (under their ``named_parameters``
        names) and the inner rule's own, as fresh tensors."""
        model_params = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        for name in self.zero_init:
            model_params[name].zero_()
        return {**model_params, **self.inner_rule.meta_params(model_params)}

    def model_params(self, params: Params) -> Params:
        """The model's part of the meta-parameters."""
        return {name: params[name] for name in self.model_param_names}

    def _check_params(self, params: Params) -> None:
        check_param_names(params, self.param_names)
        nonzero = [name for name in self.zero_init if bool(params[name].any())]
        if nonzero:
            raise ValueError(f"params {nonzero} must be zero: the algorithm's zero_init names them")

    def _steps(self, steps: int | None) -> int:
        """Inner steps of an adaptation: ``steps``, or the algorithm's own when ``None``."""
        steps = self.inner_steps if steps is None else steps
        if steps < 0:
            raise ValueError(f"steps must be non-negative, got {steps}")
        return steps

    def _rule_at(self, inner_lr: float | None) -> InnerRule:
        """The inner rule, or plain SGD at ``inner_lr`` in its place (evaluation at another
        rate); a learned rule has no single rate to replace."""
        if inner_lr is None:
            return self.inner_rule
        if not isinstance(self.inner_rule, SGDRule):
            raise ValueError(
                f"inner_lr sets the rate of plain SGD; the {type(self.inner_rule).__name__} "
                "inner rule learns its own"
            )
        return SGDRule(inner_lr)

    # --- one task, pure functions (vmap-compatible) -------------------------------------------

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's output with the given (fast) weights."""
        return functional_call(self._threads.current_model(), params, (x,))

    def _loss(self, fast: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.forward(fast, x), y)

    def _loss_and_value(
        self, fast: Params, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss, and its value detached (an auxiliary output of its gradient)."""
        loss = self._loss(fast, x, y)
        return loss, loss.detach()

    def _inner_loop(
        self,
        meta: Params,
        sx: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        rule: InnerRule | None = None,
        observe: Callable[[Params], None] | None = None,
        losses: list[torch.Tensor] | None = None,
    ) -> Params:
        """Fast weights after ``steps`` steps of ``rule`` (default: the algorithm's) on the
        support set; differentiable through ``meta`` when called under a
        :func:`~distmeta.algorithms.differentiate.grad` of ``meta``. ``observe`` sees the
        fast weights before the first step and after each one; ``losses`` receives the
        support loss (detached) that each step's gradient is taken of."""
        rule = rule or self.inner_rule
        fast = self.model_params(meta)
        state = rule.init(meta, fast)
        if observe is not None:
            observe(fast)
        for _ in range(steps):
            if losses is None:
                grads = grad(self._loss)(fast, sx, sy)
            else:
                grads, loss = grad(self._loss_and_value, has_aux=True)(fast, sx, sy)
                losses.append(loss)
            fast, state = rule.step(meta, fast, grads, state)
            if observe is not None:
                observe(fast)
        return fast

    def _query_stats(
        self, output: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss (differentiable) and the detached metrics ``[loss(, accuracy)]``."""
        loss = self.loss_fn(output, qy)
        stats = [loss.detach()]
        if not qy.is_floating_point():
            stats.append((output.detach().argmax(dim=-1) == qy).to(loss.dtype).mean())
        return loss, torch.stack(stats)

    def _query_objective(self, fast: Params, qx: torch.Tensor, qy: torch.Tensor):
        return self._query_stats(self.forward(fast, qx), qy)

    @abstractmethod
    def _task_gradient(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        """One task's meta-gradient (keys of ``meta``) and its metrics vector."""

    def _task_curve(
        self,
        meta: Params,
        sx: torch.Tensor,
        sy: torch.Tensor,
        qx: torch.Tensor,
        qy: torch.Tensor,
        steps: int,
        rule: InnerRule,
    ) -> torch.Tensor:
        """Metrics on the query set after 0, 1, ..., ``steps`` inner steps: ``[steps + 1, m]``."""
        curve: list[torch.Tensor] = []
        self._inner_loop(
            meta,
            sx,
            sy,
            steps,
            rule,
            observe=lambda fast: curve.append(self._query_objective(fast, qx, qy)[1]),
        )
        return torch.stack(curve)

    # --- public API -------------------------------------------------------------------------

    def stat_names(self, batch: TaskBatch) -> tuple[str, ...]:
        """Names of the metrics reported for tasks like those of ``batch``."""
        return ("loss",) if batch.query_y.is_floating_point() else ("loss", "accuracy")

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int | None = None,
        inner_lr: float | None = None,
    ) -> Params:
        """The model's weights for one task after the algorithm's own inner loop.

        Args:
            params: Meta-parameters (as from :meth:`init_params`).
            support_x: ``[n, *input_shape]`` support inputs of one task (unbatched).
            support_y: ``[n, *target_shape]`` support targets.
            steps: Inner steps; defaults to ``inner_steps``.
            inner_lr: Adapt with plain SGD at this rate instead of the rule's own (only for
                the ``SGDRule``, whose rate is not learned).

        Returns:
            The model's parameters (``model.named_parameters`` names), detached.
        """
        self._check_params(params)
        steps = self._steps(steps)
        rule = self._rule_at(inner_lr)
        return _detached(self._inner_loop(_detached(params), support_x, support_y, steps, rule))

    def adapt_scored(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int | None = None,
    ) -> tuple[Params, float]:
        """:meth:`adapt`'s weights, and the loss that the weights it starts from (the model's
        weights in ``params``, unadapted) have on the support set. The first inner step's
        forward pass computes that loss, so a caller that compares an adaptation with none
        (an online learner that must not take weights an overshooting inner rate made worse)
        does not run the model on the support set once more for it."""
        self._check_params(params)
        steps = self._steps(steps)
        losses: list[torch.Tensor] = []
        fast = self._inner_loop(_detached(params), support_x, support_y, steps, losses=losses)
        if not losses:  # no step took the loss
            with torch.no_grad():
                losses.append(self._loss(self.model_params(params), support_x, support_y))
        return _detached(fast), float(losses[0])

    def adapt_further(
        self,
        params: Params,
        fast: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int | None = None,
    ) -> Params:
        """Fast weights ``fast`` (adapted from ``params`` earlier) after ``steps`` more steps
        of the inner rule (its meta-parameters from ``params``; a rule's state starts afresh)
        on a new support set: adaptation that goes on while a task lasts (C-MAML's
        prolonged adaptation on a stream).

        Returns:
            The model's parameters (``model.named_parameters`` names), detached.
        """
        self._check_params(params)
        steps = self._steps(steps)
        if fast.keys() != set(self.model_param_names):
            raise ValueError(
                f"fast weights must hold the model's parameters {list(self.model_param_names)}, "
                f"got {sorted(fast)}"
            )
        start = {**_detached(params), **_detached(fast)}
        return _detached(self._inner_loop(start, support_x, support_y, steps))

    def meta_gradient(self, params: Params, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        """The meta-gradient averaged over the tasks of ``batch``, and mean metrics.

        Returns:
            ``(g, metrics)``: ``g`` has the keys, shapes and dtypes of ``params``; metrics hold
            the mean post-adaptation query ``loss`` (and ``accuracy`` for classification).
        """
        total = self.meta_gradient_sum(params, batch)
        dtype = next(iter(params.values())).dtype
        return total.mean(dtype), total.mean_stats()

    def meta_gradient_sum(self, params: Params, batch: TaskBatch) -> GradientSum:
        """The per-task meta-gradients of ``batch`` summed exactly (engines add these sums
        across workers). Raises :class:`TaskFailedError` naming a task whose loss or
        gradient is not finite, or whose computation raised."""
        self._check_params(params)
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
        meta = _detached(params)
        device = next(iter(meta.values())).device
        one_task = partial(self._one_task, meta, batch)
        try:
            if self.resolved_execution(device) == "vmap":
                total, stats = self._vmapped_sum(meta, batch)
            else:
                total, stats = self._looped_sum(meta, batch, one_task, device)
        except TaskFailedError:
            raise
        except Exception:
            find_failing_task(one_task, batch)
            raise
        values = [stats.isfinite().all()] + [g.isfinite().all() for g in total.grads.values()]
        if not bool(torch.stack(values).all()):
            find_failing_task(one_task, batch)
        for name in self.zero_init:
            total.grads[name].zero_()
            total.residuals[name].zero_()
        sums = stats.sum(dim=0, dtype=ACCUMULATOR_DTYPE).tolist()
        total.stats = dict(zip(self.stat_names(batch), sums, strict=True))
        return total

    def adaptation_curve(
        self, params: Params, batch: TaskBatch, steps: int, inner_lr: float | None = None
    ) -> torch.Tensor:
        """Query metrics of every task after 0..``steps`` inner steps: ``[tasks, steps+1, m]``
        (metric order as in :meth:`stat_names`); ``inner_lr`` as in :meth:`adapt`."""
        self._check_params(params)
        if steps < 0:
            raise ValueError(f"steps must be non-negative, got {steps}")
        rule = self._rule_at(inner_lr)
        meta = _detached(params)
        device = next(iter(meta.values())).device

        def curve(meta, sx, sy, qx, qy):
            return self._task_curve(meta, sx, sy, qx, qy, steps, rule)

        if self.resolved_execution(device) == "vmap":
            return vmap(curve, in_dims=(None, 0, 0, 0, 0), chunk_size=self.vmap_chunk_size)(
                meta, batch.support_x, batch.support_y, batch.query_x, batch.query_y
            )
        tasks = self._map_tasks(lambda i: curve(meta, *batch.task(i)), len(batch), device)
        return torch.stack(list(tasks))

    # --- batching over tasks ---------------------------------------------------------------

    def resolved_execution(self, device: torch.device) -> Literal["loop", "vmap"]:
        """How the tasks of a batch on ``device`` run: ``execution``, or what ``auto``
        chooses there (:func:`~distmeta.algorithms.execution.choose_execution`)."""
        if self.execution == "auto":
            return choose_execution(self.model, device)
        return self.execution

    def _batched_sum(
        self, meta: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, Params, torch.Tensor]:
        """All tasks' gradients in one vectorised call, summed exactly over tasks
        (``sums``, ``residuals``), and the stacked per-task metrics."""
        batched = vmap(
            self._task_gradient, in_dims=(None, 0, 0, 0, 0), chunk_size=self.vmap_chunk_size
        )
        grads, stats = batched(meta, sx, sy, qx, qy)
        names = list(grads)
        tasks = sx.shape[0]
        flat = torch.cat([grads[name].reshape(tasks, -1) for name in names], dim=1)
        sums, residuals = compensated_sum(flat)
        sizes = [meta[name].numel() for name in names]

        def unflatten(vector: torch.Tensor) -> Params:
            pieces = vector.split(sizes)
            return {n: t.view(meta[n].shape) for n, t in zip(names, pieces, strict=True)}

        return unflatten(sums), unflatten(residuals), stats

    def _vmapped_sum(self, meta: Params, batch: TaskBatch) -> tuple[GradientSum, torch.Tensor]:
        sums, residuals, stats = self._batched_sum_fn(
            meta, batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        return GradientSum(sums, residuals, len(batch)), stats

    def _looped_sum(
        self,
        meta: Params,
        batch: TaskBatch,
        one_task: Callable[[int], tuple[Params, torch.Tensor]],
        device: torch.device,
    ) -> tuple[GradientSum, torch.Tensor]:
        """Like :meth:`_vmapped_sum`, task by task: one at a time (memory of one task's
        graph) or ``task_threads`` at once, summed in task order either way."""
        total = GradientSum.zeros_like(meta)
        stats = []
        for grads, task_stats in self._map_tasks(one_task, len(batch), device):
            total.add_task(grads)
            stats.append(task_stats)
        return total, torch.stack(stats)

    def _map_tasks(
        self, fn: Callable[[int], _Result], tasks: int, device: torch.device
    ) -> Iterator[_Result]:
        if self.task_threads == "auto":
            threads = choose_task_threads(device, tasks)
        else:
            threads = self.task_threads
        return self._threads.map(fn, tasks, threads)

    def _one_task(self, meta: Params, batch: TaskBatch, index: int) -> tuple[Params, torch.Tensor]:
        try:
            return self._task_gradient(meta, *batch.task(index))
        except Exception as error:
            raise task_failure(batch, index, f"{type(error).__name__}: {error}") from error
