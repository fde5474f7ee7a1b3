"""Test image sets: a few real Omniglot alphabets, and synthetic sets whose images name
themselves (class, drawer and orientation can be read back from the pixels)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from distmeta.data import ImageRows, write_image_set

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared/data/omniglot/images_background.zip"
SMALL_ALPHABETS = ("Blackfoot_(Canadian_Aboriginal_Syllabics)", "Tagalog")
"""14 + 17 characters, 620 drawings."""


def omniglot_subset(dst: Path, alphabets=SMALL_ALPHABETS, top: str = "images_background") -> Path:
    """A zip of ``alphabets`` copied from the shared Omniglot archive, under ``top/``."""
    if not SHARED_ZIP.exists():
        pytest.skip(f"the shared Omniglot archive is not at {SHARED_ZIP}")
    with zipfile.ZipFile(SHARED_ZIP) as src, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for name in src.namelist():
            parts = name.split("/")
            if name.endswith(".png") and parts[1] in alphabets:
                out.writestr("/".join([top, *parts[1:]]), src.read(name))
    return dst


def marked_image(cls: int, drawer: int, size: int) -> np.ndarray:
    """``uint8`` ``[size, size, 1]``: ``cls + 1`` at the top-left corner, ``drawer + 1`` right of
    it, zero elsewhere; the corner's position reveals a rotation."""
    image = np.zeros((size, size, 1), dtype=np.uint8)
    image[0, 0, 0], image[0, 1, 0] = cls + 1, drawer + 1
    return image


def read_mark(image: np.ndarray) -> tuple[int, int, int]:
    """``(cls, drawer, k)`` of a :func:`marked_image` turned by ``np.rot90(_, k)``."""
    image = image[..., 0]
    for k in range(4):
        upright = np.rot90(image, -k)
        if upright[0, 0] and upright[0, 1] and np.count_nonzero(upright) == 2:
            return int(upright[0, 0]) - 1, int(upright[0, 1]) - 1, k
    raise AssertionError("not a marked image")


def synthetic_image_set(
    path: Path, classes: int, drawers, size: int = 6, invert: bool = False, **options
) -> Path:
    """A prepared set of :func:`marked_image` images; ``drawers`` per class (int or list);
    ``options`` go to :func:`~distmeta.data.write_image_set`."""
    counts = [drawers] * classes if isinstance(drawers, int) else list(drawers)
    keys = [(c, d) for c in range(classes) for d in range(counts[c])]
    rows = ImageRows(
        alphabet=[f"alphabet{c % 3}" for c, _ in keys],
        character=[f"character{c:03d}" for c, _ in keys],
        drawer=[d + 1 for _, d in keys],
        file=[f"set/{c}/{d}.png" for c, d in keys],
        pixels=np.stack([marked_image(c, d, size) for c, d in keys]),
    )
    arguments = {
        "dataset": "synthetic",
        "source": "synthetic",
        "source_sha256": None,
        "content_sha256": "0" * 64,
        "invert": invert,
        "held_out": False,
        **options,
    }
    write_image_set(path, rows, **arguments)
    return path
