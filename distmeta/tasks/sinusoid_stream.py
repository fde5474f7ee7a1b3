"""A switching sinusoid (MOCA's setting): y = A sin(w x - phase) + noise, its task changing."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from distmeta.tasks.source import task_rng
from distmeta.tasks.stream import StreamBatch
from distmeta.tasks.switching import DRAWS, SwitchingProcess

__all__ = ["SinusoidStream"]

Range = tuple[float, float]


class SinusoidStream:
    """One stream of sinusoid regression tasks whose amplitude, phase and frequency switch.

    Description:
        In-distribution tasks are those of meta-training (amplitude in ``amplitude``, phase in
        ``phase``, frequency 1); the first out-of-distribution mode draws the amplitude from
        ``ood_amplitude``, the second the frequency from ``ood_frequency``. MOCA's switching
        sinusoid uses the in-distribution ranges, 10 points per step with x uniform in
        [-5, 5], and Gaussian noise of variance 0.05. With ``drift``, amplitude and phase
        take a random walk between switches whose step is ``drift`` times the width of their
        range (the amplitude is kept positive by reflection at zero).

    Args:
        process: When tasks switch and which mode the next comes from.
        seed: The run's seed.
        index: This stream's index in its fleet (independent streams for one seed).
        steps: Length of the stream.
        points: Labelled points per step.
        amplitude: In-distribution amplitude range.
        phase: Phase range (every mode).
        x_range: Range of the inputs.
        ood_amplitude: Amplitude range of mode 1.
        ood_frequency: Frequency range of mode 2.
        noise_var: Variance of the observation noise.
        drift: Random-walk step per time step, as a fraction of each range's width.
        dtype: Floating-point type of the batches.

    Example:
        >>> stream = SinusoidStream(SwitchingProcess(0.98, (0.5, 0.25, 0.25)), seed=0,
        ...                         index=0, steps=2000)
        >>> batch = stream.batch(10)  # batch.x, batch.y: [10, 1]; batch.mode, batch.switch
    """

    kind = "regression"
    input_shape = (1,)
    output_size = 1
    mode_names = ("in_distribution", "ood_amplitude", "ood_frequency")

    def __init__(
        self,
        process: SwitchingProcess,
        seed: int,
        index: int,
        steps: int,
        points: int = 10,
        amplitude: Range = (0.1, 5.0),
        phase: Range = (0.0, math.pi),
        x_range: Range = (-5.0, 5.0),
        ood_amplitude: Range = (5.0, 10.0),
        ood_frequency: Range = (1.5, 2.5),
        noise_var: float = 0.05,
        drift: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ):
        if points < 1:
            raise ValueError(f"points must be positive, got {points}")
        if noise_var < 0 or drift < 0:
            raise ValueError(f"noise_var and drift must be >= 0, got {noise_var} and {drift}")
        self.seed, self.index, self.points = seed, index, int(points)
        self.x_range, self.noise_std, self.dtype = x_range, math.sqrt(noise_var), dtype
        self.schedule = process.schedule(seed, index, steps)
        amplitudes = (amplitude, ood_amplitude, amplitude)
        frequencies = ((1.0, 1.0), (1.0, 1.0), ood_frequency)
        modes = self.schedule.segment_modes
        draws = np.stack(
            [task_rng(seed, s, index, DRAWS["tasks"]).random(3) for s in range(len(modes))]
        )
        segment_amplitude = _scale(draws[:, 0], np.array(amplitudes)[modes].T)
        segment_phase = _scale(draws[:, 1], phase)
        segment_frequency = _scale(draws[:, 2], np.array(frequencies)[modes].T)
        segment = self.schedule.segment
        walk = SwitchingProcess.drift_walk(self.schedule, seed, index, 2)
        widths = np.diff(np.array(amplitudes), axis=1)[self.schedule.mode, 0]
        self.amplitude = np.abs(segment_amplitude[segment] + drift * widths * walk[:, 0])
        self.phase = segment_phase[segment] + drift * (phase[1] - phase[0]) * walk[:, 1]
        self.frequency = segment_frequency[segment]

    def __len__(self) -> int:
        return len(self.schedule)

    def batch(self, step: int) -> StreamBatch:
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} is outside the stream's {len(self)} steps")
        rng = task_rng(self.seed, step, self.index, DRAWS["data"])
        x = _scale(rng.random(self.points), self.x_range)
        clean = self.amplitude[step] * np.sin(self.frequency[step] * x - self.phase[step])
        y = clean + self.noise_std * rng.standard_normal(self.points)
        x, y = (torch.from_numpy(a).to(self.dtype).unsqueeze(-1) for a in (x, y))
        schedule = self.schedule
        return StreamBatch(
            step,
            x,
            y,
            int(schedule.mode[step]),
            bool(schedule.switch[step]),
            int(schedule.segment[step]),
        )

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.mse_loss


def _scale(u: np.ndarray, bounds: Range | np.ndarray) -> np.ndarray:
    """``u`` in [0, 1) mapped onto ``bounds`` (a range, or ``[2, n]`` ranges per element)."""
    low, high = bounds
    return low + (high - low) * u
