"""The MAML paper's few-shot image network: four conv blocks and a linear head."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv4", "TaskBatchNorm2d"]


class TaskBatchNorm2d(nn.Module):
    """Batch normalisation with the statistics of the current batch only, always.

    MAML normalises with each task's own batch statistics, in training and at test, and keeps
    no running averages, so a task never sees another task's statistics. The normalisation is
    written with plain mean/var operations: under ``torch.func.vmap`` each task then reduces
    over its own samples, and the second-order gradient through it is exact (the native
    ``F.batch_norm`` kernel under ``vmap(grad(grad))`` is not, in torch 2.13).

    Args:
        channels: Number of feature channels.
        eps: Added to the variance for numerical stability.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centered = x - mean
        var = centered.square().mean(dim=(0, 2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return centered * scale + self.bias.view(1, -1, 1, 1)


class Conv4(nn.Module):
    """Four blocks of 3x3 convolution, per-task batch norm, ReLU and 2x2 max-pooling.

    The network of Finn et al. (2017) for Omniglot (``hidden=64``, 28x28 grayscale) and,
    with ``hidden=32`` and 84x84 RGB inputs, for mini-ImageNet.

    Args:
        in_channels: Image channels (1 for Omniglot, 3 for RGB).
        out_features: Number of classes (ways).
        hidden: Filters per convolution.
        image_size: Height and width of the (square) input images.
    """

    def __init__(
        self, in_channels: int = 1, out_features: int = 5, hidden: int = 64, image_size: int = 28
    ):
        super().__init__()
        if min(in_channels, out_features, hidden, image_size) <= 0:
            raise ValueError("Conv4 sizes must be positive")
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
                TaskBatchNorm2d(hidden),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels, size = hidden, size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for four 2x2 poolings")
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden * size * size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))
