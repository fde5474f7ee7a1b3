"""One flat buffer for all meta-parameters, and the names, shapes and offsets inside it."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

__all__ = ["ParamLayout"]


@dataclass(frozen=True)
class ParamLayout:
    """Where each named tensor lives in a flat vector (in ``names`` order).

    A learner keeps the parameters as one contiguous buffer: the outer optimizer then runs
    a handful of kernels per step whatever the number of tensors, and the buffer goes
    through Ray's object store as a single zero-copy array.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(params: dict[str, torch.Tensor]) -> ParamLayout:
        return ParamLayout(tuple(params), tuple(tuple(p.shape) for p in params.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(prod(shape) for shape in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(
        self, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Concatenate ``tensors`` (all names of the layout) into one vector."""
        if tensors.keys() != set(self.names):
            raise ValueError(
                f"tensors do not match the layout: got {sorted(tensors)}, "
                f"expected {sorted(self.names)}"
            )
        flat = torch.cat([tensors[name].reshape(-1) for name in self.names])
        return flat if dtype is None else flat.to(dtype)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` shaped like the named tensors."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(
                f"expected a flat vector of {self.numel} values, got {tuple(flat.shape)}"
            )
        pieces = torch.split(flat, self.sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }
