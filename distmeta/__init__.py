"""distmeta: exact meta-learning (MAML, first-order MAML, Reptile, Meta-SGD) from one process to
a Ray cluster."""

from distmeta import algorithms, data, engine, models, tasks
from distmeta.config import ExperimentConfig, load_config
from distmeta.engine import evaluate, load_run, train
from distmeta.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistmetaError,
    RunError,
    TaskFailedError,
    TrackingError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistmetaError",
    "ExperimentConfig",
    "RunError",
    "TaskFailedError",
    "TrackingError",
    "algorithms",
    "data",
    "engine",
    "evaluate",
    "load_config",
    "load_run",
    "models",
    "tasks",
    "train",
]
