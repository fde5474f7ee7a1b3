"""Online learning on a stream of changing tasks, as pure torch math (no Ray, no I/O).

Learners predict each batch before its labels are revealed and then learn from them
(:mod:`.prequential` runs that protocol): the online meta-learners C-MAML (:mod:`.cmaml`) and
FTML (:mod:`.ftml`), which return meta-gradients for whoever holds the meta-parameters, and
the baselines that run beside them (:mod:`.baselines`).
"""

from distmeta.algorithms.online.baselines import FrozenMeta, NoAdaptation, OnlineTraining
from distmeta.algorithms.online.cmaml import CMAML
from distmeta.algorithms.online.ftml import FTML
from distmeta.algorithms.online.method import OnlineLearner, OnlineUpdate
from distmeta.algorithms.online.prequential import Score, prequential_step

__all__ = [
    "CMAML",
    "FTML",
    "FrozenMeta",
    "NoAdaptation",
    "OnlineLearner",
    "OnlineTraining",
    "OnlineUpdate",
    "Score",
    "prequential_step",
]
