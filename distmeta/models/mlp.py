"""A ReLU multi-layer perceptron: the MAML paper's sinusoid regressor (1-40-40-1)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Fully connected network with ReLU between layers and a linear output.

    Args:
        in_features: Size of each input vector.
        hidden: Widths of the hidden layers, e.g. ``(40, 40)``.
        out_features: Size of each output vector.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (40, 40), out_features: int = 1):
        super().__init__()
        widths = [in_features, *hidden, out_features]
        if any(int(w) <= 0 for w in widths):
            raise ValueError(f"MLP sizes must be positive, got {widths}")
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(pairwise(widths)):
            layers.append(nn.Linear(int(fan_in), int(fan_out)))
            if index < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
