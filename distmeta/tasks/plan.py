"""Which tasks make step t's meta-batch: decided here, asked by every engine and transport.

A task is named by ``(seed, step, index)`` and any process can rebuild it, so a worker is
told only a step and a range of indices. The local engine asks the plan for the whole
meta-batch; a Ray worker for its slice of it; an asynchronous request for a whole
meta-batch named by its request number. A stream, whose task at time t depends on t, needs a
different plan, not a different engine: :class:`StreamPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from distmeta.tasks.batch import TaskBatch, TaskId
from distmeta.tasks.optimizee import TrajectoryRequest
from distmeta.tasks.source import TaskSource

__all__ = ["MetaBatchPlan", "StreamPlan", "TrajectoryPlan"]


@dataclass(frozen=True)
class MetaBatchPlan:
    """Step ``t``'s meta-batch is the tasks ``(seed, t, 0..meta_batch_size-1)`` of a source.

    Args:
        seed: The run's seed.
        meta_batch_size: Tasks per step.
    """

    seed: int
    meta_batch_size: int

    def __post_init__(self) -> None:
        if self.meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be positive, got {self.meta_batch_size}")

    def task_ids(self, step: int, start: int = 0, stop: int | None = None) -> list[TaskId]:
        """The names of tasks ``start..stop-1`` of step ``step`` (default: all of them)."""
        stop = self.meta_batch_size if stop is None else stop
        if not 0 <= start < stop <= self.meta_batch_size:
            raise ValueError(
                f"tasks {start}..{stop - 1} are not a part of a meta-batch of "
                f"{self.meta_batch_size}"
            )
        return [(self.seed, step, index) for index in range(start, stop)]

    def batch(
        self, source: TaskSource, step: int, start: int = 0, stop: int | None = None
    ) -> TaskBatch:
        """Tasks ``start..stop-1`` of step ``step``'s meta-batch, sampled from ``source``."""
        ids = self.task_ids(step, start, stop)
        return source.sample(self.seed, step, [index for _, _, index in ids])

    def slices(self, workers: int) -> list[tuple[int, int]]:
        """Contiguous, near-equal task ranges ``[start, stop)`` of a meta-batch, one per
        worker (at most one per task, none empty)."""
        if workers < 1:
            raise ValueError(f"workers must be positive, got {workers}")
        parts = min(self.meta_batch_size, workers)
        edges = [self.meta_batch_size * i // parts for i in range(parts + 1)]
        return list(pairwise(edges))


@dataclass(frozen=True)
class TrajectoryPlan(MetaBatchPlan):
    """Step ``t`` of meta-training a learned optimizer advances the trajectories in slots
    ``0..meta_batch_size-1`` by one unroll each.

    The slots are split among workers like a meta-batch (:meth:`slices`), so in sync mode a
    worker always serves the same slots and keeps their trajectories between steps; which
    trajectory a slot runs, and how far it is, is the algorithm's state
    (:class:`~distmeta.algorithms.L2L`), so the plan names the slots instead of sampling
    data.
    """

    def batch(
        self, source: object, step: int, start: int = 0, stop: int | None = None
    ) -> TrajectoryRequest:
        """The request to advance slots ``start..stop-1`` at step ``step``."""
        ids = self.task_ids(step, start, stop)
        return TrajectoryRequest(self.seed, step, tuple(index for _, _, index in ids))


@dataclass(frozen=True)
class StreamPlan:
    """Which streams a fleet runs, which worker runs each, and in which chunks of steps.

    Stream ``i`` of a run is named ``(seed, i)``: its switches, tasks and data are functions
    of that name (:mod:`distmeta.tasks.switching`), so any worker can run it, and one that
    takes it over after a failure goes on from the step it was at.

    Args:
        seed: The run's seed.
        streams: Streams in the fleet.
        steps: Steps of each stream.

    Example:
        >>> plan = StreamPlan(seed=0, streams=8, steps=2000)
        >>> plan.assignment(workers=2)  # [range(0, 4), range(4, 8)]
        >>> plan.chunks(steps_per_call=10)[:2]  # [(0, 10), (10, 20)]
    """

    seed: int
    streams: int
    steps: int

    def __post_init__(self) -> None:
        if self.streams < 1 or self.steps < 1:
            raise ValueError(
                f"streams and steps must be positive, got {self.streams} and {self.steps}"
            )

    def assignment(self, workers: int) -> list[range]:
        """Contiguous, near-equal groups of stream indices, one per worker (none empty: at
        most one worker per stream)."""
        if workers < 1:
            raise ValueError(f"workers must be positive, got {workers}")
        parts = min(self.streams, workers)
        edges = [self.streams * i // parts for i in range(parts + 1)]
        return [range(lo, hi) for lo, hi in pairwise(edges)]

    def chunks(self, steps_per_call: int) -> list[tuple[int, int]]:
        """Consecutive step ranges ``[start, stop)`` of at most ``steps_per_call`` steps that
        cover the stream."""
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be positive, got {steps_per_call}")
        starts = range(0, self.steps, steps_per_call)
        return [(start, min(start + steps_per_call, self.steps)) for start in starts]
