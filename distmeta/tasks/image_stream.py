"""An OSAKA-style stream of few-shot classification tasks: Omniglot's training alphabets,
its held-out alphabets, and a domain never seen (scikit-learn's digits)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from distmeta.tasks.source import task_rng
from distmeta.tasks.stream import StreamBatch
from distmeta.tasks.switching import DRAWS, SwitchingProcess

__all__ = ["ClassPool", "ImageStream"]


class ClassPool(Protocol):
    """Classes of images to draw tasks from (:class:`~distmeta.tasks.FewShotImages`' split,
    :class:`~distmeta.tasks.digits.DigitImages`)."""

    classes: int
    input_shape: tuple[int, ...]

    def images_of(
        self, picks: np.ndarray, rng: np.random.Generator, per_class: int
    ) -> torch.Tensor: ...


class ImageStream:
    """One stream of ``ways``-way classification tasks with ``shots`` images per class a step.

    Description:
        Each mode is a pool of classes: in-distribution the training classes of meta-training,
        then the out-of-distribution pools (Omniglot's validation alphabets, the digits). A
        task is ``ways`` distinct classes of its mode's pool in random order (the label of a
        class is its position); every step brings ``shots`` new images of each, as OSAKA's
        stream does (10-way 5-shot by default). At a switch new classes are drawn, even when
        the mode stays the same.

    Args:
        process: When tasks switch and which mode the next comes from.
        seed: The run's seed.
        index: This stream's index in its fleet.
        steps: Length of the stream.
        pools: The three modes' classes, in-distribution first.
        ways: Classes per task.
        shots: Images per class per step.
        mode_names: Names of the three pools.

    Example:
        >>> stream = ImageStream(process, 0, 0, 1000, (train, val, DigitImages()), 10, 5)
        >>> batch = stream.batch(0)  # x: [50, 1, 28, 28], y: [50] in 0..9
    """

    kind = "classification"

    def __init__(
        self,
        process: SwitchingProcess,
        seed: int,
        index: int,
        steps: int,
        pools: Sequence[ClassPool],
        ways: int = 10,
        shots: int = 5,
        mode_names: tuple[str, str, str] = ("in_distribution", "ood_alphabets", "ood_digits"),
    ):
        if len(pools) != 3:
            raise ValueError(f"an image stream needs three pools of classes, got {len(pools)}")
        named = list(zip(mode_names, pools, strict=True))
        too_small = [name for name, pool in named if pool.classes < ways]
        if too_small:
            raise ValueError(f"{ways}-way tasks need {ways} classes; too few in {too_small}")
        shapes = {name: tuple(pool.input_shape) for name, pool in named}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"the pools' images differ in shape: {shapes}")
        self.seed, self.index, self.ways, self.shots = seed, index, ways, shots
        self.pools, self.mode_names = tuple(pools), mode_names
        self.schedule = process.schedule(seed, index, steps)
        self.classes = [
            task_rng(seed, segment, index, DRAWS["tasks"]).choice(
                pools[mode].classes, ways, replace=False
            )
            for segment, mode in enumerate(self.schedule.segment_modes)
        ]
        """Each segment's classes, in label order."""
        self.input_shape = shapes[mode_names[0]]
        self.output_size = ways

    def __len__(self) -> int:
        return len(self.schedule)

    def batch(self, step: int) -> StreamBatch:
        if not 0 <= step < len(self):
            raise IndexError(f"step {step} is outside the stream's {len(self)} steps")
        schedule = self.schedule
        segment, mode = int(schedule.segment[step]), int(schedule.mode[step])
        rng = task_rng(self.seed, step, self.index, DRAWS["data"])
        x = self.pools[mode].images_of(self.classes[segment], rng, self.shots)
        y = torch.arange(self.ways).repeat_interleave(self.shots)
        return StreamBatch(step, x, y, mode, bool(schedule.switch[step]), segment)

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.cross_entropy
