"""A batch of few-shot tasks as stacked tensors, the unit every algorithm consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["TaskBatch", "TaskId"]

TaskId = tuple[int, int, int]
"""A task's name ``(seed, step, index)``: enough for any process to rebuild it."""


@dataclass(frozen=True)
class TaskBatch:
    """Support and query sets of several tasks, stacked along a leading task dimension.

    Args:
        support_x: ``[tasks, n_support, *input_shape]``.
        support_y: ``[tasks, n_support, *target_shape]``.
        query_x: ``[tasks, n_query, *input_shape]``.
        query_y: ``[tasks, n_query, *target_shape]``.
        ids: Optional ``(seed, step, index)`` of each task, used to name a failing task.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ids: tuple[TaskId, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        tensors = {
            "support_x": self.support_x,
            "support_y": self.support_y,
            "query_x": self.query_x,
            "query_y": self.query_y,
        }
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"TaskBatch.{name} must be a torch.Tensor, got {type(value)}")
            if value.dim() < 2:
                raise ValueError(
                    f"TaskBatch.{name} must be [tasks, n, ...], got {tuple(value.shape)}"
                )
        tasks = {name: value.shape[0] for name, value in tensors.items()}
        if len(set(tasks.values())) != 1:
            raise ValueError(f"TaskBatch tensors disagree on the number of tasks: {tasks}")
        if self.support_x.shape[1] != self.support_y.shape[1]:
            raise ValueError("support_x and support_y disagree on the number of support samples")
        if self.query_x.shape[1] != self.query_y.shape[1]:
            raise ValueError("query_x and query_y disagree on the number of query samples")
        if self.ids is not None and len(self.ids) != len(self):
            raise ValueError(f"TaskBatch has {len(self)} tasks but {len(self.ids)} ids")

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unbatched ``(support_x, support_y, query_x, query_y)`` of one task."""
        return (
            self.support_x[index],
            self.support_y[index],
            self.query_x[index],
            self.query_y[index],
        )

    def task_id(self, index: int) -> TaskId | None:
        return None if self.ids is None else self.ids[index]

    def select(self, indices: Sequence[int]) -> TaskBatch:
        """The tasks at ``indices``, in that order."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        ids = None if self.ids is None else tuple(self.ids[i] for i in indices)
        return TaskBatch(
            self.support_x[index],
            self.support_y[index],
            self.query_x[index],
            self.query_y[index],
            ids,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        """Move to ``device``; ``dtype`` converts the floating-point tensors only."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return TaskBatch(
            move(self.support_x),
            move(self.support_y),
            move(self.query_x),
            move(self.query_y),
            self.ids,
        )

    @staticmethod
    def stack(
        tasks: Sequence[tuple[torch.Tensor, ...]], ids: Sequence[TaskId] | None = None
    ) -> TaskBatch:
        """Stack unbatched ``(support_x, support_y, query_x, query_y)`` tuples."""
        if not tasks:
            raise ValueError("cannot stack an empty list of tasks")
        columns = [torch.stack(column) for column in zip(*tasks, strict=True)]
        return TaskBatch(*columns, ids=None if ids is None else tuple(ids))
