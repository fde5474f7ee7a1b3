"""Streams run where the engine runs them: a fleet of streams sharing meta-parameters.

Every stream has its own learners (the online method, its oracle and the baselines); the
meta-learned ones of all streams read one set of meta-parameters per learner name and send
their meta-gradients to it. The local fleet runs every stream in this process in lockstep,
one outer step per time step (the mean of the streams' meta-gradients); the ``ray`` fleet
(:mod:`distmeta.engine.ray_engine.fleet`) runs them in the task workers, asynchronously.
Both score every step with :func:`~distmeta.algorithms.online.prequential_step`, so one
stream in this process and a fleet on a cluster are scored the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from distmeta.algorithms.gradient import GradientSum
from distmeta.algorithms.inner import Params
from distmeta.algorithms.online import OnlineLearner, prequential_step
from distmeta.config import ExperimentConfig
from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.errors import ConfigError
from distmeta.experiment import OnlineStart, build_learners, build_stream
from distmeta.tasks.stream import Stream

__all__ = [
    "FLEETS",
    "Fleet",
    "FleetResult",
    "LocalFleet",
    "StreamRecord",
    "StreamShard",
    "build_fleet",
    "run_chunk",
]

Progress = Callable[[int], None]
"""Called with the number of stream steps just completed."""


@dataclass
class StreamRecord:
    """Steps ``start..start+len-1`` of one stream: its truth and every learner's scores.

    Args:
        seed: The run's seed.
        index: The stream's index in its fleet.
        start: The first step recorded.
        mode: ``[n]`` mode of the current task at each step.
        switch: ``[n]`` whether a new task began at each step.
        task: ``[n]`` which task was current (the same number when a task comes back).
        loss: Each learner's loss on each step's batch, predicted before its labels.
        accuracy: Each learner's accuracy (classification streams only).
        detected: Whether each learner that looks for switches declared one at each step.
        revised: For those learners, what each step's second look said of the step before
            (``1``: a task began there after all, ``-1``: the switch declared there is
            withdrawn, ``0``: nothing; all 0 for learners that take no second look).
    """

    seed: int
    index: int
    start: int
    mode: np.ndarray
    switch: np.ndarray
    task: np.ndarray
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray] = field(default_factory=dict)
    detected: dict[str, np.ndarray] = field(default_factory=dict)
    revised: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.mode)

    def declared(self, name: str) -> np.ndarray:
        """Where learner ``name`` finally said a task began: its declarations with the
        revisions of the step after each applied (a switch found one step late counts at
        the step it began; a withdrawn one does not count)."""
        declared = self.detected[name].copy()
        revised = self.revised.get(name)
        if revised is not None:
            declared[:-1][revised[1:] > 0] = True
            declared[:-1][revised[1:] < 0] = False
        return declared

    @staticmethod
    def joined(parts: Sequence[StreamRecord]) -> StreamRecord:
        """Consecutive parts of one stream's record as one (they must follow each other)."""
        if not parts:
            raise ValueError("no parts to join")
        ordered = sorted(parts, key=lambda part: part.start)
        expected = ordered[0].start
        for part in ordered:
            if (part.seed, part.index) != (ordered[0].seed, ordered[0].index):
                raise ValueError("parts of different streams cannot be joined")
            if part.start != expected:
                raise ValueError(
                    f"stream {part.index}: a part starts at {part.start}, not {expected}"
                )
            expected += len(part)

        def cat(name: str) -> dict[str, np.ndarray]:
            columns = getattr(ordered[0], name)
            return {
                key: np.concatenate([getattr(p, name)[key] for p in ordered]) for key in columns
            }

        return StreamRecord(
            ordered[0].seed,
            ordered[0].index,
            ordered[0].start,
            np.concatenate([p.mode for p in ordered]),
            np.concatenate([p.switch for p in ordered]),
            np.concatenate([p.task for p in ordered]),
            cat("loss"),
            cat("accuracy"),
            cat("detected"),
            cat("revised"),
        )


class _Recorder:
    """Builds a :class:`StreamRecord` step by step."""

    def __init__(self, seed: int, index: int, start: int):
        self.seed, self.index, self.start = seed, index, start
        self.truth: list[tuple[int, bool, int]] = []
        self.loss: dict[str, list[float]] = {}
        self.accuracy: dict[str, list[float]] = {}
        self.detected: dict[str, list[bool]] = {}
        self.revised: dict[str, list[int]] = {}

    def add(self, batch: Any, scores: Mapping[str, Any]) -> None:
        self.truth.append((batch.mode, batch.switch, batch.task))
        for name, score in scores.items():
            self.loss.setdefault(name, []).append(score.loss)
            if score.accuracy is not None:
                self.accuracy.setdefault(name, []).append(score.accuracy)
            if score.detected_switch is not None:
                self.detected.setdefault(name, []).append(score.detected_switch)
                revision = 0 if score.revised_switch is None else 1 if score.revised_switch else -1
                self.revised.setdefault(name, []).append(revision)

    def record(self) -> StreamRecord:
        mode, switch, task = (np.array(column) for column in zip(*self.truth, strict=True))
        return StreamRecord(
            self.seed,
            self.index,
            self.start,
            mode.astype(np.int8),
            switch.astype(bool),
            task.astype(np.int64),
            {k: np.array(v) for k, v in self.loss.items()},
            {k: np.array(v) for k, v in self.accuracy.items()},
            {k: np.array(v, dtype=bool) for k, v in self.detected.items()},
            {k: np.array(v, dtype=np.int8) for k, v in self.revised.items()},
        )


def run_chunk(
    stream: Stream,
    learners: Mapping[str, OnlineLearner],
    metas: Mapping[str, Params],
    start: int,
    stop: int,
    seed: int,
    index: int,
) -> tuple[StreamRecord, dict[str, GradientSum]]:
    """Steps ``start..stop-1`` of one stream on meta-parameters that hold still meanwhile
    (one read of the learner, as a fleet worker makes): the record, and the exact sum of the
    meta-gradients each meta-learned learner returned (its ``count`` may be 0)."""
    recorder = _Recorder(seed, index, start)
    sums = {
        name: GradientSum.zeros_like(metas[name])
        for name, learner in learners.items()
        if learner.meta_learned
    }
    loss_fn = stream.loss_fn()
    for step in range(start, stop):
        batch = stream.batch(step)
        scores, gradients = prequential_step(learners, metas, batch, loss_fn)
        recorder.add(batch, scores)
        for name, gradient in gradients.items():
            sums[name].add_task(gradient)
    return recorder.record(), sums


@dataclass
class _Slot:
    stream: Stream
    learners: dict[str, OnlineLearner]
    next_step: int


class StreamShard:
    """The streams one fleet worker runs, with their learners, kept between its calls.

    A call advances some streams by a chunk of steps on one read of the meta-parameters.
    When a stream is not where the call starts (the worker is new, restarted after a
    failure, or the stream moved to it), it is rebuilt from its name and its learners are
    given the state they had at that step (saved by the previous chunk's call), so the chunk
    computes exactly what it would have.

    Args:
        config: The experiment with its ``stream`` section.
    """

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self._slots: dict[tuple[int, int], _Slot] = {}

    def advance(
        self,
        start: OnlineStart,
        seed: int,
        indices: Sequence[int],
        first: int,
        stop: int,
        metas: Mapping[str, Params],
        saved_states: Callable[[], Mapping[int, Mapping[str, Any]]],
    ) -> tuple[list[StreamRecord], dict[int, dict[str, Any]], dict[str, GradientSum]]:
        """Steps ``first..stop-1`` of streams ``indices`` of ``seed``.

        Args:
            start: What the learners start from.
            seed: The run's seed.
            indices: The streams.
            first: The first step (0, or where the previous chunk stopped).
            stop: One past the last step.
            metas: The meta-parameters of each meta-learned learner, read once.
            saved_states: Gives every stream's learner states as the previous chunk left
                them (called only when a stream must be rebuilt).

        Returns:
            The streams' records of these steps, their learners' states after them, and
            the exact sum of each meta-learned learner's meta-gradients over them.
        """
        records, states, sums = [], {}, []
        for index in indices:
            slot = self._slots.get((seed, index))
            if slot is None or slot.next_step != first:
                stream = build_stream(self.config, seed, index)
                slot = _Slot(stream, build_learners(self.config, start, stream, seed, index), 0)
                if first > 0:
                    saved = saved_states()[index]
                    for name, learner in slot.learners.items():
                        learner.load_state_dict(saved[name])
                self._slots[(seed, index)] = slot
            record, chunk_sums = run_chunk(
                slot.stream, slot.learners, metas, first, stop, seed, index
            )
            slot.next_step = stop
            records.append(record)
            states[index] = {name: learner.state_dict() for name, learner in slot.learners.items()}
            sums.append(chunk_sums)
        totals = {name: GradientSum.total([part[name] for part in sums]) for name in sums[0]}
        return records, states, totals


@dataclass
class FleetResult:
    """How a fleet of streams went for one seed.

    Args:
        records: Each stream's full record, by index.
        meta_params: The final meta-parameters of each meta-learned learner (by name).
        wall_s: Seconds from the first step to the last.
        stream_steps_per_s: Stream steps (all streams together) per second.
        staleness_max: The largest staleness of an applied meta-update (0 in lockstep).
        rejected: Meta-updates rejected as too stale.
    """

    records: list[StreamRecord]
    meta_params: dict[str, Params]
    wall_s: float
    stream_steps_per_s: float
    staleness_max: int = 0
    rejected: int = 0


class Fleet(Protocol):
    """Runs the streams of a config for one seed at a time."""

    def run(self, seed: int, progress: Progress | None = None) -> FleetResult: ...

    def close(self) -> None:
        """Release workers and actors."""
        ...


def meta_learned_names(config: ExperimentConfig, start: OnlineStart, seed: int) -> list[str]:
    """Names of the learners that read and update meta-parameters (the method, the oracle)."""
    stream = build_stream(config, seed, 0)
    learners = build_learners(config, start, stream, seed, 0)
    return [name for name, learner in learners.items() if learner.meta_learned]


class LocalFleet:
    """Every stream in this process, in lockstep: at each time step every stream predicts,
    is scored and learns, then each meta-learned learner takes one Adam step (``stream.
    meta_lr``; a learned rule's parameters at the start's ``meta_lr_factors`` of it) with the
    mean of the streams' meta-gradients. The reference, and the default.

    Args:
        config: The experiment, with its ``stream`` section.
        start: What the learners start from.
    """

    def __init__(self, config: ExperimentConfig, start: OnlineStart):
        self.config, self.start = config, start
        self.layout = ParamLayout.of(start.meta_params)

    def run(self, seed: int, progress: Progress | None = None) -> FleetResult:
        spec = self.config.stream
        streams = [build_stream(self.config, seed, i) for i in range(spec.streams)]
        lineups = [
            build_learners(self.config, self.start, s, seed, i) for i, s in enumerate(streams)
        ]
        initial = self.layout.flatten(self.start.meta_params)
        learners = {
            name: Learner(self.layout, initial, "adam", spec.meta_lr, self.start.meta_lr_factors)
            for name, learner in lineups[0].items()
            if learner.meta_learned
        }
        recorders = [_Recorder(seed, i, 0) for i in range(spec.streams)]
        dtype = initial.dtype
        began = time.perf_counter()
        for step in range(spec.steps):
            metas = {name: learner.params() for name, learner in learners.items()}
            sums = {name: GradientSum.zeros_like(meta) for name, meta in metas.items()}
            for stream, lineup, recorder in zip(streams, lineups, recorders, strict=True):
                batch = stream.batch(step)
                scores, gradients = prequential_step(lineup, metas, batch, stream.loss_fn())
                recorder.add(batch, scores)
                for name, gradient in gradients.items():
                    sums[name].add_task(gradient)
            for name, total in sums.items():
                if total.count:
                    learners[name].apply(self.layout.flatten(total.mean(dtype)))
            if progress is not None:
                progress(spec.streams)
        wall = time.perf_counter() - began
        return FleetResult(
            [recorder.record() for recorder in recorders],
            {name: _copied(learner.params()) for name, learner in learners.items()},
            wall,
            spec.streams * spec.steps / max(wall, 1e-9),
        )

    def close(self) -> None:
        """Nothing to release in one process."""


def _copied(params: Params) -> Params:
    return {name: p.detach().cpu().clone() for name, p in params.items()}


def _local(config: ExperimentConfig, start: OnlineStart) -> Fleet:
    return LocalFleet(config, start)


def _ray(config: ExperimentConfig, start: OnlineStart) -> Fleet:
    from distmeta.engine.ray_engine.fleet import RayFleet  # Ray loads only for this engine

    return RayFleet(config, start)


FLEETS: dict[str, Callable[[ExperimentConfig, OnlineStart], Fleet]] = {
    "local": _local,
    "ray": _ray,
}
"""``engine.name`` -> where a config's streams run."""


def build_fleet(config: ExperimentConfig, start: OnlineStart) -> Fleet:
    """The fleet of ``engine.name`` for the streams of ``config``."""
    if config.stream is None:
        raise ConfigError("stream: the config has no stream section")
    if config.engine.name not in FLEETS:
        raise ConfigError(
            f"engine.name: unknown {config.engine.name!r} (known: {', '.join(sorted(FLEETS))})"
        )
    return FLEETS[config.engine.name](config, start)


def flat_sum(layout: ParamLayout, total: GradientSum) -> tuple[np.ndarray, np.ndarray]:
    """A gradient sum as the flat float64 ``(sum, residual)`` arrays a fleet result carries."""
    return (
        layout.flatten(total.grads).numpy(),
        layout.flatten(total.residuals).numpy(),
    )


def params_of(layout: ParamLayout, flat: np.ndarray, dtype: torch.dtype) -> Params:
    """Named meta-parameters from a flat array (a learner's message)."""
    return layout.unflatten(torch.from_numpy(np.array(flat)).to(dtype))
