"""What a user runs: the training loop, offline evaluation, online evaluation on streams,
and loading a trained run.

Every engine runs under the same loop (:func:`train`); a finished run is loaded back with
:func:`load_run` and measured on fresh tasks with :func:`evaluate` (a learned optimizer: on
fresh problems beside tuned SGD, Adam and RMSprop, :func:`compare_optimizers`;
:func:`evaluate_run` picks the evaluation of a run's kind), or on streams of changing tasks,
predicting each batch before its labels, with :func:`run_streams` (its records read back
with :func:`read_records`).
"""

from distmeta.runs.evaluate import EvalResult, adaptation_curves, evaluate
from distmeta.runs.evaluations import CURVES, EVALUATIONS, curve_of_run, evaluate_run
from distmeta.runs.finished import Run, fit_params, load_run
from distmeta.runs.online import (
    StreamReport,
    default_stream_dir,
    load_start,
    read_records,
    run_streams,
)
from distmeta.runs.optimizers import (
    OptimizerComparison,
    OptimizerCurve,
    compare_optimizers,
    learned_optimizer_curve,
)
from distmeta.runs.train import TrainingCallback, TrainResult, default_run_dir, train

__all__ = [
    "CURVES",
    "EVALUATIONS",
    "EvalResult",
    "OptimizerComparison",
    "OptimizerCurve",
    "Run",
    "StreamReport",
    "TrainResult",
    "TrainingCallback",
    "adaptation_curves",
    "compare_optimizers",
    "curve_of_run",
    "default_run_dir",
    "default_stream_dir",
    "evaluate",
    "evaluate_run",
    "fit_params",
    "learned_optimizer_curve",
    "load_run",
    "load_start",
    "read_records",
    "run_streams",
    "train",
]
