"""The MAML paper's few-shot image network: four conv blocks and a linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distmeta.models.task_batch_norm import (
    TaskBatchNorm2d,
    conv_pooled_task_batch_norm,
    one_task_eager,
    pooled_task_batch_norm,
)

__all__ = ["Conv4", "TaskBatchNorm2d"]


class Conv4(nn.Module):
    """Four blocks of 3x3 convolution, per-task batch norm, ReLU and 2x2 max-pooling.

    The network of Finn et al. (2017) for Omniglot (``hidden=64``, 28x28 grayscale) and,
    with ``hidden=32`` and 84x84 RGB inputs, for mini-ImageNet.

    Each block pools before its ReLU: the same function and the same gradients (max-pooling
    commutes with a monotone function, and both pick the same element), with a quarter of the
    ReLU's work. Run eagerly one task at a time (distmeta's per-task loop, adaptation at test
    time), batch norm and pooling are one fused function (:func:`pooled_task_batch_norm`); in
    the first block, on images that are not differentiated, the convolution joins it
    (:func:`conv_pooled_task_batch_norm`), which never holds the largest activation whole;
    and on a CPU the activations (and filters) are channels-last: oneDNN then convolves
    without reordering, the first convolution (one input channel) runs about four times
    faster and max-pooling ten times. Second-order MAML on
    Omniglot then runs twice as fast, in less than half the memory, as with the modules run
    one after the other (see ``benchmarks/omniglot_maml_speed.py``).

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
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
            channels, size = hidden, size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for four 2x2 poolings")
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden * size * size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not one_task_eager():
            return self.head(torch.flatten(self.features(x), 1))
        channels_last = x.device.type == "cpu"
        if channels_last:
            # clone, not contiguous: with one channel, NCHW is already channels-last
            # contiguous and would stay NCHW-strided.
            x = x.clone(memory_format=torch.channels_last)
        layers = list(self.features)
        for start in range(0, len(layers), 4):
            conv, norm, pool, relu = layers[start : start + 4]
            filters = conv.weight
            if channels_last:  # once here, not again in each convolution and its derivatives
                filters = filters.contiguous(memory_format=torch.channels_last)
            if x.requires_grad:
                x = pooled_task_batch_norm(
                    F.conv2d(x, filters, conv.bias, conv.stride, conv.padding),
                    norm.weight,
                    norm.bias,
                    norm.eps,
                    pool.kernel_size,
                )
            else:
                x = conv_pooled_task_batch_norm(
                    x,
                    filters,
                    conv.bias,
                    norm.weight,
                    norm.bias,
                    norm.eps,
                    pool.kernel_size,
                    conv.padding[0],
                )
            x = relu(x)
        return self.head(torch.flatten(x, 1))
