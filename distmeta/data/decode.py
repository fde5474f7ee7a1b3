"""The one documented way an image file becomes the pixels of a prepared image set.

Decode with Pillow, convert to ``"L"`` (grayscale) or ``"RGB"``, resize to ``(height, width)``
with Lanczos (antialiasing) filtering, keep ``uint8`` ``[height, width, channels]``. Omniglot's
1-bit drawings become 0 (ink) and 255 (paper) before the resize, so the resized strokes keep
their grey antialiased edges. Reading a prepared file back gives exactly these arrays.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from distmeta.data.archive import ImageArchive, content_sha256
from distmeta.errors import DataError

__all__ = ["decode_image", "decode_images"]

_MODES = {1: "L", 3: "RGB"}


def decode_image(data: bytes, size: tuple[int, int], channels: int, where: str) -> np.ndarray:
    """Decode an encoded image and resize it: ``uint8`` ``[height, width, channels]``.

    Args:
        data: The file's bytes (PNG, JPEG, ... anything Pillow reads).
        size: ``(height, width)`` of the result.
        channels: 1 (grayscale) or 3 (RGB).
        where: The file's name, for the error message.

    Raises:
        DataError: The bytes do not decode as an image.
    """
    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert(_MODES[channels])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{where}: not a decodable image ({error})") from None
    resized = converted.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)


def decode_images(
    archive: ImageArchive, paths: Sequence[str], size: tuple[int, int], channels: int
) -> tuple[np.ndarray, str]:
    """Decode ``paths`` of ``archive`` into one ``[n, height, width, channels]`` array.

    Returns:
        The pixels in the order of ``paths`` and the content sha256 of those files
        (:func:`~distmeta.data.archive.content_sha256`).
    """
    pixels = np.empty((len(paths), *size, channels), dtype=np.uint8)
    digests = {}
    for row, path in enumerate(paths):
        data = archive.read(path)
        digests[path] = hashlib.sha256(data).hexdigest()
        pixels[row] = decode_image(data, size, channels, archive.location(path))
    return pixels, content_sha256(digests)
