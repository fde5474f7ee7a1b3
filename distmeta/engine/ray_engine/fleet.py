"""RayFleet: many streams in the task workers, one learner actor per meta-learned learner.

Each worker runs its share of the streams (:class:`~distmeta.tasks.StreamPlan`), a chunk of
``stream.steps_per_call`` steps per call on one read of the meta-parameters; every stream's
learners predict and adapt on its own data. The meta-gradients of a chunk go straight from
the worker to the learner actor, which applies them asynchronously with bounded staleness
(``engine.max_staleness``; stale ones damped by ``1 / (1 + staleness)``), and the worker's
next call reads the parameters that result. A worker that dies is restarted by Ray and its
call retried (:class:`~distmeta.engine.ray_engine.pool.WorkerPool`): the retried call
rebuilds its streams at the chunk's first step from their names and the learners' states
the previous chunk returned, so no stream loses a step. The learner actors start with the
fleet's first run and are reset for each next seed (a process start costs seconds, and every
stream waits for its learners' first reply).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.engine.fleet import (
    FleetResult,
    Progress,
    StreamRecord,
    meta_learned_names,
    params_of,
)
from distmeta.engine.layout import ParamLayout
from distmeta.engine.ray_engine.cluster import RayConnection
from distmeta.engine.ray_engine.learner_actor import LearnerActor
from distmeta.engine.ray_engine.messages import StreamChunk
from distmeta.engine.ray_engine.placement import learner_strategy
from distmeta.engine.ray_engine.pool import WorkerPool
from distmeta.engine.schedule import OuterLRSchedule
from distmeta.errors import ClusterError, TaskFailedError
from distmeta.experiment import OnlineStart
from distmeta.tasks import StreamPlan

__all__ = ["RayFleet"]


class RayFleet:
    """The ``ray`` engine for streams: a fleet in the task workers, asynchronous learners.

    Args:
        config: The experiment with its ``stream`` section (``engine.workers`` workers).
        start: What every stream's learners start from.
    """

    def __init__(self, config: ExperimentConfig, start: OnlineStart):
        self.config, self.start = config, start
        self.layout = ParamLayout.of(start.meta_params)
        self.connection = RayConnection(config.engine)
        try:
            self.pool = WorkerPool(
                config.engine,
                config_to_dict(config),
                max_in_flight=1,
                cluster_may_grow=not self.connection.started_here,
            )
        except BaseException:
            self.connection.close()
            raise
        self._start_ref = ray.put(start)
        self._initial = self.layout.flatten(start.meta_params).numpy()
        self._learners: dict[str, Any] = {}

    def _learner(self, name: str) -> Any:
        """The learner actor of ``name``, started at the first run that needs it and reused
        by the next (a process start is seconds, a fleet run's time to its first
        meta-update)."""
        if name not in self._learners:
            lr = OuterLRSchedule(self.config.stream.meta_lr)
            # Not restarted: its meta-parameters have no checkpoint to come back from.
            actor = ray.remote(LearnerActor).options(
                num_cpus=0, max_restarts=0, scheduling_strategy=learner_strategy()
            )
            self._learners[name] = actor.remote(
                self.layout, self._initial, "adam", lr, self.start.meta_lr_factors, None
            )
        return self._learners[name]

    def _drop_learners(self) -> None:
        for learner in self._learners.values():
            ray.kill(learner, no_restart=True)
        self._learners.clear()

    def run(self, seed: int, progress: Progress | None = None) -> FleetResult:
        """Every stream of ``seed`` to its end; raises :class:`ClusterError` when a worker
        stays lost or a step waits longer than ``engine.step_timeout_s``."""
        spec, engine = self.config.stream, self.config.engine
        names = meta_learned_names(self.config, self.start, seed)
        learners = {name: self._learner(name) for name in names}
        params = {name: learner.reset.remote(self._initial) for name, learner in learners.items()}
        plan = StreamPlan(seed, spec.streams, spec.steps)
        groups = plan.assignment(len(self.pool))
        chunks = plan.chunks(spec.steps_per_call)
        parts: dict[int, list[StreamRecord]] = {i: [] for i in range(spec.streams)}
        position = [0] * len(groups)
        saved: list[list[ray.ObjectRef]] = [[] for _ in groups]
        calls: dict[ray.ObjectRef, list[ray.ObjectRef]] = {}
        reports = []

        def submit(worker: int) -> None:
            lo, hi = chunks[position[worker]]
            refs = self.pool.call(
                worker,
                "advance_streams",
                self._start_ref,
                seed,
                list(groups[worker]),
                lo,
                hi,
                saved[worker],
                names,
                *(params[name] for name in names),
                num_returns=2 + len(names),
            )
            calls[refs[0]] = refs

        began = time.perf_counter()
        try:
            for worker in range(len(groups)):
                submit(worker)
            while calls:
                ref, worker = self.pool.wait_any(timeout=engine.step_timeout_s)
                if ref is None:
                    raise self.pool.stalled(chunks[min(position)][0])
                refs = calls.pop(ref)
                chunk: StreamChunk = self._fetch(ref)
                for record in chunk.records:
                    parts[record.index].append(record)
                saved[worker] = [refs[1]]
                for name, result in zip(names, refs[2:], strict=True):
                    if chunk.counts[name]:
                        report, params[name] = learners[name].apply_async.remote(
                            result, engine.max_staleness
                        )
                        reports.append(report)
                if progress is not None:
                    progress(sum(len(record) for record in chunk.records))
                position[worker] += 1
                if position[worker] < len(chunks):
                    submit(worker)
            outcomes = ray.get(reports)
            final = {name: ray.get(learner.params.remote()) for name, learner in learners.items()}
        except RayActorError as error:  # not a worker (_fetch names those): a learner
            self._drop_learners()
            raise _learner_lost(error) from None
        except BaseException:
            self._drop_learners()  # the next run starts on fresh ones, whatever this left
            raise
        finally:
            self.pool.forget_all()
        wall = time.perf_counter() - began
        dtype = next(iter(self.start.meta_params.values())).dtype
        return FleetResult(
            [StreamRecord.joined(parts[i]) for i in range(spec.streams)],
            {name: self._params(message.flat, dtype) for name, message in final.items()},
            wall,
            spec.streams * spec.steps / max(wall, 1e-9),
            max((o["staleness"] for o in outcomes if o["accepted"]), default=0),
            sum(not o["accepted"] for o in outcomes),
        )

    @staticmethod
    def _fetch(ref: ray.ObjectRef) -> StreamChunk:
        try:
            return ray.get(ref)
        except TaskFailedError as error:
            raise TaskFailedError(error.task, error.reason) from None
        except RayActorError as error:
            if isinstance(error, RayTaskError):  # the call's argument failed: a learner's reply
                raise _learner_lost(error) from None
            raise ClusterError(
                "a fleet worker was lost for good (Ray restarts a worker and retries its "
                f"call engine.max_task_retries times): {type(error).__name__}"
            ) from None

    def _params(self, flat: Any, dtype: Any) -> dict[str, Any]:
        return {name: p.clone() for name, p in params_of(self.layout, flat, dtype).items()}

    def close(self) -> None:
        try:
            if ray.is_initialized():
                self._drop_learners()
                self.pool.close()
        finally:
            self.connection.close()


def _learner_lost(error: RayActorError) -> ClusterError:
    return ClusterError(
        "a fleet learner actor was lost (learners are not restarted: their meta-parameters "
        "have no checkpoint to come back from); this run cannot finish, the fleet's next run "
        f"starts new learners: {type(error).__name__}"
    )
