"""Sync steps over a gloo process group: the learner broadcasts, each worker sends its slice back.

On this project's 2-core machine a Ray actor call costs milliseconds of scheduling and
wake-ups, and a sync step needs one per worker: the 1,761-parameter sinusoid MLP, whose
slice computes in about a millisecond, ran three times slower on the ray engine than in one
process (BENCHMARKS.md). A torch.distributed gloo group between the learner (rank 0) and the
workers moves the same bytes over TCP sockets that stay open between steps; Ray only starts
each chunk of steps (``engine.transport: collective``).

Per step the learner broadcasts ``[command, version, parameters]`` and receives from each
worker ``[status, compute seconds, metric sums, gradient sum, residual]`` in float64 (the
gradient sums' own accumulator type; parameters in float32 pass exactly), so the learner
adds the same bits as with actor calls. A worker whose slice fails sends a ``failed`` status
and waits for the learner's ``stop``; the engine then finishes the segment with actor calls,
which retry and name the task.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import ray
import torch
from torch.distributed import ProcessGroupGloo, TCPStore

from distmeta.engine.ray_engine.messages import SliceResult

__all__ = [
    "GroupAddress",
    "LearnerChannel",
    "SliceFailed",
    "WorkerChannel",
    "connect",
    "open_store",
]

_STEP, _STOP = 1.0, 0.0
_OK, _FAILED = 0.0, 1.0
_HEADER = 2


class SliceFailed(Exception):
    """A worker could not compute its slice (it sent a ``failed`` status)."""


@dataclass(frozen=True)
class GroupAddress:
    """Where the group's rendezvous store listens, and which group it is."""

    host: str
    port: int
    world: int
    generation: int


def open_store(world: int, generation: int, timeout_s: float) -> tuple[TCPStore, GroupAddress]:
    """The rendezvous store on a free port of this node's Ray address (rank 0 calls this).

    The store listens on that address only (torch's own would listen on every interface).
    """
    host = ray.util.get_node_ip_address()
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    listener.bind(address)
    listener.listen()
    port = listener.getsockname()[1]
    store = TCPStore(
        host,
        port,
        world,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=listener.detach(),  # the store owns the socket from here
    )
    return store, GroupAddress(host, port, world, generation)


def connect(
    address: GroupAddress, rank: int, timeout_s: float, store: TCPStore | None = None
) -> ProcessGroupGloo:
    """Join the group as ``rank``; returns once every rank joined. Sockets bind to this
    node's Ray address (127.0.0.1 for a local Ray started by distmeta), never a guessed one."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = TCPStore(
            address.host, address.port, address.world, is_master=False, timeout=timeout
        )
    options = ProcessGroupGloo._Options()
    options._devices = [ProcessGroupGloo.create_device(hostname=ray.util.get_node_ip_address())]
    options._timeout = timeout
    options._threads = 1
    return ProcessGroupGloo(store, rank, address.world, options)


def _sections(numel: int, metrics: int) -> tuple[slice, slice, slice]:
    """Where a worker's payload holds the metric sums, the gradient sum and the residual."""
    grads = _HEADER + metrics
    return slice(_HEADER, grads), slice(grads, grads + numel), slice(grads + numel, None)


def _payload_size(numel: int, metrics: int) -> int:
    return _HEADER + metrics + 2 * numel


class LearnerChannel:
    """Rank 0's side: one broadcast and one receive per worker per step."""

    def __init__(self, group: ProcessGroupGloo, generation: int, numel: int):
        self.group = group
        self.generation = generation
        self._command = torch.zeros(_HEADER + numel, dtype=torch.float64)
        self._numel = numel

    def step(
        self,
        version: int,
        theta: torch.Tensor,
        bounds: list[tuple[int, int]],
        names: list[str],
    ) -> list[SliceResult]:
        """Send the parameters of ``version``; the workers' slices of step ``version``.
        Raises :class:`SliceFailed` (after telling the workers to stop) if one failed."""
        self._command[0], self._command[1] = _STEP, version
        self._command[_HEADER:] = theta
        self.group.broadcast(self._command, 0).wait()
        buffers = [
            torch.empty(_payload_size(self._numel, len(names)), dtype=torch.float64) for _ in bounds
        ]
        for rank, buffer in enumerate(buffers, start=1):
            self.group.recv([buffer], rank, version).wait()
        if any(buffer[0].item() == _FAILED for buffer in buffers):
            self.stop()
            raise SliceFailed(f"a worker failed on step {version}")
        return [
            _unpack(buffer, version, lo, hi, names, self._numel)
            for buffer, (lo, hi) in zip(buffers, bounds, strict=True)
        ]

    def stop(self) -> None:
        """End the workers' current chunk early."""
        self._command[0] = _STOP
        self.group.broadcast(self._command, 0).wait()


class WorkerChannel:
    """A worker's side: receive the step's parameters, send the slice back."""

    def __init__(self, group: ProcessGroupGloo, generation: int, numel: int, names: list[str]):
        self.group = group
        self.generation = generation
        self.names = names
        self._numel = numel
        self._command = torch.zeros(_HEADER + numel, dtype=torch.float64)
        self._payload = torch.zeros(_payload_size(numel, len(names)), dtype=torch.float64)

    def receive(self) -> tuple[int, torch.Tensor] | None:
        """The next step's version and flat parameters (float64); ``None`` on ``stop``."""
        self.group.broadcast(self._command, 0).wait()
        if self._command[0].item() == _STOP:
            return None
        return int(self._command[1].item()), self._command[_HEADER:]

    def send(self, version: int, result: SliceResult | None) -> None:
        """The slice of step ``version``; ``None`` reports that it failed."""
        payload = self._payload
        if result is None:
            payload.zero_()
            payload[0] = _FAILED
        else:
            stats, grads, residual = _sections(self._numel, len(self.names))
            payload[0], payload[1] = _OK, result.compute_s
            payload[stats] = torch.tensor(
                [result.stats[name] for name in self.names], dtype=torch.float64
            )
            # Gradient sums are float64 (ACCUMULATOR_DTYPE): copied without rounding.
            payload[grads] = torch.from_numpy(result.grad_sum)
            payload[residual] = torch.from_numpy(result.residual)
        self.group.send([payload], 0, version).wait()


def _unpack(
    buffer: torch.Tensor,
    version: int,
    start: int,
    stop: int,
    names: list[str],
    numel: int,
) -> SliceResult:
    stats, grads, residual = _sections(numel, len(names))
    values = buffer.numpy()
    metrics = dict(zip(names, values[stats].tolist(), strict=True))
    return SliceResult(
        version, start, stop, version, values[grads], values[residual], metrics, float(values[1])
    )
