"""Prepare a folder-per-class image set (mini-ImageNet is distributed so) into a prepared set."""

from __future__ import annotations

from pathlib import Path

from distmeta.data.archive import ImageArchive
from distmeta.data.arrow import ImageRows, write_image_set
from distmeta.data.decode import decode_images
from distmeta.errors import DataError

__all__ = ["EXTENSIONS", "LAYOUT", "prepare_imagefolder"]

LAYOUT = "<folder>/<class>/<image file>"
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File endings taken as images (any case)."""


def prepare_imagefolder(
    src: str | Path,
    out_dir: str | Path,
    size: tuple[int, int],
    channels: int = 3,
    held_out: bool = False,
) -> Path:
    """Decode, resize and write every image of a folder-per-class image set.

    Args:
        src: A folder laid out as :data:`LAYOUT` (or a zip holding one such top folder).
        out_dir: Folder of the result, ``<folder>.arrow``.
        size: ``(height, width)`` of the stored images (mini-ImageNet: 84x84).
        channels: 3 stores RGB, 1 grayscale; every image is converted to that.
        held_out: Mark every class as held out of meta-training (a test split), so that
            evaluation uses all of its classes.

    Returns:
        The written file; classes are the class folders in sorted order, ``drawer`` is an
        image's 1-based rank in its folder, pixels are those of
        :func:`~distmeta.data.decode.decode_image` and networks see them as ``x/255``.

    Raises:
        DataError: A file outside the layout or not ending as an image, an image that does not
            decode, or a corrupt archive; nothing is written then.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    with ImageArchive(src) as archive:
        if not archive.paths:
            raise DataError(f"{archive.src} holds no files; expected the layout {LAYOUT}")
        characters, drawers = [], []
        for path in archive.paths:
            parts = path.split("/")
            if len(parts) != 3 or parts[0] != archive.top:
                raise DataError(f"{archive.location(path)} is not in the layout {LAYOUT}")
            if Path(parts[2]).suffix.lower() not in EXTENSIONS:
                raise DataError(
                    f"{archive.location(path)} is not an image file "
                    f"(expected one of {', '.join(sorted(EXTENSIONS))})"
                )
            same_class = bool(characters) and characters[-1] == parts[1]
            drawers.append(drawers[-1] + 1 if same_class else 1)
            characters.append(parts[1])
        pixels, content = decode_images(archive, archive.paths, size, channels)
        path = Path(out_dir) / f"{archive.top}.arrow"
        write_image_set(
            path,
            ImageRows([""] * len(characters), characters, drawers, archive.paths, pixels),
            dataset="imagefolder",
            source=archive.src.resolve().name,
            source_sha256=archive.sha256,
            content_sha256=content,
            invert=False,
            held_out=held_out,
        )
    return path
