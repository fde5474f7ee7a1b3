"""How sync steps reach the actors (``engine.transport``), and ``auto``'s choice.

``tasks``: ordinary actor calls through the object store, a few milliseconds per step, which
steps of a second (the Omniglot Conv4) do not notice. ``collective``: the learner runs chunks
of steps over a gloo group (:mod:`.collective`), a fraction of a millisecond of communication
per step, for models whose steps compute in milliseconds (the sinusoid MLP). A Ray Compiled
Graph was measured too and lost to the gloo group on 2 cores (its driver polls for results:
5.46 against 4.02 ms per sinusoid step, BENCHMARKS.md), so it is not offered.
"""

from __future__ import annotations

import statistics
from typing import Literal

from distmeta.config import EngineConfig

__all__ = ["MEASURED_STEPS", "Transport", "choose_transport", "short_steps"]

_SHORT_MAX_PARAMETERS = 1_000_000
"""Larger models keep actor calls under ``auto``: a gloo step sends twice the parameters
in float64 from every worker, where the object store passes references."""
MEASURED_STEPS = 20
"""Steps ``auto`` runs as ordinary calls, timing the workers' compute, before it chooses."""
_SHORT_MAX_STEP_S = 0.05
"""Longest median compute per step for which ``auto`` moves to ``collective``: below it the
milliseconds of actor calls per step are a large share of the step (BENCHMARKS.md)."""

Transport = Literal["tasks", "collective", "measure"]


def choose_transport(engine: EngineConfig, parameters: int, tree_reduction: bool) -> Transport:
    """How sync steps go; ``measure``: decide with :func:`short_steps` once the first
    :data:`MEASURED_STEPS` steps ran as ordinary calls. Async steps and reduction trees
    always use actor calls."""
    if engine.mode != "sync" or tree_reduction:
        return "tasks"
    if engine.transport != "auto":
        return engine.transport
    return "tasks" if parameters > _SHORT_MAX_PARAMETERS else "measure"


def short_steps(compute_seconds: list[float]) -> bool:
    """Whether steps this long are worth running over a gloo group (median slowest-worker
    compute)."""
    return statistics.median(compute_seconds) <= _SHORT_MAX_STEP_S
