"""What a user runs: the training loop, offline evaluation, online evaluation on streams,
and loading a trained run.

Every engine runs under the same loop (:func:`train`); a finished run is loaded back with
:func:`load_run` and measured on fresh tasks with :func:`evaluate`, or on streams of changing
tasks, predicting each batch before its labels, with :func:`run_streams`.
"""

from distmeta.runs.evaluate import EvalResult, adaptation_curves, evaluate
from distmeta.runs.finished import Run, fit_params, load_run
from distmeta.runs.online import StreamReport, default_stream_dir, load_start, run_streams
from distmeta.runs.train import TrainingCallback, TrainResult, default_run_dir, train

__all__ = [
    "EvalResult",
    "Run",
    "StreamReport",
    "TrainResult",
    "TrainingCallback",
    "adaptation_curves",
    "default_run_dir",
    "default_stream_dir",
    "evaluate",
    "fit_params",
    "load_run",
    "load_start",
    "run_streams",
    "train",
]
