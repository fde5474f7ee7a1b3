"""Where steps run: in this process (``local``, the default) or on Ray actors (``ray``)."""

from distmeta.engine.evaluate import EvalResult, evaluate
from distmeta.engine.experiment import Experiment, build_experiment, build_task_source
from distmeta.engine.run import Run, load_run
from distmeta.engine.trainer import TrainingCallback, TrainResult, build_engine, train

__all__ = [
    "EvalResult",
    "Experiment",
    "Run",
    "TrainResult",
    "TrainingCallback",
    "build_engine",
    "build_experiment",
    "build_task_source",
    "evaluate",
    "load_run",
    "train",
]
