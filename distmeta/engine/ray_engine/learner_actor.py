"""LearnerActor: the parameter server. Holds the meta-parameters and applies worker results."""

from __future__ import annotations

import uuid
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import ray
import torch

from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.engine.ray_engine.collective import (
    GroupAddress,
    LearnerChannel,
    SliceFailed,
    connect,
    open_store,
)
from distmeta.engine.ray_engine.messages import ParamsMessage, SliceResult, merge_results
from distmeta.engine.rundir import RunDir
from distmeta.engine.schedule import OuterLRSchedule

__all__ = ["LearnerActor"]

_METRICS_KEPT = 16
"""Applied sync steps whose metrics the learner keeps (more than the steps ever in flight)."""


class LearnerActor:
    """Wraps :class:`~distmeta.engine.learner.Learner` (one flat fp32 buffer, the outer
    optimizer, a version) behind Ray.

    Workers' results arrive as arguments resolved by Ray from their object references, so
    gradients never pass through the driver. When Ray restarts this actor after a crash,
    it restores the newest checkpoint of the run (or the initial parameters if none was
    written yet) and the driver rewinds to that step.

    Args:
        layout: Names and shapes of the meta-parameters.
        initial: Flat initial meta-parameters.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: Outer learning rate (schedule).
        lr_factors: Named meta-parameters at another rate (the Learner's ``lr_factors``).
        run_dir: The run's folder (local path or URI), read only after a restart; ``None``
            for a learner that is not restarted (a stream fleet's, whose meta-parameters
            have no checkpoints).
        clip_norm: The Learner's ``clip_norm``.
    """

    def __init__(
        self,
        layout: ParamLayout,
        initial: np.ndarray,
        optimizer: str,
        lr: float | OuterLRSchedule,
        lr_factors: dict[str, float],
        run_dir: str | None,
        clip_norm: float | None = None,
    ):
        torch.set_num_threads(1)
        self.incarnation_id = uuid.uuid4().hex
        self._recent: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._channel: LearnerChannel | None = None
        self._optimizer = optimizer
        self.learner = Learner(
            layout, torch.from_numpy(np.array(initial)), optimizer, lr, lr_factors, clip_norm
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # raised inside Ray's own property
            self.restored = ray.get_runtime_context().was_current_actor_reconstructed
        if self.restored and run_dir is not None:
            checkpoint = RunDir(run_dir).latest_checkpoint()
            if checkpoint is not None:
                self.learner.load_state_dict(checkpoint["engine"]["learner"])

    def _message(self) -> ParamsMessage:
        return ParamsMessage(self.learner.version, self.learner.theta.numpy())

    def params(self) -> ParamsMessage:
        return self._message()

    def reset(self, initial: np.ndarray) -> ParamsMessage:
        """Start over from ``initial``, as a new actor would: version 0, a fresh outer
        optimizer, no metrics kept. A stream fleet runs its seeds one after another on the
        same learners rather than start a process per seed."""
        learner = self.learner
        self.learner = Learner(
            learner.layout,
            torch.from_numpy(np.array(initial)),
            self._optimizer,
            learner.schedule,
            learner.lr_factors,
            learner.clip_norm,
        )
        self._recent.clear()
        return self._message()

    def version(self) -> int:
        return self.learner.version

    def incarnation(self) -> str:
        """Differs after Ray restarted this actor (and it restored a checkpoint)."""
        return self.incarnation_id

    def step_metrics(self, step: int) -> dict[str, Any] | None:
        """The metrics of applied step ``step``, if it is among the last few."""
        return self._recent.get(step)

    @ray.method(num_returns=2)
    def apply_sync(
        self, step: int, batch_size: int, *results: SliceResult
    ) -> tuple[dict[str, Any], ParamsMessage]:
        """Average exactly the tasks ``0..batch_size-1`` of step ``step`` and take one step.

        ``results`` are the workers' slices, or fewer pre-merged by a reduction tree. Does
        nothing if the learner is not at version ``step`` (a step after a failed one, or a
        learner just restored from a checkpoint): a step is applied once or not at all.
        """
        return self._apply_sync(step, batch_size, results)

    def _apply_sync(
        self, step: int, batch_size: int, results: tuple[SliceResult, ...]
    ) -> tuple[dict[str, Any], ParamsMessage]:
        if self.learner.version != step:
            return {"applied": False, "version": self.learner.version}, self._message()
        merged = merge_results(list(results))
        if (merged.step, merged.version, merged.start, merged.stop) != (step, step, 0, batch_size):
            raise ValueError(
                f"step {step}: results cover tasks {merged.start}..{merged.stop - 1} of step "
                f"{merged.step} at version {merged.version}, not the whole meta-batch"
            )
        self.learner.apply(merged.mean_gradient())
        metrics = {"applied": True, "version": self.learner.version, **merged.mean_stats()}
        metrics["worker_seconds"] = merged.compute_s
        self._recent[step] = dict(metrics)
        while len(self._recent) > _METRICS_KEPT:
            self._recent.popitem(last=False)
        return metrics, self._message()

    def open_group(self, world: int, generation: int, timeout_s: float) -> GroupAddress:
        """Start the rendezvous of a gloo group of this learner and ``world - 1`` workers
        (``engine.transport: collective``); :meth:`join_group` completes it."""
        self._channel = None
        self._store, self._address = open_store(world, generation, timeout_s)
        return self._address

    def join_group(self, timeout_s: float) -> None:
        group = connect(self._address, 0, timeout_s, store=self._store)
        self._channel = LearnerChannel(group, self._address.generation, self.learner.theta.numel())

    def drive_steps(
        self,
        generation: int,
        workers: list[Any],
        bounds: list[tuple[int, int]],
        start: int,
        stop: int,
        names: list[str],
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Run sync steps ``start..stop-1`` over the gloo group: the driver is out of the
        steps' path and waits once per chunk.

        Returns the applied steps' records and, if the chunk stopped early, why: ``failed``
        (a worker could not compute its slice, or the group broke: a peer died) or
        ``skipped`` (the learner is not at version ``start``, or has no group
        ``generation``). The driver finishes the segment with actor calls, which retry,
        recompute and name a failing task.
        """
        channel = self._channel
        if self.learner.version != start or channel is None or channel.generation != generation:
            return [], "skipped"
        batch_size = bounds[-1][1]
        serving = [
            worker.serve_steps.remote(generation, start, stop, lo, hi)
            for worker, (lo, hi) in zip(workers, bounds, strict=True)
        ]
        records = []
        try:
            for step in range(start, stop):
                results = channel.step(step, self.learner.theta, bounds, names)
                records.append(self._apply_sync(step, batch_size, tuple(results))[0])
        except SliceFailed:
            return records, "failed"
        except RuntimeError:  # gloo: a peer closed its sockets (died) or timed out
            self._channel = None
            return records, "failed"
        ray.get(serving)
        return records, None

    @ray.method(num_returns=2)
    def apply_async(
        self, result: SliceResult, max_staleness: int
    ) -> tuple[dict[str, Any], ParamsMessage]:
        """Apply one result as it arrives, unless it is more than ``max_staleness`` old."""
        if result.version > self.learner.version:  # computed before a restore: a lost future
            report = {"accepted": False, "staleness": -1, "version": self.learner.version}
            return report, self._message()
        outcome = self.learner.apply_stale(result.mean_gradient(), result.version, max_staleness)
        report = {
            "accepted": outcome.accepted,
            "staleness": outcome.staleness,
            "version": self.learner.version,
            **result.mean_stats(),
        }
        return report, self._message()

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> int:
        self._recent.clear()
        self.learner.load_state_dict(state)
        return self.learner.version
