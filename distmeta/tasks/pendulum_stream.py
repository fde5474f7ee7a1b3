"""A pendulum whose physics switch between regimes that come back (a robot whose dynamics
change): in-distribution regimes, regimes outside the meta-training ranges, and a crippled
actuator."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from distmeta.tasks.pendulum import PendulumSimulator, Regime
from distmeta.tasks.source import task_rng
from distmeta.tasks.stream import StreamBatch
from distmeta.tasks.switching import DRAWS, SwitchingProcess

__all__ = ["PendulumStream"]

Range = tuple[float, float]


class PendulumStream:
    """One stream of pendulum-dynamics tasks on gymnasium's Pendulum.

    Description:
        Each stream owns a fixed library of regimes, drawn once from its seed: ``regimes``
        in-distribution ones (gravity, mass and length uniform in the meta-training ranges),
        ``ood_regimes`` out-of-distribution ones (from the ``ood_`` ranges), and every
        in-distribution regime with each crippled actuator gain of ``actuator_gains`` (GrBAL's
        crippled joint: a gain below 1 weakens the motor, a negative one flips it). At a switch
        the new task is a regime of the drawn mode other than the current one, uniformly, so
        regimes come back: ``StreamBatch.task`` names the regime. Each step is one rollout of
        ``transitions`` transitions of the exploratory policy (:class:`PendulumSimulator`).
        With ``drift``, gravity, mass and length take a random walk between switches whose
        step is ``drift`` times the width of their range.

    Args:
        process: When tasks switch and which mode the next comes from.
        seed: The run's seed.
        index: This stream's index in its fleet.
        steps: Length of the stream.
        transitions: Transitions per step.
        gravity, mass, length: In-distribution ranges (meta-training's).
        regimes: In-distribution regimes in the library.
        ood_gravity, ood_mass, ood_length: Ranges of out-of-distribution regimes.
        ood_regimes: Out-of-distribution regimes in the library.
        actuator_gains: Gains of the crippled actuator (mode 2).
        drift: Random-walk step per time step, as a fraction of each range's width.
        dtype: Floating-point type of the batches.

    Example:
        >>> stream = PendulumStream(SwitchingProcess(0.98, (0.5, 0.25, 0.25)), seed=0,
        ...                         index=0, steps=2000)
        >>> batch = stream.batch(0)  # batch.x: [16, 4], batch.y: [16, 2]; batch.task: a regime
    """

    kind = "regression"
    input_shape = (PendulumSimulator.input_size,)
    output_size = PendulumSimulator.output_size
    mode_names = ("in_distribution", "ood_regime", "crippled_actuator")

    def __init__(
        self,
        process: SwitchingProcess,
        seed: int,
        index: int,
        steps: int,
        transitions: int = 16,
        gravity: Range = (8.0, 12.0),
        mass: Range = (0.8, 1.2),
        length: Range = (0.8, 1.2),
        regimes: int = 4,
        ood_gravity: Range = (14.0, 18.0),
        ood_mass: Range = (1.5, 2.0),
        ood_length: Range = (0.8, 1.2),
        ood_regimes: int = 2,
        actuator_gains: Sequence[float] = (0.3, -1.0),
        drift: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ):
        if min(transitions, regimes, ood_regimes, len(actuator_gains)) < 1:
            raise ValueError("transitions, regimes, ood_regimes and actuator_gains must be >= 1")
        if drift < 0:
            raise ValueError(f"drift must be >= 0, got {drift}")
        self.seed, self.index, self.transitions, self.dtype = seed, index, transitions, dtype
        self.simulator = PendulumSimulator()
        self.schedule = process.schedule(seed, index, steps)
        library = task_rng(seed, 0, index, DRAWS["library"])
        in_ranges, ood_ranges = (gravity, mass, length), (ood_gravity, ood_mass, ood_length)
        inside = [Regime(*(library.uniform(*r) for r in in_ranges)) for _ in range(regimes)]
        outside = [Regime(*(library.uniform(*r) for r in ood_ranges)) for _ in range(ood_regimes)]
        crippled = [
            Regime(r.gravity, r.mass, r.length, gain) for r in inside for gain in actuator_gains
        ]
        self.regimes = (*inside, *outside, *crippled)
        """Every regime of the stream; ``StreamBatch.task`` indexes it."""
        first = np.cumsum([0, len(inside), len(outside), len(crippled)])
        segment_task = self._segment_tasks(first)
        self.task = segment_task[self.schedule.segment]
        """The regime of each step."""
        widths = np.diff(np.array([in_ranges, ood_ranges, in_ranges]), axis=2)[..., 0]
        walk = SwitchingProcess.drift_walk(self.schedule, seed, index, 3)
        self._drift = drift * widths[self.schedule.mode] * walk  # [steps, 3]

    def _segment_tasks(self, first: np.ndarray) -> np.ndarray:
        """The regime of each segment: one of its mode's, never the one just left."""
        tasks: list[int] = []
        for segment, mode in enumerate(self.schedule.segment_modes):
            leaving = tasks[-1] if tasks else -1
            choices = [t for t in range(first[mode], first[mode + 1]) if t != leaving]
            rng = task_rng(self.seed, segment, self.index, DRAWS["tasks"])
            tasks.append(choices[rng.integers(len(choices))] if choices else leaving)
        return np.array(tasks)

    def __len__(self) -> int:
        return len(self.schedule)

    def regime_at(self, step: int) -> Regime:
        """The physics in force at ``step`` (drift included)."""
        base = self.regimes[self.task[step]]
        gravity, mass, length = np.abs(
            np.array([base.gravity, base.mass, base.length]) + self._drift[step]
        )
        return Regime(float(gravity), float(mass), float(length), base.gain)

    def batch(self, step: int) -> StreamBatch:
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} is outside the stream's {len(self)} steps")
        rng = task_rng(self.seed, step, self.index, DRAWS["data"])
        x, y = self.simulator.rollout(self.regime_at(step), rng, self.transitions)
        schedule = self.schedule
        return StreamBatch(
            step,
            torch.from_numpy(x).to(self.dtype),
            torch.from_numpy(y).to(self.dtype),
            int(schedule.mode[step]),
            bool(schedule.switch[step]),
            int(self.task[step]),
        )

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.mse_loss
