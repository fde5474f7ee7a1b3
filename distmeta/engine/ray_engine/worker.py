"""TaskWorker: a Ray actor that computes the meta-gradient of a slice of a meta-batch."""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import ray
import torch

from distmeta.config import parse_config
from distmeta.engine.fleet import StreamShard, flat_sum, params_of
from distmeta.engine.layout import ParamLayout
from distmeta.engine.ray_engine.collective import GroupAddress, WorkerChannel, connect
from distmeta.engine.ray_engine.messages import ParamsMessage, SliceResult, StreamChunk
from distmeta.errors import ClusterError
from distmeta.experiment import OnlineStart, build_experiment

__all__ = ["TaskWorker"]


class TaskWorker:
    """Rebuilds tasks from ``(seed, step, index)`` and runs their batched inner loops.

    It never receives tasks: only the parameters (an object-store reference, read zero-copy)
    and the names of its tasks. With a GPU among its Ray resources it computes on CUDA (and
    refuses to start if torch there sees none).

    Args:
        config: The experiment config as plain data (``config_to_dict``).
        index: This worker's position in the pool (for logs).
    """

    def __init__(self, config: dict[str, Any], index: int):
        self.config = parse_config(config)
        self.index = index
        resources = self.config.engine.worker_resources
        torch.set_num_threads(max(1, math.floor(resources.num_cpus)))
        if resources.num_gpus > 0 and not torch.cuda.is_available():
            raise ClusterError(
                f"engine.worker_resources: num_gpus {resources.num_gpus:g}, but torch in the "
                "task worker sees no CUDA device (a CPU build of torch, or no GPU on its node): "
                "set num_gpus: 0 or install torch for the GPU"
            )
        self.device = torch.device("cuda" if resources.num_gpus > 0 else "cpu")
        self.experiment = build_experiment(self.config, self.device)
        self.layout = ParamLayout.of(self.experiment.algorithm.init_params())
        self._channel: WorkerChannel | None = None
        self._streams = StreamShard(self.config)

    def ready(self) -> dict[str, Any]:
        """Where this worker runs and how it runs its tasks there (``loop`` or ``vmap``,
        chosen for its device as the local engine chooses for its own); answers once the
        actor is constructed."""
        return {
            "index": self.index,
            "device": str(self.device),
            "execution": self.experiment.algorithm.resolved_execution(self.device),
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    def device_memory(self) -> dict[str, int] | None:
        """Bytes of its GPU that torch in this worker holds in tensors now (``allocated``),
        at most since the worker started (``peak``) and in its cache (``reserved``);
        ``None`` on a CPU. What a share of a GPU (``engine.worker_resources.num_gpus``
        below 1) must leave room for: Ray divides GPUs between workers, not their memory."""
        if self.device.type != "cuda":
            return None
        return {
            "allocated": torch.cuda.memory_allocated(self.device),
            "peak": torch.cuda.max_memory_allocated(self.device),
            "reserved": torch.cuda.memory_reserved(self.device),
        }

    def compute(self, params: ParamsMessage, step: int, start: int, stop: int) -> SliceResult:
        """The summed meta-gradient of tasks ``(seed, step, start..stop-1)``."""
        began = time.perf_counter()
        exp = self.experiment
        with warnings.catch_warnings():
            # Object-store arrays are read-only; the parameters are only ever read here.
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(params.flat)
        theta = self.layout.unflatten(flat.to(self.device, exp.dtype))
        batch = exp.plan.batch(exp.source, step, start, stop).to(self.device)
        total = exp.algorithm.meta_gradient_sum(theta, batch)
        grad_sum = self.layout.flatten(total.grads).cpu().numpy()
        residual = self.layout.flatten(total.residuals).cpu().numpy()
        seconds = time.perf_counter() - began
        return SliceResult(
            step, start, stop, params.version, grad_sum, residual, total.stats, seconds
        )

    def join_group(self, address: GroupAddress, rank: int, timeout_s: float) -> list[str]:
        """Join the learner's gloo group (``engine.transport: collective``); returns the
        names of the metrics this worker's slices report, in the order it sends them."""
        self._channel = None
        group = connect(address, rank, timeout_s)
        probe = self.experiment.plan.batch(self.experiment.source, 0, 0, 1)
        names = list(self.experiment.algorithm.stat_names(probe))
        self._channel = WorkerChannel(group, address.generation, self.layout.numel, names)
        return names

    def serve_steps(self, generation: int, start: int, stop: int, lo: int, hi: int) -> str:
        """Compute tasks ``lo..hi-1`` of steps ``start..stop-1`` as the learner broadcasts
        their parameters. Returns how the chunk ended: ``done``, ``stopped`` by the learner,
        ``broken`` (a peer died) or ``no group`` (a call Ray retried in a restarted worker)."""
        channel = self._channel
        if channel is None or channel.generation != generation:
            return "no group"
        try:
            for _ in range(start, stop):
                received = channel.receive()
                if received is None:
                    return "stopped"
                version, flat = received
                try:
                    result = self.compute(ParamsMessage(version, flat.numpy()), version, lo, hi)
                except Exception:  # any failure: actor calls recompute the step and report it
                    result = None
                channel.send(version, result)
        except RuntimeError:  # gloo: the learner or another worker died
            self._channel = None
            return "broken"
        return "done"

    def advance_streams(
        self,
        start: OnlineStart,
        seed: int,
        indices: list[int],
        first: int,
        stop: int,
        saved: list[ray.ObjectRef],
        names: list[str],
        *params: ParamsMessage,
    ) -> tuple[Any, ...]:
        """Steps ``first..stop-1`` of the fleet's streams ``indices`` (a stream fleet,
        :mod:`.fleet`), every meta-learned learner ``names[i]`` reading ``params[i]``.

        ``saved`` holds the reference to the learners' states the previous chunk returned
        (empty for the first): fetched only if a stream must be rebuilt here (a restarted
        worker), so a retried call computes what the lost one would have.

        Returns:
            The :class:`StreamChunk`, the learners' states after it, and one
            :class:`SliceResult` per name: the sum of its meta-gradients, on the version it
            read.
        """
        began = time.perf_counter()
        layout = ParamLayout.of(start.meta_params)
        dtype = next(iter(start.meta_params.values())).dtype
        metas = {
            name: params_of(layout, message.flat, dtype)
            for name, message in zip(names, params, strict=True)
        }
        records, states, sums = self._streams.advance(
            start, seed, indices, first, stop, metas, lambda: ray.get(saved[0])
        )
        seconds = time.perf_counter() - began
        slices = [
            SliceResult(
                first,
                0,
                sums[name].count,
                message.version,
                *flat_sum(layout, sums[name]),
                {},
                seconds,
            )
            for name, message in zip(names, params, strict=True)
        ]
        counts = {name: sums[name].count for name in names}
        return (StreamChunk(records, counts, seconds), states, *slices)
