"""The Ray engine: TaskWorker actors and a parameter-server LearnerActor."""

from distmeta.engine.ray_engine.engine import RayEngine
from distmeta.engine.ray_engine.learner_actor import LearnerActor
from distmeta.engine.ray_engine.pool import WorkerPool
from distmeta.engine.ray_engine.worker import TaskWorker

__all__ = ["LearnerActor", "RayEngine", "TaskWorker", "WorkerPool"]
