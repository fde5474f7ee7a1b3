"""Task sources: distributions of few-shot tasks, each rebuilt from ``(seed, step, index)``."""

from distmeta.tasks.batch import TaskBatch, TaskId
from distmeta.tasks.fewshot import FewShotImages, split_classes
from distmeta.tasks.sinusoid import Sinusoid
from distmeta.tasks.source import TaskSource, task_rng

__all__ = [
    "FewShotImages",
    "Sinusoid",
    "TaskBatch",
    "TaskId",
    "TaskSource",
    "split_classes",
    "task_rng",
]
