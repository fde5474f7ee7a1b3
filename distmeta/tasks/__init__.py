"""Task sources: distributions of few-shot tasks, each rebuilt from ``(seed, step, index)``;
streams of changing tasks, each step rebuilt from the stream's seed and the step.

The image tasks (``FewShotImages``, ``split_classes``, ``ImageStream``, ``DigitImages``) and
the pendulum (``PendulumDynamics``, ``PendulumStream``) load on first use: they bring pyarrow,
scikit-learn and gymnasium.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distmeta.tasks.batch import TaskBatch, TaskId
from distmeta.tasks.optimizee import ProblemFamily, TrajectoryRequest, Unroll
from distmeta.tasks.plan import MetaBatchPlan, StreamPlan, TrajectoryPlan
from distmeta.tasks.quadratic import Quadratic
from distmeta.tasks.sinusoid import Sinusoid
from distmeta.tasks.sinusoid_stream import SinusoidStream
from distmeta.tasks.source import TaskSource, task_rng
from distmeta.tasks.stream import Stream, StreamBatch
from distmeta.tasks.switching import Schedule, SwitchingProcess

if TYPE_CHECKING:
    from distmeta.tasks.digits import DigitImages
    from distmeta.tasks.fewshot import FewShotImages, split_classes
    from distmeta.tasks.image_stream import ImageStream
    from distmeta.tasks.pendulum import PendulumDynamics, PendulumSimulator, Regime
    from distmeta.tasks.pendulum_stream import PendulumStream


_ON_FIRST_USE = {
    "FewShotImages": "distmeta.tasks.fewshot",
    "split_classes": "distmeta.tasks.fewshot",
    "ImageStream": "distmeta.tasks.image_stream",
    "DigitImages": "distmeta.tasks.digits",
    "PendulumDynamics": "distmeta.tasks.pendulum",
    "PendulumSimulator": "distmeta.tasks.pendulum",
    "Regime": "distmeta.tasks.pendulum",
    "PendulumStream": "distmeta.tasks.pendulum_stream",
}
"""Names whose modules bring heavy dependencies, imported on first access."""


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'distmeta.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "DigitImages",
    "FewShotImages",
    "ImageStream",
    "MetaBatchPlan",
    "PendulumDynamics",
    "PendulumSimulator",
    "PendulumStream",
    "ProblemFamily",
    "Quadratic",
    "Regime",
    "Schedule",
    "Sinusoid",
    "SinusoidStream",
    "Stream",
    "StreamBatch",
    "StreamPlan",
    "SwitchingProcess",
    "TaskBatch",
    "TaskId",
    "TaskSource",
    "TrajectoryPlan",
    "TrajectoryRequest",
    "Unroll",
    "split_classes",
    "task_rng",
]
