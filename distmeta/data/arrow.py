"""The prepared image-set file: one Arrow IPC file, one row per image, memory-mapped to read.

Columns, in this order:

=============  ===================================  ==========================================
``alphabet``   ``string``                           Omniglot alphabet (``""`` for image folders)
``character``  ``string``                           class folder (``character01``, ``n01532829``)
``class_id``   ``int32``                            dense ``0..classes-1`` in sorted
                                                    ``(alphabet, character)`` order
``drawer``     ``int32``                            Omniglot drawer ``1..20``; for image folders
                                                    the image's 1-based rank in its class
``file``       ``string``                           path of the source file in its archive
``image``      ``fixed_size_binary(H * W * C)``     ``uint8`` pixels, ``[H, W, C]`` row-major
=============  ===================================  ==========================================

The schema metadata key ``distmeta`` holds :class:`ImageSetInfo` as JSON: the source's sha256,
counts, image size and how pixels map to network inputs. Files are written uncompressed, so a
reader maps the pixels straight from the page cache and every process on a machine that reads
the same file shares one copy of them; and under a temporary name, renamed into place when
complete, so a failed preparation never leaves a file that looks finished.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from distmeta.errors import DataError

__all__ = [
    "METADATA_KEY",
    "ImageRows",
    "ImageSet",
    "ImageSetInfo",
    "resolve_image_set",
    "write_image_set",
]

METADATA_KEY = b"distmeta"
_BATCH_BYTES = 64 << 20


class ImageSetInfo(BaseModel):
    """What a prepared image set holds and where it came from (the file's schema metadata)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["distmeta.images"] = "distmeta.images"
    version: Literal[1] = 1
    dataset: str
    """``omniglot`` or ``imagefolder``."""
    source: str
    """File or folder name of the source (``images_background.zip``)."""
    source_sha256: str | None
    """sha256 of the source archive's bytes; ``None`` when the source was a folder."""
    content_sha256: str
    """sha256 of the source images' ``sha256sum`` listing: the same for a zip and its folder."""
    height: PositiveInt
    width: PositiveInt
    channels: Literal[1, 3]
    resample: Literal["lanczos"] = "lanczos"
    rows: PositiveInt
    classes: PositiveInt
    alphabets: PositiveInt
    invert: bool
    """Dark ink on light paper (Omniglot): networks see ``1 - x/255``, so ink is 1."""
    held_out: bool
    """Every class was held out of meta-training (Omniglot's evaluation alphabets)."""


def _schema(info: ImageSetInfo) -> pa.Schema:
    row_bytes = info.height * info.width * info.channels
    return pa.schema(
        [
            ("alphabet", pa.string()),
            ("character", pa.string()),
            ("class_id", pa.int32()),
            ("drawer", pa.int32()),
            ("file", pa.string()),
            ("image", pa.binary(row_bytes)),
        ],
        metadata={METADATA_KEY: info.model_dump_json().encode()},
    )


@dataclass(frozen=True)
class ImageRows:
    """The images of a set and their labels, one entry per image, in file order.

    Args:
        alphabet: Alphabet of each image (``""`` where there is none).
        character: Class folder of each image.
        drawer: Drawer (or rank within the class) of each image.
        file: Source path of each image.
        pixels: ``uint8`` ``[n, height, width, channels]``.
    """

    alphabet: Sequence[str]
    character: Sequence[str]
    drawer: Sequence[int]
    file: Sequence[str]
    pixels: np.ndarray


def write_image_set(
    path: str | Path,
    rows: ImageRows,
    *,
    dataset: str,
    source: str,
    source_sha256: str | None,
    content_sha256: str,
    invert: bool,
    held_out: bool,
    batch_bytes: int = _BATCH_BYTES,
) -> ImageSetInfo:
    """Write ``rows`` as a prepared image set at ``path``, atomically.

    The file is written under a hidden temporary name in the same folder and renamed to
    ``path`` only when complete; on any failure the temporary file is removed and an existing
    file at ``path`` is left untouched.

    Args:
        path: The ``.arrow`` file to write; its folder is created.
        rows: The images; class ids are assigned in sorted ``(alphabet, character)`` order.
        dataset, source, source_sha256, content_sha256, invert, held_out: See
            :class:`ImageSetInfo`.
        batch_bytes: Upper bound of the pixel bytes of one record batch (readers accept any
            number of batches).

    Returns:
        The file's :class:`ImageSetInfo`.
    """
    path = Path(path)
    pixels = np.ascontiguousarray(rows.pixels, dtype=np.uint8)
    count, height, width, channels = pixels.shape
    keys = list(zip(rows.alphabet, rows.character, strict=True))
    if not count == len(keys) == len(rows.drawer) == len(rows.file):
        raise ValueError("ImageRows columns disagree on the number of images")
    class_of = {key: index for index, key in enumerate(sorted(set(keys)))}
    info = ImageSetInfo(
        dataset=dataset,
        source=source,
        source_sha256=source_sha256,
        content_sha256=content_sha256,
        height=height,
        width=width,
        channels=channels,
        rows=count,
        classes=len(class_of),
        alphabets=len(set(rows.alphabet)),
        invert=invert,
        held_out=held_out,
    )
    schema = _schema(info)
    row_bytes = height * width * channels
    images = pa.Array.from_buffers(
        pa.binary(row_bytes), count, [None, pa.py_buffer(pixels.reshape(-1))]
    )
    table = pa.table(
        [
            pa.array(rows.alphabet, pa.string()),
            pa.array(rows.character, pa.string()),
            pa.array([class_of[key] for key in keys], pa.int32()),
            pa.array(rows.drawer, pa.int32()),
            pa.array(rows.file, pa.string()),
            images,
        ],
        schema=schema,
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            writer.write_table(table, max_chunksize=max(1, batch_bytes // row_bytes))
        with temporary.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {error}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return info


def resolve_image_set(path: str | Path) -> Path:
    """The ``.arrow`` file that ``path`` names: the file itself, or the one in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.arrow") if not p.name.startswith("."))
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise DataError(
                f"{path} must hold exactly one prepared .arrow file (found: {found}); "
                "name the file, or prepare one with `distmeta data prepare`"
            )
        return files[0]
    if not path.is_file():
        raise DataError(
            f"no prepared image set at {path}: prepare one with `distmeta data prepare`"
        )
    return path


def _read_info(path: Path, schema: pa.Schema) -> ImageSetInfo:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(
            f"{path} is not a distmeta image set (no '{METADATA_KEY.decode()}' "
            "schema metadata): prepare it with `distmeta data prepare`"
        )
    try:
        return ImageSetInfo.model_validate_json(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors()
        )
        raise DataError(f"{path}: invalid image-set metadata ({problems})") from None


class ImageSet:
    """A prepared image set, memory-mapped and checked against its schema.

    Opening reads the footer, the metadata and the small columns; pixels stay in the mapped
    file until :meth:`images` gathers rows, so processes on one machine share the file's pages
    and none holds a private copy of the data set.

    Args:
        path: A prepared ``.arrow`` file, or a folder holding exactly one.

    Raises:
        DataError: The file is missing, not an Arrow IPC file, truncated, or its schema, metadata
            or class ids are not those of a prepared image set.
    """

    def __init__(self, path: str | Path):
        self.path = resolve_image_set(path)
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except (pa.ArrowException, OSError, ValueError) as error:
            raise DataError(
                f"{self.path} is not a readable Arrow IPC file (truncated or corrupt?): {error}"
            ) from None
        self.info = info = _read_info(self.path, reader.schema)
        expected = _schema(info)
        found = reader.schema.remove_metadata()
        if not found.equals(expected.remove_metadata()):
            raise DataError(
                f"{self.path} has the wrong schema: expected "
                f"{_describe(expected)}, found {_describe(found)}"
            )
        table = pa.Table.from_batches(batches, schema=reader.schema)
        if table.num_rows != info.rows:
            raise DataError(
                f"{self.path} holds {table.num_rows} rows, its metadata says {info.rows}"
            )
        nulls = [name for name in table.column_names if table.column(name).null_count]
        if nulls:
            raise DataError(f"{self.path}: missing values in {', '.join(nulls)}")
        self.class_id = np.concatenate([_int32s(b.column("class_id")) for b in batches])
        self.class_names = self._class_names(table)
        self.shape = (info.height, info.width, info.channels)
        self._views = [self._pixels(batch) for batch in batches if batch.num_rows]
        self._ends = np.cumsum([len(view) for view in self._views])

    def _class_names(self, table: pa.Table) -> list[str]:
        """``alphabet/character`` (or ``character``) of each class id, checked to be one-to-one.

        Read from the column buffers with numpy on purpose: Python strings for every row, or
        Arrow's compute kernels, would add megabytes of private memory to every worker process
        that opens the file.
        """
        classes, ids = self.info.classes, self.class_id
        if ids.min() < 0 or ids.max() >= classes or np.unique(ids).size != classes:
            raise DataError(
                f"{self.path}: class ids must be 0..{classes - 1}, each used; found "
                f"{np.unique(ids).size} distinct ids in {ids.min()}..{ids.max()}"
            )
        first = np.unique(ids, return_index=True)[1]
        names = {}
        for name in ("alphabet", "character"):
            column = table.column(name)
            names[name] = [column[int(row)].as_py() for row in first]
            start = 0
            for chunk in column.chunks:
                rows = ids[start : start + len(chunk)]
                start += len(chunk)
                if not _strings_equal(chunk, rows, names[name]):
                    raise DataError(
                        f"{self.path}: rows of one class_id differ in {name}: class ids and "
                        "class folders must correspond one to one"
                    )
        pairs = zip(names["alphabet"], names["character"], strict=True)
        by_id = [
            f"{alphabet}/{character}" if alphabet else character for alphabet, character in pairs
        ]
        if len(set(by_id)) != classes:
            raise DataError(f"{self.path}: two class ids name the same class folder")
        return by_id

    def _pixels(self, batch: pa.RecordBatch) -> np.ndarray:
        """A zero-copy ``[rows, H, W, C]`` view of one batch's image buffer."""
        column = batch.column("image")
        row_bytes = int(np.prod(self.shape))
        flat = np.frombuffer(column.buffers()[1], dtype=np.uint8)
        start = column.offset * row_bytes
        return flat[start : start + len(column) * row_bytes].reshape(len(column), *self.shape)

    def __len__(self) -> int:
        return self.info.rows

    def images(self, rows: np.ndarray) -> np.ndarray:
        """The pixels of ``rows`` (any shape of row numbers), ``uint8`` ``[*rows.shape, H, W, C]``,
        as a new array."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        if len(self._views) == 1:
            out = self._views[0][flat]
        else:
            out = np.empty((flat.size, *self.shape), dtype=np.uint8)
            batch = np.searchsorted(self._ends, flat, side="right")
            for index in np.unique(batch):
                chosen = batch == index
                start = self._ends[index - 1] if index else 0
                out[chosen] = self._views[index][flat[chosen] - start]
        return out.reshape(*rows.shape, *self.shape)


def _strings_equal(array: pa.Array, rows: np.ndarray, reference: list[str]) -> bool:
    """Whether string ``array[i]`` equals ``reference[rows[i]]`` for every ``i``, compared as
    bytes in numpy (no Python object per row)."""
    encoded = [text.encode() for text in reference]
    sizes = np.array([len(text) for text in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    expected = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    lengths = np.diff(offsets).astype(np.int64)
    if not np.array_equal(lengths, sizes[rows]):
        return False
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    found = np.frombuffer(data, dtype=np.uint8) if data is not None else expected[:0]
    return np.array_equal(
        found[np.repeat(offsets[:-1], lengths) + within],
        expected[np.repeat(starts[rows], lengths) + within],
    )


def _int32s(array: pa.Array) -> np.ndarray:
    """An ``int32`` array without nulls as ``int64`` numpy, read from its buffer directly:
    ``Array.to_numpy`` imports pandas, tens of MB in every worker process."""
    values = np.frombuffer(array.buffers()[1], dtype=np.int32)
    return values[array.offset : array.offset + len(array)].astype(np.int64)


def _describe(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{field.name}: {field.type}" for field in schema) + ")"
