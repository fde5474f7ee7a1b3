"""Tasks of a looped batch on several threads, each thread calling its own copy of the model.

``torch.func.functional_call`` swaps a module's parameters for the tensors it is given for the
duration of a call, so two threads must never call the same module. The calling thread uses
the model itself; each helper thread uses a replica. Replicas are made on the calling thread
before any task starts and kept for later calls: a replica copied while the calling thread is
inside ``functional_call`` would copy the adapted (non-leaf) tensors swapped into the model,
which ``copy.deepcopy`` refuses, and the helper would die.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

__all__ = ["TaskThreadPool"]

_Result = TypeVar("_Result")


class _TaskQueue:
    """Task indices handed to several threads one at a time, their results returned in order.

    Helper threads call :meth:`work`; the calling thread iterates :meth:`results`, which
    computes tasks too while the next result in order is not ready. After a task fails, no
    new task starts, and the failure is raised in its place in the order.
    """

    def __init__(self, fn: Callable[[int], _Result], tasks: int):
        self._fn, self._tasks = fn, tasks
        self._next = 0
        self._stopped = False
        self._finished: dict[int, tuple[bool, object]] = {}
        self._changed = threading.Condition()

    def _take(self) -> int | None:
        with self._changed:
            if self._stopped or self._next == self._tasks:
                return None
            self._next += 1
            return self._next - 1

    def _run(self, index: int) -> None:
        try:
            outcome = (True, self._fn(index))
        except Exception as error:
            outcome = (False, error)
        with self._changed:
            self._finished[index] = outcome
            self._stopped = self._stopped or not outcome[0]
            self._changed.notify_all()

    def work(self) -> None:
        while (index := self._take()) is not None:
            self._run(index)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True

    def results(self) -> Iterator[_Result]:
        for wanted in range(self._tasks):
            while wanted not in self._finished:
                index = self._take()
                if index is not None:
                    self._run(index)
                    continue
                with self._changed:  # every task is taken: wait for the one wanted
                    while wanted not in self._finished:
                        self._changed.wait()
            with self._changed:
                succeeded, value = self._finished.pop(wanted)
            if not succeeded:
                raise value
            yield value


@contextmanager
def _single_threaded_operations() -> Iterator[None]:
    """torch's intra-op parallelism off for the block (process-wide), then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TaskThreadPool:
    """Runs a function of a task index on several threads, results in task order.

    Args:
        model: The module the calling thread calls; helpers call replicas of it.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._replicas: list[nn.Module] = []
        self._local = threading.local()

    def current_model(self) -> nn.Module:
        """The module this thread may call: the model, or this helper thread's replica."""
        return getattr(self._local, "replica", self.model)

    def map(self, fn: Callable[[int], _Result], tasks: int, threads: int) -> Iterator[_Result]:
        """``fn(0), ..., fn(tasks - 1)`` in order, ``threads`` of them at once: the calling
        thread computes tasks too, beside ``threads - 1`` helper threads (each thread
        allocates from its own malloc arena, so one thread fewer is one arena's memory less).
        Operations run single-threaded meanwhile."""
        threads = min(threads, tasks)
        if threads <= 1:
            yield from map(fn, range(tasks))
            return
        spare: queue.SimpleQueue[nn.Module] = queue.SimpleQueue()
        for replica in self._replicas_for(threads - 1):
            spare.put(replica)
        work = _TaskQueue(fn, tasks)
        with (
            _single_threaded_operations(),
            ThreadPoolExecutor(threads - 1, initializer=self._adopt, initargs=(spare,)) as pool,
        ):
            for _ in range(threads - 1):
                pool.submit(work.work)
            try:
                yield from work.results()
            finally:
                work.stop()

    def _replicas_for(self, helpers: int) -> list[nn.Module]:
        """``helpers`` replicas, copied here on the calling thread, never during a task."""
        while len(self._replicas) < helpers:
            self._replicas.append(copy.deepcopy(self.model))
        return self._replicas[:helpers]

    def _adopt(self, spare: queue.SimpleQueue[nn.Module]) -> None:
        self._local.replica = spare.get_nowait()
