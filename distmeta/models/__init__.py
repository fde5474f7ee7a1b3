"""Networks that distmeta meta-trains (plain ``nn.Module``s, called functionally)."""

from distmeta.models.conv4 import Conv4, TaskBatchNorm2d
from distmeta.models.mlp import MLP

__all__ = ["MLP", "Conv4", "TaskBatchNorm2d"]
