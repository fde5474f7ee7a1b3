"""scikit-learn's bundled handwritten digits as a pool of classes: a new image domain that
needs no download (the 8x8 images are upsampled to the size of the stream's other images)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

__all__ = ["DigitImages"]

_INK = 16.0
"""The digits' pixel values run from 0 (paper) to 16 (ink)."""


class DigitImages:
    """The 1,797 digits of ``sklearn.datasets.load_digits``: 10 classes of about 180 images.

    Pixels are scaled to [0, 1] with ink at 1 (as distmeta feeds Omniglot) and upsampled
    bilinearly from 8x8 to ``size``.

    Args:
        size: Height and width of the returned images.
        dtype: Floating-point type of the returned images.

    Example:
        >>> digits = DigitImages((28, 28))
        >>> x = digits.images_of(np.array([3, 7]), np.random.default_rng(0), 5)  # [10, 1, 28, 28]
    """

    def __init__(self, size: tuple[int, int] = (28, 28), dtype: torch.dtype = torch.float32):
        bunch = load_digits()
        small = torch.from_numpy(bunch.images / _INK).to(torch.float32).unsqueeze(1)
        self.images = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
        self.images = self.images.clamp(0.0, 1.0).to(dtype)
        labels = np.asarray(bunch.target)
        self._members = [np.flatnonzero(labels == digit) for digit in range(10)]
        self.classes = len(self._members)
        self.input_shape = (1, *size)

    def images_of(
        self, picks: np.ndarray, rng: np.random.Generator, per_class: int
    ) -> torch.Tensor:
        """``per_class`` distinct random images of each digit of ``picks``,
        ``[len(picks) * per_class, 1, H, W]``, class by class."""
        picks = np.asarray(picks, dtype=np.int64)
        if picks.size and (picks.min() < 0 or picks.max() >= self.classes):
            raise ValueError(f"digits are 0..9, got {picks}")
        rows = np.concatenate(
            [rng.choice(self._members[digit], per_class, replace=False) for digit in picks]
        )
        return self.images[torch.from_numpy(rows)]
