"""When a stream's task changes, and to what kind of task: OSAKA's non-stationary process.

At every step the current task stays with probability ``alpha`` (OSAKA's ``prob_statio``);
otherwise a new task begins, drawn from a *mode*: in-distribution (what meta-training saw)
or one of the out-of-distribution ones, with the given probabilities. A new task may come
from the same mode as the last. Between switches a task's parameters may drift (a random walk
that restarts at each switch). Everything is a function of ``(seed, index)`` of the stream,
so any process rebuilds the same schedule, and any step can be read without the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distmeta.tasks.source import task_rng

__all__ = ["DRAWS", "Schedule", "SwitchingProcess"]

DRAWS = {
    "schedule": 1_001,
    "drift": 1_002,
    "tasks": 1_003,
    "data": 1_004,
    "library": 1_005,
    "learner": 1_006,
}
"""The ``stream`` word of :func:`~distmeta.tasks.source.task_rng` for each use of a stream's
randomness (its switches, drift, task draws, per-step data, a stream's fixed library of
tasks such as pendulum regimes, and the draws of the learners on it), so that no two uses
share draws and none overlaps the tasks of meta-training (``stream`` 0)."""


@dataclass(frozen=True)
class Schedule:
    """Which task is current at each step of one stream.

    Attributes:
        switch: ``[steps]`` bool, true where a new task begins (never at step 0: nothing came
            before it).
        mode: ``[steps]`` the mode of the current task (0 in-distribution, 1 and 2 out of it).
        segment: ``[steps]`` the number of the current task (0, 1, ...) in the stream.
    """

    switch: np.ndarray
    mode: np.ndarray
    segment: np.ndarray

    def __len__(self) -> int:
        return len(self.switch)

    @property
    def starts(self) -> np.ndarray:
        """The first step of each segment (0 and every switch)."""
        return np.flatnonzero(np.r_[True, self.switch[1:]])

    @property
    def segment_modes(self) -> np.ndarray:
        """The mode of each segment."""
        return self.mode[self.starts]


@dataclass(frozen=True)
class SwitchingProcess:
    """Switches at rate ``1 - alpha``, new tasks from modes drawn with ``mode_probs``.

    The stream starts with an in-distribution task (where meta-training left off).

    Args:
        alpha: Probability that the current task stays for the next step, in ``[0, 1)``.
        mode_probs: Probability of each mode at a switch (in-distribution first).

    Example:
        >>> process = SwitchingProcess(alpha=0.98, mode_probs=(0.5, 0.25, 0.25))
        >>> schedule = process.schedule(seed=0, index=0, steps=2000)
        >>> schedule.switch.mean()  # about 0.02
    """

    alpha: float
    mode_probs: Sequence[float]

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        probs = np.asarray(self.mode_probs, dtype=float)
        if probs.ndim != 1 or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
            raise ValueError(f"mode_probs must be probabilities summing to 1, got {probs}")

    def schedule(self, seed: int, index: int, steps: int) -> Schedule:
        """The schedule of stream ``index`` of ``seed`` over ``steps`` steps."""
        if steps < 1:
            raise ValueError(f"a stream needs at least one step, got {steps}")
        rng = task_rng(seed, 0, index, DRAWS["schedule"])
        switch = rng.random(steps) >= self.alpha
        switch[0] = False
        segment = np.cumsum(switch)
        modes = rng.choice(len(self.mode_probs), size=int(segment[-1]) + 1, p=self.mode_probs)
        modes[0] = 0
        return Schedule(switch, modes[segment], segment)

    @staticmethod
    def drift_walk(schedule: Schedule, seed: int, index: int, dims: int) -> np.ndarray:
        """``[steps, dims]``: a standard normal random walk per dimension that restarts at
        zero at the first step of every segment (scale it by each parameter's step size)."""
        rng = task_rng(seed, 0, index, DRAWS["drift"])
        increments = rng.standard_normal((len(schedule), dims))
        walk = np.cumsum(increments, axis=0)
        first = schedule.starts[schedule.segment]  # each step's segment start
        # Restart at each segment's first step: subtract the walk as it stood there.
        return walk - walk[first]
