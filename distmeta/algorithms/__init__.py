"""Meta-learning algorithms as pure ``torch.func`` math: no Ray, no I/O.

Each answers ``meta_gradient(params, batch) -> (g, metrics)``.
"""

from distmeta.algorithms.base import MetaAlgorithm, choose_execution
from distmeta.algorithms.gradient import GradientSum
from distmeta.algorithms.inner import InnerRule, MetaSGDRule, SGDRule
from distmeta.algorithms.maml import MAML
from distmeta.algorithms.metasgd import MetaSGD
from distmeta.algorithms.reptile import Reptile

__all__ = [
    "MAML",
    "GradientSum",
    "InnerRule",
    "MetaAlgorithm",
    "MetaSGD",
    "MetaSGDRule",
    "Reptile",
    "SGDRule",
    "choose_execution",
]
