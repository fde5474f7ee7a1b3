"""Task sources: distributions of few-shot tasks, each rebuilt from ``(seed, step, index)``.

The image tasks (``FewShotImages``, ``split_classes``) load on first use: they bring pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distmeta.tasks.batch import TaskBatch, TaskId
from distmeta.tasks.optimizee import ProblemFamily, TrajectoryRequest, Unroll
from distmeta.tasks.plan import MetaBatchPlan, TrajectoryPlan
from distmeta.tasks.quadratic import Quadratic
from distmeta.tasks.sinusoid import Sinusoid
from distmeta.tasks.source import TaskSource, task_rng

if TYPE_CHECKING:
    from distmeta.tasks.fewshot import FewShotImages, split_classes


def __getattr__(name: str) -> Any:
    if name not in ("FewShotImages", "split_classes"):
        raise AttributeError(f"module 'distmeta.tasks' has no attribute {name!r}")
    from distmeta.tasks import fewshot

    value = getattr(fewshot, name)
    globals()[name] = value
    return value


__all__ = [
    "FewShotImages",
    "MetaBatchPlan",
    "ProblemFamily",
    "Quadratic",
    "Sinusoid",
    "TaskBatch",
    "TaskId",
    "TaskSource",
    "TrajectoryPlan",
    "TrajectoryRequest",
    "Unroll",
    "split_classes",
    "task_rng",
]
