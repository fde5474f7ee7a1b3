"""Hyperparameter search with Ray Tune (``distmeta tune``): every trial a full distmeta
training on the configured engine, reporting a validation metric with each checkpoint, each
recorded in MLflow as a child of the search's run.

Sits above :mod:`distmeta.engine` and :mod:`distmeta.tracking`; nothing below imports it.
"""

from distmeta.tune.search import SearchResult, TrialSummary, default_search_dir, run_search
from distmeta.tune.space import check_search, trial_config
from distmeta.tune.trainable import TuneReporter, checkpoint_metrics

__all__ = [
    "SearchResult",
    "TrialSummary",
    "TuneReporter",
    "check_search",
    "checkpoint_metrics",
    "default_search_dir",
    "run_search",
    "trial_config",
]
