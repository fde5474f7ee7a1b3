"""WorkerPool: the task-worker actors and their health, in one place.

After Ray RLlib's ``FaultTolerantActorManager``: the pool starts the workers (refusing at once
a request the cluster can never hold), caps the requests in flight per worker, probes their
health, counts their restarts and the losses of each step's slices, and turns a step that
waits too long into a :class:`~distmeta.errors.ClusterError` naming the workers that do not
answer. The engine's step loop only submits, waits and reports.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from distmeta.config import EngineConfig, WorkerResources
from distmeta.engine.ray_engine.placement import worker_strategy
from distmeta.engine.ray_engine.worker import TaskWorker
from distmeta.errors import ClusterError, TaskFailedError

__all__ = ["WorkerPool", "cluster_capacity"]


def _demand(resources: WorkerResources) -> dict[str, float]:
    """What one worker asks Ray for, by resource name (zero amounts left out)."""
    demand = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, **resources.resources}
    return {name: amount for name, amount in demand.items() if amount > 0}


def cluster_capacity(resources: WorkerResources) -> tuple[int, dict[str, float]]:
    """How many workers asking for ``resources`` the cluster's live nodes hold at once, and
    the cluster's total resources (CPU, GPU and the custom ones a worker asks for)."""
    demand = _demand(resources)
    fits, totals = 0, Counter[str]()
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        totals.update({name: have.get(name, 0.0) for name in ("CPU", "GPU", *demand)})
        if demand:
            fits += min(
                math.floor(have.get(name, 0.0) / need + 1e-9) for name, need in demand.items()
            )
    return fits, dict(totals)


def _cause(error: RayActorError) -> str:
    """The message of the error a worker's constructor raised (Ray wraps it in a report)."""
    cause = getattr(error, "error_msg", None) or str(error)
    for line in reversed(cause.splitlines()):
        if "Error: " in line:
            return line.split("Error: ", 1)[1].strip()
    return cause.strip().splitlines()[-1] if cause.strip() else type(error).__name__


class WorkerPool:
    """Starts ``engine.workers`` TaskWorkers (spread over the cluster's nodes, or in the
    caller's placement group: :mod:`.placement`) and keeps track of their health.

    Ray restarts a worker whose process or node dies (on any node with room for it) and
    retries its unfinished requests there, so a slice is usually recomputed rather than lost;
    requests that fail with :class:`TaskFailedError` are retried ``max_task_retries`` times
    before the error reaches the caller. A slice can still be lost for good (its node gone
    with the result): :meth:`slice_lost` counts the losses of each step and fails the run
    after ``max_task_retries``. Each worker may have ``max_in_flight`` requests pending, so
    none builds a backlog.

    Args:
        engine: The engine section of the config (workers, resources, retries, timeouts).
        config: The whole experiment config as plain data, for the workers to rebuild it.
        max_in_flight: Requests one worker may have pending.
        cluster_may_grow: Whether the cluster can gain nodes (one distmeta joined, which may
            autoscale) or not (a local Ray it started): a request the cluster cannot hold
            then fails at once instead of after ``engine.step_timeout_s``.

    Raises:
        ClusterError: The cluster cannot hold the workers (at once, or when they did not start
            within ``engine.step_timeout_s``), or a worker failed to start.
    """

    def __init__(
        self,
        engine: EngineConfig,
        config: dict[str, Any],
        max_in_flight: int = 2,
        cluster_may_grow: bool = True,
    ):
        self.engine = engine
        self.max_in_flight = max_in_flight
        in_trial = ray.util.get_current_placement_group() is not None
        if not cluster_may_grow and not in_trial:
            fits, _ = cluster_capacity(engine.worker_resources)
            if fits < engine.workers:
                raise self._unplaceable()
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
        self._in_flight: dict[ray.ObjectRef, int] = {}
        self._pids: list[int | None] = [None] * engine.workers
        self.restarts = [0] * engine.workers
        """Times Ray restarted each worker, as seen by the probes (:meth:`health`)."""
        self._losses: Counter[int] = Counter()
        self.placement = self._wait_ready(engine.step_timeout_s)
        """Where each worker runs and how (``index``, ``device``, ``execution``, ``node``,
        ``pid``)."""

    def __len__(self) -> int:
        return len(self.workers)

    def _unplaceable(self) -> ClusterError:
        fits, totals = cluster_capacity(self.engine.worker_resources)
        demand = _demand(self.engine.worker_resources)
        has = ", ".join(f"{amount:g} {name}" for name, amount in sorted(totals.items()))
        asks = ", ".join(f"{amount:g} {name}" for name, amount in sorted(demand.items()))
        return ClusterError(
            f"engine.workers: {self.engine.workers} workers of engine.worker_resources "
            f"({asks or 'nothing'} each) do not fit the cluster, which has {has or 'nothing'} "
            f"and holds {fits} such workers: lower engine.workers or engine.worker_resources"
        )

    def _wait_ready(self, timeout: float) -> list[dict[str, Any]]:
        try:
            placed = ray.get([worker.ready.remote() for worker in self.workers], timeout=timeout)
        except (GetTimeoutError, RayActorError) as error:
            for worker in self.workers:
                ray.kill(worker, no_restart=True)
            if isinstance(error, GetTimeoutError):
                raise self._unplaceable() from None
            raise ClusterError(f"a task worker could not start: {_cause(error)}") from None
        self._pids = [entry["pid"] for entry in placed]
        return placed

    # --- health -------------------------------------------------------------------------------

    def health(self, timeout: float = 10.0) -> list[bool]:
        """Whether each worker answers within ``timeout`` seconds (restarting ones do not);
        counts the restarts the answers reveal (a worker in a new process)."""
        probes = [worker.ready.remote() for worker in self.workers]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout)
        answered = set(ready)
        for index, probe in enumerate(probes):
            if probe in answered:
                pid = ray.get(probe)["pid"]
                if self._pids[index] is not None and pid != self._pids[index]:
                    self.restarts[index] += 1
                self._pids[index] = pid
        return [probe in answered for probe in probes]

    def stalled(self, step: int) -> ClusterError:
        """The error for step ``step``, which waited ``engine.step_timeout_s`` in vain, naming
        the workers that do not answer."""
        silent = [i for i, healthy in enumerate(self.health()) if not healthy]
        restarted = {i: n for i, n in enumerate(self.restarts) if n}
        return ClusterError(
            f"step {step} waited {self.engine.step_timeout_s:g} s (engine.step_timeout_s); "
            f"workers {silent or 'all answer, the learner does not'} are not answering"
            + (f" (restarts so far: {restarted})" if restarted else "")
            + ": can the cluster still host engine.workers workers with "
            "engine.worker_resources?"
        )

    def slice_lost(self, step: int, reason: str) -> None:
        """Count a slice of step ``step`` lost for good; after ``max_task_retries`` losses
        of one step, raise :class:`TaskFailedError` (the caller recomputes the step
        otherwise)."""
        self._losses[step] += 1
        self.health()  # count the restart, if that is what lost it
        if self._losses[step] > self.engine.max_task_retries:
            raise TaskFailedError(
                None, f"a slice of step {step} was lost {self._losses[step]} times ({reason})"
            )

    # --- requests -----------------------------------------------------------------------------

    def submit(self, index: int, *args: Any) -> ray.ObjectRef:
        """``workers[index].compute(*args)``, counted as in flight until :meth:`complete`."""
        return self.call(index, "compute", *args)[0]

    def call(
        self, index: int, method: str, *args: Any, num_returns: int = 1
    ) -> list[ray.ObjectRef]:
        """``workers[index].<method>(*args)``'s ``num_returns`` results; the first counts as
        in flight until :meth:`wait_any` returns it or :meth:`complete`."""
        if self.in_flight(index) >= self.max_in_flight:
            raise RuntimeError(
                f"worker {index} already has {self.max_in_flight} requests in flight"
            )
        remote = getattr(self.workers[index], method).options(
            retry_exceptions=[TaskFailedError], num_returns=num_returns
        )
        refs = remote.remote(*args)
        refs = [refs] if num_returns == 1 else list(refs)
        self._in_flight[refs[0]] = index
        return refs

    def submit_slices(
        self, params: Any, step: int, bounds: list[tuple[int, int]]
    ) -> list[ray.ObjectRef]:
        """Each worker's slice ``bounds[i]`` of step ``step``, on ``params``."""
        return [self.submit(index, params, step, lo, hi) for index, (lo, hi) in enumerate(bounds)]

    def in_flight(self, index: int | None = None) -> int:
        if index is None:
            return len(self._in_flight)
        return sum(1 for worker in self._in_flight.values() if worker == index)

    def idle_workers(self) -> list[int]:
        return [i for i in range(len(self.workers)) if self.in_flight(i) == 0]

    def wait_any(self, timeout: float | None = None) -> tuple[ray.ObjectRef | None, int]:
        """The next finished request (not fetched) and its worker; ``(None, -1)`` if none
        finished within ``timeout`` seconds."""
        ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=timeout)
        if not ready:
            return None, -1
        return ready[0], self._in_flight.pop(ready[0])

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
