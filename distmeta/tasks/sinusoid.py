"""Sinusoid regression tasks of the MAML paper: y = A sin(x - phase)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distmeta.tasks.batch import TaskBatch, TaskId
from distmeta.tasks.optimizee import fresh_params
from distmeta.tasks.source import task_rng

__all__ = ["Sinusoid"]


class Sinusoid:
    """Regress ``y = A sin(x - phase)`` from K points (Finn et al., 2017, section 5.1).

    Each task draws an amplitude, a phase and ``shots + query`` inputs uniformly from the
    given ranges. The task ``(seed, step, index)`` is the same in every process. As a family
    of optimisation problems for a learned optimizer
    (:class:`~distmeta.tasks.ProblemFamily`), a trajectory fits one sine with a freshly
    initialised network from new points at every step.

    Args:
        shots: Support points per task (K).
        query: Query points per task.
        amplitude: Range of the amplitude A, default ``(0.1, 5.0)``.
        phase: Range of the phase, default ``(0, pi)``.
        x_range: Range of the inputs, default ``(-5, 5)``.
        dtype: Floating-point type of the returned tensors.
    """

    kind = "regression"
    input_shape = (1,)
    output_size = 1

    def __init__(
        self,
        shots: int = 10,
        query: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        dtype: torch.dtype = torch.float32,
    ):
        if shots <= 0 or query <= 0:
            raise ValueError(f"shots and query must be positive, got {shots} and {query}")
        self.shots, self.query = int(shots), int(query)
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.dtype = dtype

    def _uniforms(self, seed: int, step: int, index: int) -> np.ndarray:
        """The task's ``2 + shots + query`` uniform draws: amplitude, phase, then inputs."""
        return task_rng(seed, step, index).random(2 + self.shots + self.query)

    def sample(self, seed: int, step: int, indices: Sequence[int]) -> TaskBatch:
        indices = list(indices)
        u = np.stack([self._uniforms(seed, step, i) for i in indices])
        amplitude = _scale(u[:, :1], self.amplitude)
        phase = _scale(u[:, 1:2], self.phase)
        x = _scale(u[:, 2:], self.x_range)
        y = amplitude * np.sin(x - phase)
        x, y = (torch.from_numpy(a).to(self.dtype).unsqueeze(-1) for a in (x, y))
        k = self.shots
        ids = tuple((seed, step, i) for i in indices)
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], ids)

    def parameters_of(self, seed: int, step: int, index: int) -> tuple[float, float]:
        """The ``(amplitude, phase)`` of task ``(seed, step, index)``."""
        u = self._uniforms(seed, step, index)
        return float(_scale(u[0], self.amplitude)), float(_scale(u[1], self.phase))

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.mse_loss

    # --- as optimisation problems of a learned optimizer (ProblemFamily) ---------------------

    def initial_params(self, model: nn.Module, name: TaskId) -> dict[str, torch.Tensor]:
        """A freshly initialised ``model`` for the trajectory ``name``."""
        return fresh_params(model, name)

    def steps(self, name: TaskId, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``shots`` new points of the sine ``name`` at each optimizee step (stochastic
        optimisation, like the paper's MNIST minibatches): ``[count, shots, 1]`` each."""
        amplitude, phase = self.parameters_of(*name)
        steps = range(first, first + count)
        draws = [task_rng(*name, stream=2 + k).random(self.shots) for k in steps]
        x = _scale(np.stack(draws), self.x_range)
        y = amplitude * np.sin(x - phase)
        return tuple(torch.from_numpy(a).to(self.dtype).unsqueeze(-1) for a in (x, y))

    def query_set(self, name: TaskId) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's own ``query`` points (those of :meth:`sample`)."""
        batch = self.sample(*name[:2], [name[2]])
        return batch.query_x[0], batch.query_y[0]


def _scale(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    return low + (high - low) * u
