"""Meta-learning algorithms as pure ``torch.func`` math: no Ray, no I/O.

Each answers ``meta_gradient(params, batch) -> (g, metrics)``. The algorithm (MAML, first-order
MAML, Reptile; joint training as a baseline) and the inner rule (plain SGD, Meta-SGD's learned
rates, a learned LSTM optimizer) are separate choices; L2L meta-trains a learned rule alone on
whole optimisation trajectories. Online learning on streams (C-MAML, FTML and their
baselines) is in :mod:`distmeta.algorithms.online`.
"""

from distmeta.algorithms.base import MetaAlgorithm
from distmeta.algorithms.execution import choose_execution, choose_task_threads
from distmeta.algorithms.gradient import GradientSum
from distmeta.algorithms.inner import InnerRule, MetaSGDRule, SGDRule
from distmeta.algorithms.joint import Joint
from distmeta.algorithms.l2l import L2L
from distmeta.algorithms.lstm_rule import LSTMRule
from distmeta.algorithms.maml import MAML
from distmeta.algorithms.reptile import Reptile

__all__ = [
    "L2L",
    "MAML",
    "GradientSum",
    "InnerRule",
    "Joint",
    "LSTMRule",
    "MetaAlgorithm",
    "MetaSGDRule",
    "Reptile",
    "SGDRule",
    "choose_execution",
    "choose_task_threads",
]
