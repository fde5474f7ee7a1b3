"""Follow The Meta Leader (Finn et al., 2019): keep meta-training on a buffer of the tasks
seen so far while the stream goes on."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.inner import Params
from distmeta.algorithms.online.method import (
    OnlineUpdate,
    adapted_afresh,
    cloned,
    loss_of,
    predict_with,
)
from distmeta.tasks.batch import TaskBatch

__all__ = ["FTML"]

Batch = tuple[torch.Tensor, torch.Tensor]


class FTML:
    """FTML on a stream: a buffer of tasks, meta-trained on while the stream goes on.

    Description:
        FTML's buffer holds the tasks seen so far, each with its most recent batches
        (``buffer_batches``); at most ``buffer_tasks`` tasks are kept, the oldest dropped
        first. A revealed batch joins the current task unless a switch is detected (the
        C-MAML test: the current fast weights' loss on it exceeds that of fast weights adapted
        afresh on it by more than ``gamma``), which starts a new task; told the switches it
        uses them (the oracle). After every batch one meta-update is formed from
        ``meta_batch`` tasks drawn from the buffer (with replacement, among tasks of at least
        two batches), each with one of its batches as the support set and another as the
        query set: the algorithm's meta-gradient of that meta-batch is returned. The next
        batch is predicted by the meta-parameters adapted (the algorithm's inner loop) on all
        the batches the current task holds in the buffer: FTML's ``Update(theta, D_t)``.

    Args:
        algorithm: The meta-learning algorithm (inner loop and meta-gradient).
        gamma: Switch threshold on the loss difference.
        buffer_tasks: Tasks kept.
        buffer_batches: Batches kept per task.
        meta_batch: Tasks per meta-update.
        rng: Draws the meta-batches (its state travels in :meth:`state_dict`).
        steps: Inner steps of each adaptation (``None``: the algorithm's own).
        told_switches: Use the true switches (the oracle).

    References:
        Finn, Rajeswaran, Kakade, Levine. Online Meta-Learning. ICML 2019.

    Example:
        >>> learner = FTML(run.algorithm, gamma=1.0, buffer_tasks=50, buffer_batches=8,
        ...                meta_batch=4, rng=np.random.default_rng(0))
        >>> update = learner.observe(meta, batch.x, batch.y)
    """

    meta_learned = True

    def __init__(
        self,
        algorithm: MetaAlgorithm,
        gamma: float,
        buffer_tasks: int,
        buffer_batches: int,
        meta_batch: int,
        rng: np.random.Generator,
        steps: int | None = None,
        told_switches: bool = False,
    ):
        if min(buffer_tasks, buffer_batches, meta_batch) < 1:
            raise ValueError("buffer_tasks, buffer_batches and meta_batch must be >= 1")
        if buffer_batches < 2:
            raise ValueError("buffer_batches must be >= 2: a task needs a support and a query")
        self.algorithm, self.gamma, self.steps = algorithm, float(gamma), steps
        self.buffer_tasks, self.buffer_batches = buffer_tasks, buffer_batches
        self.meta_batch, self.rng, self.told_switches = meta_batch, rng, told_switches
        self.tasks: list[list[Batch]] = []
        """The buffer: each task's most recent batches, oldest task first."""
        self.fast: Params | None = None

    def predict(self, meta: Params | None, x: torch.Tensor) -> torch.Tensor:
        return predict_with(self.algorithm, self.fast, meta, x)

    def _switched(self, meta: Params, x: torch.Tensor, y: torch.Tensor) -> bool:
        fresh = adapted_afresh(self.algorithm, meta, x, y, self.steps)
        return loss_of(self.algorithm, self.fast, x, y) - fresh.loss > self.gamma

    def observe(
        self, meta: Params | None, x: torch.Tensor, y: torch.Tensor, switch: bool | None = None
    ) -> OnlineUpdate:
        if not self.tasks or self.fast is None:  # the stream's first batch
            detected = False
            self.tasks.append([])
        else:
            detected = bool(switch) if switch is not None else self._switched(meta, x, y)
            if detected:
                self.tasks.append([])
                del self.tasks[: -self.buffer_tasks]
        current = self.tasks[-1]
        current.append((x, y))
        del current[: -self.buffer_batches]
        gradient = self._meta_gradient(meta)
        support_x = torch.cat([bx for bx, _ in current])
        support_y = torch.cat([by for _, by in current])
        self.fast = adapted_afresh(self.algorithm, meta, support_x, support_y, self.steps).weights
        return OnlineUpdate(gradient, detected)

    def _meta_gradient(self, meta: Params) -> Params | None:
        """The meta-gradient of ``meta_batch`` buffered tasks, or ``None`` while no task holds
        two batches."""
        eligible = [task for task in self.tasks if len(task) >= 2]
        if not eligible:
            return None
        tasks = []
        for pick in self.rng.integers(len(eligible), size=self.meta_batch):
            task = eligible[pick]
            support, query = self.rng.choice(len(task), size=2, replace=False)
            tasks.append((*task[support], *task[query]))
        gradient, _ = self.algorithm.meta_gradient(meta, TaskBatch.stack(tasks))
        return gradient

    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks": [list(task) for task in self.tasks],
            "fast": cloned(self.fast),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks = [list(task) for task in state["tasks"]]
        self.fast = cloned(state["fast"])
        self.rng.bit_generator.state = state["rng"]
