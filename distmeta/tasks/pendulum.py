"""Pendulum dynamics on gymnasium's classic-control Pendulum: rollouts and a task source.

The simulator is gymnasium's ``PendulumEnv`` itself (its semi-implicit Euler step, torque
and speed limits); distmeta only sets its gravity, mass and length, scales the torque it
receives by an actuator gain, and records transitions. A model sees a state and the
commanded torque and predicts the change of state over one step, as GrBAL's dynamics models
do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from distmeta.tasks.batch import TaskBatch
from distmeta.tasks.source import task_rng

__all__ = ["PendulumDynamics", "PendulumSimulator", "Regime"]

Range = tuple[float, float]

_START_SPEED = 2.0
"""Initial angular speeds of a rollout are uniform in [-2, 2] rad/s (angles in [-pi, pi])."""


@dataclass(frozen=True)
class Regime:
    """The physics of one pendulum: gravity (m/s^2), mass (kg), length (m), and the gain of
    its actuator (the applied torque is ``gain`` times the commanded one)."""

    gravity: float
    mass: float
    length: float
    gain: float = 1.0


class PendulumSimulator:
    """Transitions of gymnasium's Pendulum under an exploratory policy.

    Description:
        A rollout starts from a random state (angle uniform in [-pi, pi], 0 upright; angular
        speed uniform in [-2, 2] rad/s) and applies a torque drawn uniformly from the
        actuator's range at every step (the exploratory policy). Each transition becomes an
        input ``(cos theta, sin theta, theta_dot / max_speed, u / max_torque)`` with ``u`` the
        commanded torque, and a target ``(delta theta, delta theta_dot) / (dt * max_speed)``:
        the change of state over one step, scaled so both parts are of order one
        (gymnasium's ``dt = 0.05``, ``max_speed = 8``, ``max_torque = 2``).

    Example:
        >>> simulator = PendulumSimulator()
        >>> x, y = simulator.rollout(Regime(10.0, 1.0, 1.0), np.random.default_rng(0), 16)
        >>> x.shape, y.shape  # (16, 4), (16, 2)
    """

    input_size = 4
    output_size = 2

    def __init__(self) -> None:
        self.env = PendulumEnv()

    def configure(self, regime: Regime) -> None:
        """Set the simulated pendulum's gravity, mass and length."""
        self.env.g, self.env.m, self.env.l = regime.gravity, regime.mass, regime.length

    def states(self, regime: Regime, start: np.ndarray, torques: np.ndarray) -> np.ndarray:
        """``(theta, theta_dot)`` before each commanded torque and after the last,
        ``[len(torques) + 1, 2]``, from ``start = (theta, theta_dot)``; gymnasium applies
        ``gain`` times each commanded torque (clipped to its actuator's range)."""
        env = self.env
        self.configure(regime)
        env.state = np.array(start, dtype=np.float64)
        states = [env.state.copy()]
        for u in torques:
            env.step(np.array([regime.gain * u], dtype=np.float32))
            states.append(np.array(env.state, dtype=np.float64))
        return np.stack(states)

    def rollout(
        self, regime: Regime, rng: np.random.Generator, transitions: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``transitions`` consecutive transitions of one rollout: inputs ``[n, 4]`` and
        targets ``[n, 2]`` (float64)."""
        env = self.env
        start = np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-_START_SPEED, _START_SPEED)])
        torques = rng.uniform(-env.max_torque, env.max_torque, transitions)
        states = self.states(regime, start, torques)
        before, after = states[:-1], states[1:]
        inputs = np.column_stack(
            [
                np.cos(before[:, 0]),
                np.sin(before[:, 0]),
                before[:, 1] / env.max_speed,
                torques / env.max_torque,
            ]
        )
        targets = (after - before) / (env.dt * env.max_speed)
        return inputs, targets


class PendulumDynamics:
    """Meta-training tasks: predict a pendulum's change of state, its physics drawn per task.

    Each task draws gravity, mass and length uniformly from the given ranges (the actuator
    intact), then one rollout of ``shots`` transitions for the support set and another of
    ``query`` transitions for the query set (:class:`PendulumSimulator`). The task
    ``(seed, step, index)`` is the same in every process.

    Args:
        shots: Support transitions per task.
        query: Query transitions per task.
        gravity: Range of the gravity.
        mass: Range of the mass.
        length: Range of the length.
        dtype: Floating-point type of the returned tensors.

    Example:
        >>> source = PendulumDynamics(shots=16, query=16)
        >>> batch = source.sample(seed=0, step=0, indices=range(4))  # x: [4, 16, 4], y: [4, 16, 2]
    """

    kind = "regression"
    input_shape = (PendulumSimulator.input_size,)
    output_size = PendulumSimulator.output_size

    def __init__(
        self,
        shots: int = 16,
        query: int = 16,
        gravity: Range = (8.0, 12.0),
        mass: Range = (0.8, 1.2),
        length: Range = (0.8, 1.2),
        dtype: torch.dtype = torch.float32,
    ):
        if shots <= 0 or query <= 0:
            raise ValueError(f"shots and query must be positive, got {shots} and {query}")
        self.shots, self.query = int(shots), int(query)
        self.gravity, self.mass, self.length = gravity, mass, length
        self.dtype = dtype
        self.simulator = PendulumSimulator()

    def regime(self, rng: np.random.Generator) -> Regime:
        """A regime drawn uniformly from the ranges, the actuator intact."""
        return Regime(*(rng.uniform(*bounds) for bounds in (self.gravity, self.mass, self.length)))

    def sample(self, seed: int, step: int, indices: Sequence[int]) -> TaskBatch:
        tasks = []
        for i in indices:
            rng = task_rng(seed, step, i)
            regime = self.regime(rng)
            support = self.simulator.rollout(regime, rng, self.shots)
            query = self.simulator.rollout(regime, rng, self.query)
            tasks.append(tuple(torch.from_numpy(a).to(self.dtype) for a in (*support, *query)))
        return TaskBatch.stack(tasks, [(seed, step, i) for i in indices])

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.mse_loss
