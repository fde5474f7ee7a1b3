"""distmeta: exact meta-learning (MAML, first-order MAML, Reptile; SGD, Meta-SGD or learned LSTM
inner rules; learned optimizers meta-trained on whole trajectories) from one process to a Ray
cluster.

``models``, ``algorithms`` and ``tasks`` load with the package; the engine, the config schema
and the data tools (pydantic, pyarrow, rich, Pillow: about 40 MiB of resident memory) load on
first use, so a process that only computes meta-gradients does not carry them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distmeta import algorithms, models, tasks
from distmeta.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DistmetaError,
    RunError,
    TaskFailedError,
    TrackingError,
)

if TYPE_CHECKING:
    from distmeta import data, engine, optim, runs
    from distmeta.config import ExperimentConfig, load_config
    from distmeta.runs import evaluate, load_run, train

__version__ = "0.1.0"

_ON_FIRST_USE = {
    "data": ("distmeta.data", None),
    "engine": ("distmeta.engine", None),
    "runs": ("distmeta.runs", None),
    "ExperimentConfig": ("distmeta.config", "ExperimentConfig"),
    "load_config": ("distmeta.config", "load_config"),
    "evaluate": ("distmeta.runs", "evaluate"),
    "load_run": ("distmeta.runs", "load_run"),
    "optim": ("distmeta.optim", None),
    "train": ("distmeta.runs", "train"),
}
"""Public names imported on first access: ``name: (module, attribute or None for the module)``."""


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'distmeta' has no attribute {name!r}")
    module_name, attribute = _ON_FIRST_USE[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


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
    "optim",
    "runs",
    "tasks",
    "train",
]
