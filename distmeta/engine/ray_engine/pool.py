"""WorkerPool: the task-worker actors, their placement, health and requests in flight."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from distmeta.config import EngineConfig
from distmeta.engine.ray_engine.placement import worker_strategy
from distmeta.engine.ray_engine.worker import TaskWorker
from distmeta.errors import TaskFailedError

__all__ = ["WorkerPool"]


class WorkerPool:
    """Starts ``engine.workers`` TaskWorkers (spread over the cluster's nodes, or in the
    caller's placement group: :mod:`.placement`) and tracks them.

    Ray restarts a worker whose process or node dies (on any node with room for it) and
    retries its unfinished requests there, so a slice is recomputed rather than lost;
    requests that fail with :class:`TaskFailedError` are retried ``max_task_retries`` times
    before the error reaches the caller. The pool counts each worker's requests in flight
    and refuses more than ``max_in_flight`` per worker, so no worker builds a backlog.

    Args:
        engine: The engine section of the config (workers, resources, retries).
        config: The whole experiment config as plain data, for the workers to rebuild it.
        max_in_flight: Requests one worker may have pending.
    """

    def __init__(self, engine: EngineConfig, config: dict[str, Any], max_in_flight: int = 2):
        resources = engine.worker_resources
        options = {
            "num_cpus": resources.num_cpus,
            "num_gpus": resources.num_gpus,
            "resources": dict(resources.resources),
            "max_restarts": -1,
            "max_task_retries": engine.max_task_retries,
        }
        actor = ray.remote(TaskWorker)
        self.workers = [
            actor.options(**options, scheduling_strategy=worker_strategy(index)).remote(
                config, index
            )
            for index in range(engine.workers)
        ]
        self.max_in_flight = max_in_flight
        self._in_flight: dict[ray.ObjectRef, tuple[int, Any]] = {}

    def __len__(self) -> int:
        return len(self.workers)

    def wait_ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until every worker is constructed; return where each runs."""
        try:
            return ray.get([worker.ready.remote() for worker in self.workers], timeout=timeout)
        except GetTimeoutError:
            raise TimeoutError(
                f"{len(self.workers)} task workers did not start within {timeout} s: "
                "does the cluster have the resources of engine.worker_resources?"
            ) from None

    def health(self, timeout: float = 10.0) -> list[bool]:
        """Whether each worker answers within ``timeout`` seconds (restarting ones do not)."""
        probes = [worker.ready.remote() for worker in self.workers]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout)
        done = set(ready)
        return [probe in done for probe in probes]

    def submit(self, index: int, *args: Any, tag: Any = None) -> ray.ObjectRef:
        """``workers[index].compute(*args)``, counted as in flight until :meth:`complete`."""
        if self.in_flight(index) >= self.max_in_flight:
            raise RuntimeError(
                f"worker {index} already has {self.max_in_flight} requests in flight"
            )
        ref = self.workers[index].compute.options(retry_exceptions=[TaskFailedError]).remote(*args)
        self._in_flight[ref] = (index, tag)
        return ref

    def in_flight(self, index: int | None = None) -> int:
        if index is None:
            return len(self._in_flight)
        return sum(1 for worker, _ in self._in_flight.values() if worker == index)

    def idle_workers(self) -> list[int]:
        return [i for i in range(len(self.workers)) if self.in_flight(i) == 0]

    def wait_any(self, timeout: float | None = None) -> tuple[ray.ObjectRef | None, int, Any]:
        """The next finished request (not fetched): its reference, worker and tag;
        ``(None, -1, None)`` if none finished within ``timeout`` seconds."""
        ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if not ready:
            return None, -1, None
        ref = ready[0]
        index, tag = self._in_flight.pop(ref)
        return ref, index, tag

    def complete(self, refs: list[ray.ObjectRef]) -> None:
        for ref in refs:
            self._in_flight.pop(ref, None)

    def forget_all(self) -> None:
        """Stop tracking every request (their results will be ignored)."""
        self._in_flight.clear()

    def close(self, grace_s: float = 5.0) -> None:
        """Let requests in flight finish (at most ``grace_s``), then end the workers."""
        if self._in_flight:
            ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=grace_s)
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        self._in_flight.clear()
