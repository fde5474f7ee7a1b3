"""Arrow datasets: prepare image sets once, then memory-map them from every process."""

from distmeta.data.arrow import (
    ImageRows,
    ImageSet,
    ImageSetInfo,
    resolve_image_set,
    write_image_set,
)
from distmeta.data.decode import decode_image
from distmeta.data.imagefolder import prepare_imagefolder
from distmeta.data.omniglot import prepare_omniglot

__all__ = [
    "ImageRows",
    "ImageSet",
    "ImageSetInfo",
    "decode_image",
    "prepare_imagefolder",
    "prepare_omniglot",
    "resolve_image_set",
    "write_image_set",
]
