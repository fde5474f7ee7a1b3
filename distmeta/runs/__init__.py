"""What a user runs: the training loop, offline evaluation, and loading a trained run.

Every engine runs under the same loop (:func:`train`); a finished run is loaded back with
:func:`load_run` and measured on fresh tasks with :func:`evaluate`.
"""

from distmeta.runs.evaluate import EvalResult, adaptation_curves, evaluate
from distmeta.runs.finished import Run, fit_params, load_run
from distmeta.runs.train import TrainingCallback, TrainResult, default_run_dir, train

__all__ = [
    "EvalResult",
    "Run",
    "TrainResult",
    "TrainingCallback",
    "adaptation_curves",
    "default_run_dir",
    "evaluate",
    "fit_params",
    "load_run",
    "train",
]
