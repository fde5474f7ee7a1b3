"""Optimisation problems for a learned optimizer: trajectories rebuilt from their name.

A learned optimizer is meta-trained on whole optimisation runs (trajectories) of problems of a
family. A trajectory is named like a task, ``(seed, start, index)``, and any process rebuilds
from the name alone its problem's initial parameters (:meth:`ProblemFamily.initial_params`),
the data of its loss at every optimizee step ``k`` (:meth:`ProblemFamily.steps`: one batch per
step, the same one for a full-batch problem) and a held-out query set
(:meth:`ProblemFamily.query_set`). :class:`Unroll` stacks the data of several trajectories for
``count`` consecutive steps.

Families: the DeepMind quadratic (:class:`~distmeta.tasks.Quadratic`), sinusoid regression with
fresh points at every step (:class:`~distmeta.tasks.Sinusoid`) and few-shot image
classification on a task's support set (:class:`~distmeta.tasks.FewShotImages`: a small
Omniglot Conv4).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from distmeta.tasks.batch import TaskId
from distmeta.tasks.source import task_rng

__all__ = [
    "ProblemFamily",
    "TrajectoryRequest",
    "Unroll",
    "fresh_params",
]

Params = dict[str, torch.Tensor]


@runtime_checkable
class ProblemFamily(Protocol):
    """A distribution of optimisation problems, each rebuilt from its trajectory's name."""

    kind: str
    input_shape: tuple[int, ...]
    output_size: int

    def loss_fn(self) -> Any:
        """The optimizee's loss of predictions against targets."""
        ...

    def initial_params(self, model: nn.Module, name: TaskId) -> Params:
        """The parameters the trajectory ``name`` starts from (keys of ``model``)."""
        ...

    def steps(self, name: TaskId, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``[count, n, *input_shape]`` and targets ``[count, n, ...]`` of the losses
        at optimizee steps ``first..first+count-1`` of trajectory ``name``."""
        ...

    def query_set(self, name: TaskId) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out inputs ``[m, *input_shape]`` and targets of the problem ``name``."""
        ...


def fresh_params(model: nn.Module, name: TaskId) -> Params:
    """``model``'s parameters initialised anew (each module's own ``reset_parameters``, the
    PyTorch default) from a seed that the trajectory's name determines."""
    seed = int(task_rng(*name, stream=1).integers(2**62))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = copy.deepcopy(model)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return {n: p.detach() for n, p in fresh.named_parameters()}


@dataclass(frozen=True)
class Unroll:
    """The data of ``count`` consecutive optimizee steps of several trajectories.

    Args:
        inputs: ``[trajectories, count, n, *input_shape]``.
        targets: ``[trajectories, count, n, ...]``.
        query_x: ``[trajectories, m, *input_shape]``.
        query_y: ``[trajectories, m, ...]``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @staticmethod
    def of(
        family: ProblemFamily, names: Sequence[TaskId], firsts: Sequence[int], count: int
    ) -> Unroll:
        """Steps ``firsts[i]..firsts[i]+count-1`` of trajectory ``names[i]``, for each ``i``."""
        steps = [family.steps(n, f, count) for n, f in zip(names, firsts, strict=True)]
        queries = [family.query_set(n) for n in names]
        return Unroll(
            torch.stack([s[0] for s in steps]),
            torch.stack([s[1] for s in steps]),
            torch.stack([q[0] for q in queries]),
            torch.stack([q[1] for q in queries]),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Unroll:
        """Move to ``device``; ``dtype`` converts the floating-point tensors only."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return Unroll(*(move(t) for t in (self.inputs, self.targets, self.query_x, self.query_y)))


@dataclass(frozen=True)
class TrajectoryRequest:
    """Advance the trajectories in slots ``indices`` by one unroll, at step ``step``.

    What the engines hand :class:`~distmeta.algorithms.L2L` instead of a batch of data: the
    data of a slot's unroll depends on which trajectory the slot runs and how far it is,
    which only the process holding the trajectory knows, so the algorithm samples it.
    """

    seed: int
    step: int
    indices: tuple[int, ...]

    @property
    def ids(self) -> tuple[TaskId, ...]:
        return tuple((self.seed, self.step, i) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TrajectoryRequest:
        """The request itself: it holds no data (the algorithm samples it on its device)."""
        return self
