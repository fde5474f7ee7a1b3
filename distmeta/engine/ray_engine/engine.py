"""RayEngine: task workers compute slices of each meta-batch, a learner actor applies them."""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.engine.base import LearnerRestored
from distmeta.engine.layout import ParamLayout
from distmeta.engine.ray_engine.cluster import RayConnection
from distmeta.engine.ray_engine.learner_actor import LearnerActor
from distmeta.engine.ray_engine.messages import SliceResult, merge_results
from distmeta.engine.ray_engine.placement import learner_strategy
from distmeta.engine.ray_engine.pool import WorkerPool
from distmeta.engine.ray_engine.transport import MEASURED_STEPS, choose_transport, short_steps
from distmeta.engine.rundir import RunDir
from distmeta.engine.schedule import OuterLRSchedule, rule_lr_factors
from distmeta.errors import TaskFailedError
from distmeta.experiment import build_experiment

__all__ = ["RayEngine"]

_SYNC_STEPS_IN_FLIGHT = 2
"""Sync steps submitted ahead of the one being finished. Ray runs a learner's calls in
submission order, so step s+1 still reads the parameters after step s; submitting ahead only
hides the driver's round trip, which decides the speed of small models."""

_CHUNK_S = 0.5
"""Seconds of steps the learner runs per call under ``engine.transport: collective``: long
enough that the driver's calls are rare, short enough for a live progress bar."""
_MAX_CHUNK = 1024
_JOIN_TIMEOUT_S = 120.0
"""How long forming a gloo group may wait for its members (a restarting worker included)."""


def _chunk_steps(records: list[dict[str, Any]]) -> int:
    """Steps that take about :data:`_CHUNK_S`, from the last chunk's compute times (plus a
    millisecond of communication per step)."""
    per_step = sorted(r["worker_seconds"] for r in records)[len(records) // 2] + 0.001
    return max(1, min(_MAX_CHUNK, int(_CHUNK_S / per_step)))


class _SliceLost(Exception):
    """A slice's result is gone (its worker or node died for good): recompute the step."""


# Below these sizes the learner adds all results itself: a tree adds a hop (about a
# millisecond of task latency per level) and saves nothing (measured in BENCHMARKS.md).
_TREE_MIN_WORKERS = 4
_TREE_MIN_PARAMETERS = 1_000_000


def _use_tree(reduction: str, workers: int, parameters: int) -> bool:
    if reduction == "auto":
        return workers >= _TREE_MIN_WORKERS and parameters >= _TREE_MIN_PARAMETERS
    return reduction == "tree"


@ray.remote(num_cpus=0)
def _merge_pair(a: SliceResult, b: SliceResult) -> SliceResult:
    """One node of the reduction tree; Ray runs it where most of its input bytes are."""
    return merge_results([a, b])


def _step_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A sync step's metrics from the learner's record of it; :class:`LearnerRestored` when
    the learner refused the step (it is at another version: restored from a checkpoint)."""
    if not record["applied"]:
        raise LearnerRestored(record["version"])
    return {k: v for k, v in record.items() if k not in ("applied", "version")}


class RayEngine:
    """The ``ray`` engine: sync (one exact outer step per meta-batch) or async (bounded
    staleness), with the learner as a parameter-server actor.

    The driver only passes object references: the learner's parameters go to the workers
    through the object store, and the workers' results go to the learner without passing
    through the driver.

    Args:
        config: The experiment.
        run_dir: The run's folder; a restarted learner restores its newest checkpoint.
    """

    def __init__(self, config: ExperimentConfig, run_dir: RunDir):
        self.config = config
        self.connection = RayConnection(config.engine)
        try:
            experiment = build_experiment(config, torch.device("cpu"))
            initial = experiment.algorithm.init_params()
            self.layout = ParamLayout.of(initial)
            self.learner = (
                ray.remote(LearnerActor)
                .options(
                    num_cpus=0,
                    max_restarts=-1,
                    max_task_retries=0,
                    scheduling_strategy=learner_strategy(),
                )
                .remote(
                    self.layout,
                    self.layout.flatten(initial).numpy(),
                    config.algorithm.outer_optimizer,
                    OuterLRSchedule.of(config),
                    rule_lr_factors(config, experiment.algorithm),
                    run_dir.uri,
                    config.algorithm.outer_clip_norm,
                )
            )
            self.pool = WorkerPool(
                config.engine,
                config_to_dict(config),
                max_in_flight=_SYNC_STEPS_IN_FLIGHT + 1,
                cluster_may_grow=not self.connection.started_here,
            )
        except BaseException:
            self.connection.close()
            raise
        self.bounds = experiment.plan.slices(len(self.pool))
        """Each worker's slice of a sync step's meta-batch."""
        self.tree_reduction = _use_tree(
            config.engine.reduction, config.engine.workers, self.layout.numel
        )
        self.transport = choose_transport(config.engine, self.layout.numel, self.tree_reduction)
        self._step_seconds: list[float] = []
        self._chunk = 8
        self._generation = 0
        self._group_names: list[str] | None = None
        self._learner_incarnation = ray.get(self.learner.incarnation.remote())
        self._params_ref: ray.ObjectRef | None = None
        self._next_request = 0
        self._rejected = 0

    # --- the Engine interface -----------------------------------------------------------------

    def run(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        if self.config.engine.mode == "sync":
            return self._run_sync(start, stop)
        return self._run_async(start, stop)

    def params(self) -> dict[str, torch.Tensor]:
        message = ray.get(self.learner.params.remote())
        flat = torch.tensor(message.flat)
        return {name: p.clone() for name, p in self.layout.unflatten(flat).items()}

    def state_dict(self) -> dict[str, Any]:
        try:
            learner = ray.get(self.learner.state_dict.remote())
        except RayActorError:  # it died after the segment's last step was reported
            raise self._learner_restored() from None
        return {"learner": learner, "next_request": self._next_request}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ray.get(self.learner.load_state_dict.remote(state["learner"]))
        self._next_request = int(state.get("next_request", 0))
        self._params_ref = None

    def close(self) -> None:
        try:
            if ray.is_initialized():
                self.pool.close()
                ray.kill(self.learner, no_restart=True)
        finally:
            self.connection.close()

    # --- sync -------------------------------------------------------------------------------

    def _run_sync(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        if self.transport == "measure":
            measured = min(stop, start + MEASURED_STEPS - len(self._step_seconds))
            for metrics in self._run_tasks(start, measured):
                self._step_seconds.append(metrics["worker_seconds"])
                yield metrics
            if len(self._step_seconds) >= MEASURED_STEPS:
                self.transport = "collective" if short_steps(self._step_seconds) else "tasks"
            start = measured
        if self.transport == "collective":
            yield from self._run_collective(start, stop)
        else:
            yield from self._run_tasks(start, stop)

    def _run_collective(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        """Steps the learner runs over the gloo group (:mod:`.collective`), in chunks of
        about :data:`_CHUNK_S`; the next chunk is queued at the learner before this one is
        read, so the learner never waits for the driver.

        A chunk that stops early (a slice failed, a peer died) hands the rest of the segment
        to actor calls, which retry, recompute and name a failing task; the next segment
        builds a new group.
        """
        names = self._group_names or self._open_group()
        if names is None:
            yield from self._run_tasks(start, stop)
            return
        self._params_ref = None
        timeout = self.config.engine.step_timeout_s
        pending: deque[tuple[int, int, ray.ObjectRef]] = deque()
        step, failed = start, None
        while failed is None and (step < stop or pending):
            while step < stop and len(pending) < 2:
                chunk = min(self._chunk, stop - step)
                ref = self.learner.drive_steps.remote(
                    self._generation,
                    self.pool.workers,
                    self.bounds,
                    step,
                    step + chunk,
                    names,
                )
                pending.append((step, chunk, ref))
                step += chunk
            first, chunk, ref = pending.popleft()
            try:
                records, failure = ray.get(ref, timeout=timeout * (chunk + 1))
            except GetTimeoutError:
                raise self.pool.stalled(first) from None
            except RayActorError:
                raise self._learner_restored() from None
            for record in records:
                yield _step_metrics(record)
            if failure is not None:
                failed = first + len(records)
                self._group_names = None
            elif records:
                self._chunk = _chunk_steps(records)
        if failed is not None:
            yield from self._after_failed_step(failed, stop)

    def _open_group(self) -> list[str] | None:
        """A new gloo group of the learner and the workers; the metric names they send, or
        ``None`` if it could not be built (the segment then runs as actor calls)."""
        self._generation += 1
        timeout = min(self.config.engine.step_timeout_s, _JOIN_TIMEOUT_S)
        try:
            address = ray.get(
                self.learner.open_group.remote(len(self.pool) + 1, self._generation, timeout),
                timeout=timeout,
            )
            joins = [self.learner.join_group.remote(timeout)] + [
                worker.join_group.remote(address, rank, timeout)
                for rank, worker in enumerate(self.pool.workers, start=1)
            ]
            self._group_names = ray.get(joins, timeout=2 * timeout)[1]
        except RayError as error:
            warnings.warn(
                f"this segment's sync steps run as actor calls: the gloo group did not form "
                f"({type(error).__name__}: {error})",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        return self._group_names

    def _after_failed_step(self, failed: int, stop: int) -> Iterator[dict[str, float]]:
        incarnation = ray.get(self.learner.incarnation.options(max_task_retries=-1).remote())
        if incarnation != self._learner_incarnation:
            raise self._learner_restored()
        version = ray.get(self.learner.version.remote())
        for step in range(failed, version):
            metrics = ray.get(self.learner.step_metrics.remote(step))
            if metrics is None:
                raise LearnerRestored(version)  # not kept: rewind to what the learner holds
            yield _step_metrics(metrics)
        yield from self._run_tasks(version, stop)

    def _run_tasks(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        """Submit steps ahead, finish them in order; recompute a step whose slice was lost.

        Ray itself restarts a dead worker and retries its request; a slice can still be
        lost with its node (the result object gone), in which case this step and the ones
        submitted after it are resubmitted from the learner's current parameters (the pool
        fails the run after ``engine.max_task_retries`` losses of one step).
        """
        batch_size = self.config.train.meta_batch_size
        params = self._params_ref or self.learner.params.remote()
        self._params_ref = None  # until this segment finishes cleanly
        pending: deque[tuple[int, ray.ObjectRef, list[ray.ObjectRef]]] = deque()
        step = start
        try:
            while step < stop or pending:
                while step < stop and len(pending) <= _SYNC_STEPS_IN_FLIGHT:
                    slices = self.pool.submit_slices(params, step, self.bounds)
                    merged = self._reduce(slices)
                    metrics, params = self.learner.apply_sync.remote(step, batch_size, *merged)
                    pending.append((step, metrics, slices))
                    step += 1
                done, metrics_ref, slices = pending.popleft()
                try:
                    yield self._finish_sync(done, metrics_ref, slices)
                except _SliceLost as lost:
                    self.pool.slice_lost(done, str(lost))
                    pending.clear()
                    self.pool.forget_all()
                    params, step = self.learner.params.remote(), done
            self._params_ref = params
        finally:
            self.pool.forget_all()

    def _finish_sync(
        self, step: int, metrics_ref: ray.ObjectRef, slices: list[ray.ObjectRef]
    ) -> dict[str, float]:
        try:
            metrics = ray.get(metrics_ref, timeout=self.config.engine.step_timeout_s)
        except GetTimeoutError:
            raise self.pool.stalled(step) from None
        except TaskFailedError as error:
            raise TaskFailedError(error.task, error.reason) from None
        except RayActorError as error:
            if getattr(error, "actor_id", None) == self.learner._actor_id.hex():
                raise self._learner_restored() from None
            raise _SliceLost(f"a worker died for good: {type(error).__name__}") from None
        except ObjectLostError as error:
            raise _SliceLost(f"{type(error).__name__}") from None
        finally:
            self.pool.complete(slices)
        return _step_metrics(metrics)

    def _learner_restored(self) -> LearnerRestored:
        """Wait for Ray to restart the learner; it restores the newest checkpoint."""
        self.pool.forget_all()
        self._group_names = None  # the restarted learner is in no group
        self._params_ref = None
        version = ray.get(self.learner.version.options(max_task_retries=-1).remote())
        self._learner_incarnation = ray.get(self.learner.incarnation.remote())
        return LearnerRestored(version)

    def _reduce(self, slices: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """The references the learner receives: the slices, or their reduction tree's root."""
        if not self.tree_reduction:
            return slices
        level = slices
        while len(level) > 1:
            merged = [
                _merge_pair.remote(a, b) for a, b in zip(level[0::2], level[1::2], strict=False)
            ]
            level = merged + (level[-1:] if len(level) % 2 else [])
        return level

    # --- async ------------------------------------------------------------------------------

    def _run_async(self, start: int, stop: int) -> Iterator[dict[str, float]]:
        """Apply results as they arrive until the learner reaches version ``stop``.

        Each request is a whole meta-batch of tasks ``(seed, r, i)`` for a fresh request
        number ``r``; results more than ``engine.max_staleness`` versions old are rejected
        (counted in the next record's ``rejected_count``), accepted ones are damped by
        staleness. Each worker has one request in flight.
        """
        batch = self.config.train.meta_batch_size
        max_staleness = self.config.engine.max_staleness
        params = self._params_ref or self.learner.params.remote()
        version = start
        for worker in self.pool.idle_workers():
            self.pool.submit(worker, params, self._next_request, 0, batch)
            self._next_request += 1
        while version < stop:
            ref, worker = self.pool.wait_any(timeout=self.config.engine.step_timeout_s)
            if ref is None:
                raise self.pool.stalled(version)
            outcome_ref, params = self.learner.apply_async.remote(ref, max_staleness)
            self._params_ref = params
            self.pool.submit(worker, params, self._next_request, 0, batch)
            self._next_request += 1
            try:
                outcome = ray.get(outcome_ref, timeout=self.config.engine.step_timeout_s)
            except GetTimeoutError:
                raise self.pool.stalled(version) from None
            except TaskFailedError as error:
                raise TaskFailedError(error.task, error.reason) from None
            except RayActorError as error:
                if getattr(error, "actor_id", None) == self.learner._actor_id.hex():
                    raise self._learner_restored() from None
                raise
            if outcome["version"] < version:  # the learner restarted and restored a checkpoint
                self.pool.forget_all()
                self._params_ref = None
                raise LearnerRestored(outcome["version"])
            if not outcome.pop("accepted"):
                self._rejected += 1
                continue
            version = outcome.pop("version")
            outcome["rejected_count"] = self._rejected
            outcome["staleness_max"] = outcome["staleness"]
            self._rejected = 0
            yield outcome
