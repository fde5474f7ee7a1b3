"""N-way K-shot image classification episodes from a prepared, memory-mapped image set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distmeta.data.arrow import ImageSet
from distmeta.errors import ConfigError, DataError
from distmeta.tasks.batch import TaskBatch, TaskId
from distmeta.tasks.optimizee import fresh_params
from distmeta.tasks.source import task_rng

__all__ = ["FewShotImages", "Split", "split_classes"]

Split = Literal["train", "val", "all", "held_out"]


def split_classes(names: Sequence[str], val_fraction: float, seed: int = 0) -> np.ndarray:
    """Which classes are validation classes: a boolean mask over ``names``.

    Classes are ordered by ``sha256(f"{seed}:{name}")`` and the first
    ``round(val_fraction * len(names))`` are validation. The split depends only on the class
    names, the fraction and the seed (not on the run, numpy's version or the file's row order),
    so training and every later evaluation agree on it.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = [hashlib.sha256(f"{seed}:{name}".encode()).hexdigest() for name in names]
    mask = np.zeros(len(names), dtype=bool)
    mask[np.argsort(keys, kind="stable")[: round(val_fraction * len(names))]] = True
    return mask


def _validation_mask(
    class_names: Sequence[str], val_fraction: float, seed: int, split_by: str, path: Path
) -> np.ndarray:
    """Validation classes: chosen one by one, or as whole alphabets (``alphabet/character``)."""
    if split_by == "character":
        return split_classes(class_names, val_fraction, seed)
    if split_by != "alphabet":
        raise ValueError(f"split_by must be 'character' or 'alphabet', got {split_by!r}")
    alphabets = [name.split("/")[0] if "/" in name else "" for name in class_names]
    names = sorted(set(alphabets))
    if "" in names or len(names) < 2:
        raise ConfigError(f"split_by alphabet: {path} does not group its classes in alphabets")
    held = dict(zip(names, split_classes(names, val_fraction, seed), strict=True))
    return np.array([held[alphabet] for alphabet in alphabets], dtype=bool)


def _shifted(pixels: np.ndarray, offsets: np.ndarray, shift: int) -> np.ndarray:
    """Each image of ``pixels [..., H, W, C]`` cut at ``offsets [..., 2]`` out of a copy
    padded by ``shift`` repeated edge pixels on every side: moved by ``shift - offset``."""
    height, width = pixels.shape[-3:-1]
    pad = [(0, 0)] * (pixels.ndim - 3) + [(shift, shift), (shift, shift), (0, 0)]
    padded = np.pad(pixels, pad, mode="edge")
    rows = offsets[..., 0, None] + np.arange(height)  # [..., H]
    cols = offsets[..., 1, None] + np.arange(width)  # [..., W]
    padded = np.take_along_axis(padded, rows[..., :, None, None], axis=-3)
    return np.take_along_axis(padded, cols[..., None, :, None], axis=-2)


class FewShotImages:
    """Episodes of N-way K-shot classification with Q queries per class (Omniglot, mini-ImageNet).

    Description:
        A task draws ``ways`` distinct classes of its split, then ``shots + query`` distinct
        images of each: the first ``shots`` form the support set, the rest the query set, so no
        query image is in the support set. Labels ``0..ways-1`` follow the (random) order in
        which the classes were drawn; both sets are ordered class by class. Everything is drawn
        from :func:`~distmeta.tasks.source.task_rng` of ``(seed, step, index)``, so any process
        rebuilds any task.

        With ``rotations``, each image class rotated by 0, 90, 180 and 270 degrees counts as
        four classes (Omniglot: 964 characters give 3856 classes), the protocol of the MAML
        and Prototypical Networks papers; all four rotations of a class fall on the same side
        of the train/validation split.

        With ``reflections``, the mirror image of each class (flipped left to right, then
        turned) counts as one more class: with rotations, the eight symmetries of the square
        give eight classes per character. A task augmentation for meta-training: a mirrored
        character is a plausible character of an unseen alphabet.

        With ``shift``, every image moves by a random whole number of pixels in
        ``[-shift, shift]`` along each axis, its edge pixels repeated into the gap: an
        augmentation of meta-training tasks against overfitting the training classes (the
        run's evaluation tasks are never shifted). Draws come from the task's own generator
        after its classes and images, so ``shift=0`` tasks are unchanged.

        Pixels reach the network as ``x / 255`` in ``[0, 1]``; for sets marked ``invert``
        (Omniglot: black ink on white paper) as ``1 - x / 255``, so ink is 1 and background 0,
        as in MAML's data pipeline.

        As a family of optimisation problems for a learned optimizer
        (:class:`~distmeta.tasks.ProblemFamily`), a trajectory trains a freshly initialised
        network on one task's support set, full batch, and its query set is held out.

        The image set is memory-mapped on first use and dropped when the object is pickled, so
        it travels to Ray workers as a few small index arrays; each worker maps the file itself
        and all processes on a machine share its pages.

    Args:
        path: A prepared ``.arrow`` file, or a folder holding one (``distmeta data prepare``).
        ways: Classes per task (N).
        shots: Support images per class (K).
        query: Query images per class (Q).
        rotations: Count the four rotations of each class as classes (square images only).
        split: ``"train"`` or ``"val"`` classes (see :func:`split_classes`), ``"all"``, or
            ``"held_out"``: every class of a set marked ``held_out`` (Omniglot's evaluation
            alphabets), else the validation classes.
        val_fraction: Share of the file's classes held out for validation.
        split_seed: Seed of the train/validation split.
        split_by: Hold out whole classes (``"character"``) or whole alphabets (``"alphabet"``:
            validation tasks then come from alphabets meta-training never saw).
        reflections: Count the mirror image of each class as a class too.
        shift: Largest translation of an image in pixels along each axis (0: none).
        dtype: Floating-point type of the images.

    Raises:
        DataError: The file is missing, corrupt or not a prepared image set.
        ConfigError: The split holds fewer than ``ways`` classes, or a class fewer than
            ``shots + query`` images.
    """

    kind = "classification"

    def __init__(
        self,
        path: str | Path,
        ways: int = 5,
        shots: int = 1,
        query: int = 15,
        rotations: bool = True,
        split: Split = "train",
        val_fraction: float = 0.2,
        split_seed: int = 0,
        split_by: Literal["character", "alphabet"] = "character",
        reflections: bool = False,
        shift: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        if min(ways, shots, query) <= 0:
            raise ValueError(f"ways, shots and query must be positive, got {(ways, shots, query)}")
        if shift < 0:
            raise ValueError(f"shift must be >= 0 pixels, got {shift}")
        if split not in ("train", "val", "all", "held_out"):
            raise ValueError(f"split must be train, val, all or held_out, got {split!r}")
        images = ImageSet(path)
        info = images.info
        self.path = images.path.resolve()
        self.ways, self.shots, self.query = int(ways), int(shots), int(query)
        self.rotations, self.reflections = bool(rotations), bool(reflections)
        self.shift, self.dtype = int(shift), dtype
        if rotations and info.height != info.width:
            raise ConfigError(
                f"rotations need square images, {self.path} holds {info.height}x{info.width}"
            )
        self.input_shape = (info.channels, info.height, info.width)
        self.output_size = self.ways
        self._invert = info.invert
        self._content = info.content_sha256
        self._images: ImageSet | None = images

        if split == "held_out":
            split = "all" if info.held_out else "val"
        self.split = split
        val = _validation_mask(images.class_names, val_fraction, split_seed, split_by, self.path)
        chosen = {"train": ~val, "val": val, "all": np.ones_like(val)}[split]
        self._classes = np.flatnonzero(chosen)
        self._turns = 4 if rotations else 1
        self._variants = self._turns * (2 if reflections else 1)
        self.classes = len(self._classes) * self._variants  # rotations, reflections included

        # Rows of class c: _order[_starts[c] : _starts[c] + _counts[c]].
        self._order = np.argsort(images.class_id, kind="stable").astype(np.int32)
        self._counts = np.bincount(images.class_id, minlength=info.classes)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        counts = self._counts[self._classes]
        self._width = int(counts.max()) if counts.size else 0
        self._padding = np.arange(self._width)[None, :] >= self._counts[:, None]
        self._check_sizes(counts)
        if 2 * self.shift >= min(info.height, info.width):
            raise ConfigError(
                f"shift={self.shift} moves whole {info.height}x{info.width} images of "
                f"{self.path} out of view: it must be under half the smaller side"
            )

    def _check_sizes(self, counts: np.ndarray) -> None:
        where = f"the {self.split} split of {self.path}"
        if self.classes < self.ways:
            raise ConfigError(
                f"ways={self.ways} but {where} holds {self.classes} classes"
                + (" (rotations included)" if self.rotations and not self.reflections else "")
                + (" (reflections included)" if self.reflections else "")
            )
        if counts.min() < self.shots + self.query:
            raise ConfigError(
                f"shots + query = {self.shots} + {self.query} = {self.shots + self.query} but "
                f"the smallest class of {where} holds {counts.min()} images"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def _open(self) -> ImageSet:
        if self._images is None:
            images = ImageSet(self.path)
            if images.info.content_sha256 != self._content:
                raise DataError(
                    f"{self.path} is not the image set this task source was built on "
                    f"(content sha256 {images.info.content_sha256[:12]}..., expected "
                    f"{self._content[:12]}...): every process must see the same file"
                )
            self._images = images
        return self._images

    def _draw(
        self, seed: int, step: int, index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One task: row numbers ``[ways, n]``, each class's variant ``[ways]`` and each
        image's offsets ``[ways, n, 2]`` into its edge-padded copy (``None`` without
        ``shift``; ``n = shots + query``). A variant is a class's quarter turns (``variant %
        4``) and, from 4 on, its mirror image; without rotations 0 is upright and 1 mirrored."""
        rng = task_rng(seed, step, index)
        picks = rng.choice(self.classes, self.ways, replace=False)
        n = self.shots + self.query
        rows = self._rows(picks, rng, n)
        offsets = rng.integers(0, 2 * self.shift + 1, (self.ways, n, 2)) if self.shift else None
        return rows, picks % self._variants, offsets

    def _rows(self, picks: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        """Rows ``[len(picks), n]`` of ``n`` distinct random images of each picked class."""
        classes = self._classes[picks // self._variants]
        # Random keys, padding positions last: the first n are distinct images.
        keys = rng.random((len(picks), self._width))
        keys[self._padding[classes]] = 2.0
        positions = np.argsort(keys, axis=1)[:, :n]
        return self._order[self._starts[classes][:, None] + positions]

    def sample(self, seed: int, step: int, indices: Sequence[int]) -> TaskBatch:
        indices = list(indices)
        images = self._open()
        tasks = [self._draw(seed, step, i) for i in indices]
        rows = np.stack([task[0] for task in tasks])
        pixels = self._oriented(images, rows, np.stack([task[1] for task in tasks]))
        if self.shift:
            pixels = _shifted(pixels, np.stack([task[2] for task in tasks]), self.shift)
        if self._invert:
            np.subtract(255, pixels, out=pixels)
        pixels = pixels.transpose(0, 1, 2, 5, 3, 4)  # [tasks, ways, n, C, H, W]
        labels = torch.arange(self.ways)
        ids = tuple((seed, step, i) for i in indices)
        return TaskBatch(
            self._inputs(pixels[:, :, : self.shots]),
            labels.repeat_interleave(self.shots).repeat(len(indices), 1),
            self._inputs(pixels[:, :, self.shots :]),
            labels.repeat_interleave(self.query).repeat(len(indices), 1),
            ids,
        )

    def _oriented(self, images: ImageSet, rows: np.ndarray, variants: np.ndarray) -> np.ndarray:
        """``uint8`` pixels ``[tasks, ways, n, H, W, C]`` of ``rows`` ``[tasks, ways, n]``,
        each class turned and mirrored as its variant ``[tasks, ways]`` says."""
        turns = variants % self._turns
        pixels = images.images(rows)
        mirrored = variants >= self._turns
        if mirrored.any():
            pixels[mirrored] = pixels[mirrored][:, :, :, ::-1]
        for k in (1, 2, 3):
            turned = turns == k
            if turned.any():
                pixels[turned] = np.rot90(pixels[turned], k, axes=(2, 3))
        return pixels

    def images_of(
        self, picks: np.ndarray, rng: np.random.Generator, per_class: int
    ) -> torch.Tensor:
        """``per_class`` distinct random images of each class of ``picks`` (class numbers in
        ``0..classes-1``, rotations and reflections counted, as tasks number them), as network
        inputs ``[len(picks) * per_class, C, H, W]``, class by class; never shifted. A stream
        keeps its task's classes and draws new images of them at every step.

        Raises:
            ValueError: A class number is out of range, or ``per_class`` exceeds the images of
                the smallest class of the split.
        """
        picks = np.asarray(picks, dtype=np.int64)
        if picks.size and (picks.min() < 0 or picks.max() >= self.classes):
            raise ValueError(f"class numbers must be in 0..{self.classes - 1}, got {picks}")
        smallest = int(self._counts[self._classes].min())
        if not 0 < per_class <= smallest:
            raise ValueError(
                f"per_class must be in 1..{smallest} (the smallest class of the {self.split} "
                f"split of {self.path}), got {per_class}"
            )
        rows = self._rows(picks, rng, per_class)
        pixels = self._oriented(self._open(), rows[None], (picks % self._variants)[None])
        if self._invert:
            np.subtract(255, pixels, out=pixels)
        return self._inputs(pixels.transpose(0, 1, 2, 5, 3, 4))[0]

    def _inputs(self, pixels: np.ndarray) -> torch.Tensor:
        """``uint8`` ``[tasks, ways, n, C, H, W]`` to float ``[tasks, ways * n, C, H, W]``."""
        # numpy converts several times faster than torch on few CPU threads.
        floats = np.float64 if self.dtype == torch.float64 else np.float32
        tasks, ways, n = pixels.shape[:3]
        out = np.empty((tasks, ways * n, *self.input_shape), dtype=floats)
        np.divide(pixels, 255, out=out.reshape(pixels.shape))
        return torch.from_numpy(out).to(self.dtype)

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return F.cross_entropy

    # --- as optimisation problems of a learned optimizer (ProblemFamily) ---------------------

    def initial_params(self, model: nn.Module, name: TaskId) -> dict[str, torch.Tensor]:
        """A freshly initialised ``model`` for the trajectory ``name``."""
        return fresh_params(model, name)

    def steps(self, name: TaskId, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's support set at every optimizee step (full-batch training):
        ``[count, ways * shots, C, H, W]`` images (one copy, expanded) and their labels."""
        batch = self.sample(*name[:2], [name[2]])
        return (
            batch.support_x.expand(count, *batch.support_x.shape[1:]),
            batch.support_y.expand(count, -1),
        )

    def query_set(self, name: TaskId) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's query images and labels."""
        batch = self.sample(*name[:2], [name[2]])
        return batch.query_x[0], batch.query_y[0]
