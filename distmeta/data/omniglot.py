"""Prepare Omniglot (Lake et al., 2015) from its official archive into a prepared image set."""

from __future__ import annotations

import re
from pathlib import Path

from distmeta.data.archive import ImageArchive
from distmeta.data.arrow import ImageRows, write_image_set
from distmeta.data.decode import decode_images
from distmeta.errors import DataError

__all__ = ["LAYOUT", "prepare_omniglot"]

LAYOUT = "<split>/<Alphabet>/characterNN/NNNN_DD.png"
"""Layout of the official archives: NNNN is the global character id, DD the drawer 01..20."""

_CHARACTER = re.compile(r"character\d+")
_DRAWING = re.compile(r"(\d{4})_(\d{2})\.png")
_HELD_OUT = "images_evaluation"


def prepare_omniglot(
    src: str | Path, out_dir: str | Path, size: tuple[int, int] = (28, 28)
) -> Path:
    """Decode, resize and write every drawing of an Omniglot split.

    Args:
        src: ``images_background.zip`` or ``images_evaluation.zip``, or its extracted top
            folder, laid out as :data:`LAYOUT`.
        out_dir: Folder of the result, ``<split>.arrow`` (``images_background.arrow``).
        size: ``(height, width)`` of the stored images; the papers use 28x28.

    Returns:
        The written file. Its rows are sorted by alphabet, character and drawer; pixels are
        those of :func:`~distmeta.data.decode.decode_image` (grayscale, ink 0, paper 255,
        marked ``invert`` so networks see ink as 1). The evaluation split is marked
        ``held_out``.

    Raises:
        DataError: A corrupt or truncated archive, a file outside the layout, or a PNG that
            does not decode; nothing is written then.
    """
    with ImageArchive(src) as archive:
        if not archive.paths:
            raise DataError(f"{archive.src} holds no files; expected the layout {LAYOUT}")
        alphabets, characters, drawers = [], [], []
        for path in archive.paths:
            parts = path.split("/")
            drawing = _DRAWING.fullmatch(parts[-1])
            if (
                len(parts) != 4
                or parts[0] != archive.top
                or not _CHARACTER.fullmatch(parts[2])
                or drawing is None
            ):
                raise DataError(
                    f"{archive.location(path)} is not in the Omniglot layout {LAYOUT} "
                    f"(one top folder, {archive.top}/, holding every alphabet)"
                )
            alphabets.append(parts[1])
            characters.append(parts[2])
            drawers.append(int(drawing.group(2)))
        pixels, content = decode_images(archive, archive.paths, size, channels=1)
        path = Path(out_dir) / f"{archive.top}.arrow"
        write_image_set(
            path,
            ImageRows(alphabets, characters, drawers, archive.paths, pixels),
            dataset="omniglot",
            source=archive.src.resolve().name,
            source_sha256=archive.sha256,
            content_sha256=content,
            invert=True,
            held_out=archive.top == _HELD_OUT,
        )
    return path
