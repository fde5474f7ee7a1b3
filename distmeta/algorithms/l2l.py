"""Meta-training a learned optimizer on whole optimisation runs (Andrychowicz et al., 2016).

Truncated backpropagation through time: each trajectory optimises one problem for ``horizon``
optimizee steps with the learned rule, in unrolls of ``unroll`` steps; one outer step
advances every trajectory of the meta-batch by one unroll and differentiates that unroll's
meta-loss with respect to the rule's meta-parameters. The optimizee's weights and the rule's
state are carried from one unroll to the next as constants, so no gradient crosses an unroll
boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from distmeta.algorithms.base import check_execution_options, check_param_names
from distmeta.algorithms.differentiate import grad, value_and_grad
from distmeta.algorithms.execution import Execution, TaskThreads, choose_task_threads
from distmeta.algorithms.gradient import ACCUMULATOR_DTYPE, GradientSum, compensated_sum
from distmeta.algorithms.inner import InnerRule, Params
from distmeta.algorithms.task_threads import TaskThreadPool
from distmeta.errors import TaskFailedError
from distmeta.tasks.batch import TaskId
from distmeta.tasks.optimizee import ProblemFamily, TrajectoryRequest, Unroll

__all__ = ["L2L", "MetaLoss"]

MetaLoss = Literal["sum", "log", "query"]

_META_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sum": lambda along, query: along.sum(),
    "log": lambda along, query: along.log().sum(),
    "query": lambda along, query: query,
}
"""Each meta-loss from the optimizee losses along an unroll and the query loss after it."""


@dataclass(frozen=True)
class _Carried:
    """What a trajectory carries from one unroll to the next: constants, never differentiated."""

    fast: Params
    state: Any


@dataclass(frozen=True)
class _Slot:
    """The trajectory a slot of the meta-batch runs: its name, the last step that advanced
    it (``step``), the unrolls done after that step, and its state before and after it."""

    name: TaskId
    step: int
    unrolls: int
    before: _Carried
    after: _Carried


def _detached(tree: Any) -> Any:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


class L2L:
    """Learning to learn by gradient descent by gradient descent: meta-train an inner rule
    (the coordinate-wise LSTM, :class:`~distmeta.algorithms.LSTMRule`) alone.

    Description:
        The meta-parameters are the rule's only; the optimizee starts every trajectory from
        its problem's own initial parameters. A trajectory ``(seed, s, i)`` starts in slot
        ``i`` of the meta-batch at step ``s`` and runs ``horizon / unroll`` unrolls, one per
        outer step. In an unroll from ``theta_0`` (carried, constant) the rule moves
        ``theta_{k+1} = rule(theta_k, grad f_k(theta_k))`` for ``k < unroll``, and the
        meta-loss is the sum of the optimizee losses ``f_k(theta_k)``, ``k = 1..unroll``
        (``meta_loss="sum"``, the paper's), the sum of their natural logs (``"log"``: a
        step that halves the loss counts the same early in a trajectory, after a redraw and
        late, where the sum is ruled by the first unroll's large losses), or the query loss
        at ``theta_unroll`` (``"query"``, the few-shot objective). The input gradients are
        constants (``second_order=False``, the paper's choice) or differentiated too.

        The trajectories' state stays in this object between calls (in a Ray worker: the
        worker's slots), keyed by slot. A request for step ``t`` continues the slot's
        trajectory when it last advanced at an earlier step (the next unroll, whatever the
        step: asynchronous requests skip numbers), recomputes the same unroll from the same
        state when it last advanced at ``t`` (a retried slice: the same bits), and otherwise
        starts a new trajectory ``(seed, t, i)`` from its first step: in a fresh or restarted
        process, after the last unroll of a trajectory, and when the run rewound to an
        earlier step. In one process or a sync Ray run without failures every slot therefore
        runs the same trajectories, whatever the number of workers; a restarted worker's slots
        start anew, out of phase with the others. A run resumed from a checkpoint at a
        trajectory boundary (``train.checkpoint_every`` a multiple of ``horizon / unroll``)
        starts new trajectories exactly where the uninterrupted run does.

    Args:
        model: The optimizee network (called functionally; its own weights are not used).
        problems: The problem family (:class:`~distmeta.tasks.ProblemFamily`).
        inner_rule: The learned rule; it must have meta-parameters.
        unroll: Optimizee steps per unroll (T, default 20).
        horizon: Optimizee steps per trajectory (N, default 100), a multiple of ``unroll``.
        meta_loss: ``"sum"`` of the losses along the unroll, the sum of their ``"log"``, or the
            ``"query"`` loss after it.
        second_order: Differentiate through the gradients the rule reads.
        execution: ``"loop"`` over trajectories, ``"vmap"`` them, or ``"auto"`` (the loop:
            an unroll's nested gradients run several times slower under ``vmap`` on a CPU).
        task_threads: Trajectories of the loop computed at once, each on its own thread
            with single-threaded operations (``"auto"``:
            :func:`~distmeta.algorithms.execution.choose_task_threads`).

    References:
        Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
        NeurIPS 2016.

    Example:
        >>> family = Quadratic()
        >>> algo = L2L(QuadraticVariable(), family, LSTMRule(preprocess=False, scale=1.0))
        >>> params = algo.init_params()  # lstm.* only
        >>> request = TrajectoryPlan(seed=0, meta_batch_size=4).batch(family, step=0)
        >>> g, metrics = algo.meta_gradient(params, request)
    """

    zero_init: tuple[str, ...] = ()
    """No parameter is zeroed per task (the interface of every algorithm)."""

    def __init__(
        self,
        model: nn.Module,
        problems: ProblemFamily,
        inner_rule: InnerRule,
        unroll: int = 20,
        horizon: int = 100,
        meta_loss: MetaLoss = "sum",
        second_order: bool = False,
        execution: Execution = "auto",
        task_threads: TaskThreads = "auto",
    ):
        check_execution_options(model, execution, task_threads)
        if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon % unroll:
            raise ValueError(f"horizon ({horizon!r}) must be a multiple of unroll ({unroll})")
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        if meta_loss not in _META_LOSSES:
            raise ValueError(f"meta_loss must be one of {sorted(_META_LOSSES)}, got {meta_loss!r}")
        self.model, self.problems, self.inner_rule = model, problems, inner_rule
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = problems.loss_fn()
        self.unroll, self.horizon = unroll, horizon
        self.meta_loss, self.second_order = meta_loss, bool(second_order)
        self.execution, self.task_threads = execution, task_threads
        self._threads = TaskThreadPool(model)
        self.param_names = tuple(self.init_params())
        if not self.param_names:
            raise ValueError(
                f"the {type(inner_rule).__name__} inner rule has no meta-parameters to learn"
            )
        self._slots: dict[int, _Slot] = {}

    @property
    def unrolls(self) -> int:
        """Unrolls per trajectory."""
        return self.horizon // self.unroll

    def init_params(self) -> Params:
        """The rule's meta-parameters, as fresh tensors (the optimizee's are not learned)."""
        template = {n: p.detach() for n, p in self.model.named_parameters()}
        return self.inner_rule.meta_params(template)

    def stat_names(self, batch: TrajectoryRequest) -> tuple[str, ...]:
        """``loss``: the mean optimizee loss along the unroll; ``query_loss``: after it."""
        return ("loss", "query_loss")

    # --- one trajectory, a pure function (vmap-compatible) --------------------------------------

    def _loss(self, fast: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(functional_call(self._threads.current_model(), fast, (x,)), y)

    def _unrolled(
        self,
        phi: Params,
        fast: Params,
        state: Any,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        qx: torch.Tensor,
        qy: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, Params, Any]]:
        """The meta-loss of one unroll from the carried ``(fast, state)``, and the detached
        metrics ``[mean loss along the unroll, query loss]`` and carried state after it."""
        losses = []
        step_gradient = value_and_grad(self._loss, create_graph=self.second_order)
        for k in range(self.unroll):
            loss, grads = step_gradient(fast, inputs[k], targets[k])
            if k > 0:
                losses.append(loss)
            fast, state = self.inner_rule.step(phi, fast, grads, state)
        # After the last step only the loss counts: no gradient that no step would use.
        losses.append(self._loss(fast, inputs[self.unroll], targets[self.unroll]))
        along = torch.stack(losses)
        query = self._loss(fast, qx, qy)
        objective = _META_LOSSES[self.meta_loss](along, query)
        stats = torch.stack([along.mean(), query]).detach()
        return objective, (stats, fast, state)

    def _trajectory_gradient(
        self, phi: Params, fast: Params, state: Any, *data: torch.Tensor
    ) -> tuple[Params, torch.Tensor, Params, Any]:
        grads, (stats, fast, state) = grad(self._unrolled, has_aux=True)(phi, fast, state, *data)
        return grads, stats, _detached(fast), _detached(state)

    # --- the contract of every algorithm ---------------------------------------------------------

    def meta_gradient(
        self, params: Params, batch: TrajectoryRequest
    ) -> tuple[Params, dict[str, float]]:
        """The meta-gradient averaged over the slots of ``batch``, and mean metrics."""
        total = self.meta_gradient_sum(params, batch)
        dtype = next(iter(params.values())).dtype
        return total.mean(dtype), total.mean_stats()

    def meta_gradient_sum(self, params: Params, batch: TrajectoryRequest) -> GradientSum:
        """Advance the trajectories of ``batch``'s slots by one unroll each and return the sum
        of their meta-gradients (exact, like every algorithm's). Raises
        :class:`~distmeta.errors.TaskFailedError` naming a trajectory whose loss or
        meta-gradient is not finite."""
        check_param_names(params, self.param_names)
        if not isinstance(batch, TrajectoryRequest):
            raise TypeError(f"batch must be a TrajectoryRequest, got {type(batch).__name__}")
        phi = _detached(params)
        reference = next(iter(phi.values()))
        names, positions, carried = [], [], []
        for index in batch.indices:
            name, position, start = self._resume(batch.seed, batch.step, index, phi, reference)
            names.append(name)
            positions.append(position)
            carried.append(start)
        data = Unroll.of(
            self.problems, names, [p * self.unroll for p in positions], self.unroll + 1
        )
        data = data.to(reference.device, reference.dtype)
        if self.resolved_execution(reference.device) == "vmap":
            grads, stats, after = self._vmapped(phi, carried, data)
        else:
            grads, stats, after = self._looped(phi, carried, data)
        self._check_finite(grads, stats, names)
        total = self._sum(grads, phi)
        for i, index in enumerate(batch.indices):
            self._slots[index] = _Slot(names[i], batch.step, positions[i] + 1, carried[i], after[i])
        sums = stats.sum(dim=0, dtype=ACCUMULATOR_DTYPE).tolist()
        total.stats = dict(zip(self.stat_names(batch), sums, strict=True))
        return total

    # --- trajectories --------------------------------------------------------------------------

    def _resume(
        self, seed: int, step: int, index: int, phi: Params, reference: torch.Tensor
    ) -> tuple[TaskId, int, _Carried]:
        """Slot ``index``'s trajectory at ``step``: its name, its unroll's position, and the
        state that unroll starts from (see the class description)."""
        slot = self._slots.get(index)
        if slot is not None and slot.step == step:
            return slot.name, slot.unrolls - 1, slot.before
        if slot is not None and slot.step < step and slot.unrolls < self.unrolls:
            return slot.name, slot.unrolls, slot.after
        name = (seed, step, index)
        initial = self.problems.initial_params(self.model, name)
        fast = {n: p.to(device=reference.device, dtype=reference.dtype) for n, p in initial.items()}
        return name, 0, _Carried(fast, self.inner_rule.init(phi, fast))

    def resolved_execution(self, device: torch.device) -> Literal["loop", "vmap"]:
        """How the trajectories of a step on ``device`` run: ``execution``, or ``loop`` for
        ``auto`` (as :meth:`MetaAlgorithm.resolved_execution` answers for the task workers)."""
        # Measured on a CPU (BENCHMARKS.md): an unroll's nested gradients run several times
        # slower under vmap than trajectory by trajectory, for the quadratic and for MLPs.
        return "loop" if self.execution == "auto" else self.execution

    def _looped(
        self, phi: Params, carried: list[_Carried], data: Unroll
    ) -> tuple[list[Params], torch.Tensor, list[_Carried]]:
        """Trajectory by trajectory, ``task_threads`` at once, each thread's operations
        single-threaded (:class:`~distmeta.algorithms.task_threads.TaskThreadPool`)."""

        def one(i: int) -> tuple[Params, torch.Tensor, Params, Any]:
            start = carried[i]
            tensors = (data.inputs[i], data.targets[i], data.query_x[i], data.query_y[i])
            return self._trajectory_gradient(phi, start.fast, start.state, *tensors)

        device = data.inputs.device
        threads = self.task_threads
        if threads == "auto":
            threads = choose_task_threads(device, len(carried))
        results = list(self._threads.map(one, len(carried), threads))
        after = [_Carried(fast, state) for _, _, fast, state in results]
        return [r[0] for r in results], torch.stack([r[1] for r in results]), after

    def _vmapped(
        self, phi: Params, carried: list[_Carried], data: Unroll
    ) -> tuple[list[Params], torch.Tensor, list[_Carried]]:
        fast = tree_map(lambda *ts: torch.stack(ts), *[c.fast for c in carried])
        state = tree_map(lambda *ts: torch.stack(ts), *[c.state for c in carried])
        batched = vmap(self._trajectory_gradient, in_dims=(None, 0, 0, 0, 0, 0, 0))
        grads, stats, fast, state = batched(
            phi, fast, state, data.inputs, data.targets, data.query_x, data.query_y
        )
        tasks = len(carried)
        return (
            [{n: g[i] for n, g in grads.items()} for i in range(tasks)],
            stats,
            [
                _Carried(tree_map(lambda t, i=i: t[i], fast), tree_map(lambda t, i=i: t[i], state))
                for i in range(tasks)
            ],
        )

    def _check_finite(self, grads: list[Params], stats: torch.Tensor, names: list[TaskId]) -> None:
        for i, name in enumerate(names):
            if not bool(stats[i].isfinite().all()):
                raise TaskFailedError(name, "the optimizee's loss is not finite")
            bad = sorted(n for n, g in grads[i].items() if not bool(g.isfinite().all()))
            if bad:
                raise TaskFailedError(name, f"the meta-gradient is not finite in {bad}")

    def _sum(self, grads: list[Params], phi: Params) -> GradientSum:
        """The per-trajectory gradients summed exactly, in slot order."""
        names = list(phi)
        flat = torch.stack([torch.cat([g[n].reshape(-1) for n in names]) for g in grads])
        sums, residuals = compensated_sum(flat)
        sizes = [phi[n].numel() for n in names]
        return GradientSum(
            {n: t.view(phi[n].shape) for n, t in zip(names, sums.split(sizes), strict=True)},
            {n: t.view(phi[n].shape) for n, t in zip(names, residuals.split(sizes), strict=True)},
            len(grads),
        )
