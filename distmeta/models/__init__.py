"""Networks that distmeta meta-trains (plain ``nn.Module``s, called functionally)."""

from distmeta.models.conv4 import Conv4
from distmeta.models.mlp import MLP
from distmeta.models.quadratic import QuadraticVariable
from distmeta.models.task_batch_norm import TaskBatchNorm2d

__all__ = ["MLP", "Conv4", "QuadraticVariable", "TaskBatchNorm2d"]
