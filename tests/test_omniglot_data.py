"""Preparing image sets: exact pixels from real Omniglot drawings, clear errors on bad input."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from imagesets import SHARED_ZIP, SMALL_ALPHABETS, omniglot_subset, synthetic_image_set
from PIL import Image

from distmeta.cli import main
from distmeta.data import ImageSet, prepare_imagefolder, prepare_omniglot
from distmeta.data.archive import ImageArchive, content_sha256
from distmeta.errors import DataError


def documented_pixels(data: bytes, size=(28, 28), mode="L") -> np.ndarray:
    """The preparation's documented decode: Pillow, convert, Lanczos resize, uint8."""
    image = Image.open(io.BytesIO(data)).convert(mode)
    resized = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized).reshape(size[0], size[1], -1)


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory) -> Path:
    return omniglot_subset(tmp_path_factory.mktemp("src") / "images_background.zip")


@pytest.fixture(scope="module")
def prepared(small_zip, tmp_path_factory) -> Path:
    return prepare_omniglot(small_zip, tmp_path_factory.mktemp("prepared"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_prepared_omniglot_round_trips_exact_pixels(small_zip, prepared):
    assert prepared.name == "images_background.arrow"
    table = pa.ipc.open_file(pa.memory_map(str(prepared))).read_all()
    with zipfile.ZipFile(small_zip) as source:
        names = sorted(source.namelist())
        assert table.column("file").to_pylist() == names
        stored = table.column("image").to_pylist()
        for name, raw in zip(names, stored, strict=True):
            expected = documented_pixels(source.read(name))
            assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(28, 28, 1), expected), name
    images = ImageSet(prepared)
    every = images.images(np.arange(len(images)))
    assert np.array_equal(
        every.reshape(len(images), -1),
        np.frombuffer(b"".join(stored), np.uint8).reshape(len(images), -1),
    )
    # Paper 255, ink towards 0, and the antialiased grey edges that a nearest-neighbour resize
    # (what Pillow does to a 1-bit image not converted first) would not have.
    assert every.max() == 255 and np.mean(every == 255) > 0.6
    assert np.mean((every > 0) & (every < 255)) > 0.1


def test_prepared_omniglot_columns_and_metadata(small_zip, prepared):
    table = pa.ipc.open_file(pa.memory_map(str(prepared))).read_all()
    files = table.column("file").to_pylist()
    alphabets = table.column("alphabet").to_pylist()
    characters = table.column("character").to_pylist()
    drawers = table.column("drawer").to_pylist()
    for file, alphabet, character, drawer in zip(
        files, alphabets, characters, drawers, strict=True
    ):
        top, in_alphabet, in_character, name = file.split("/")
        assert (top, in_alphabet, in_character) == ("images_background", alphabet, character)
        assert int(re.fullmatch(r"\d{4}_(\d{2})\.png", name).group(1)) == drawer
    keys = sorted(set(zip(alphabets, characters, strict=True)))
    ids = table.column("class_id").to_pylist()
    assert ids == [keys.index(key) for key in zip(alphabets, characters, strict=True)]
    info = ImageSet(prepared.parent).info  # a folder names its one .arrow file
    assert (info.rows, info.classes, info.alphabets) == (620, 31, 2)
    assert set(alphabets) == set(SMALL_ALPHABETS)
    assert (info.height, info.width, info.channels) == (28, 28, 1)
    assert info.dataset == "omniglot" and info.invert and not info.held_out
    assert info.source == "images_background.zip"
    assert info.source_sha256 == hashlib.sha256(small_zip.read_bytes()).hexdigest()


def test_extracted_folder_gives_the_same_images(small_zip, prepared, tmp_path):
    with zipfile.ZipFile(small_zip) as source:
        source.extractall(tmp_path / "extracted")
    (tmp_path / "extracted/images_background/.DS_Store").write_bytes(b"junk")  # skipped
    from_folder = prepare_omniglot(tmp_path / "extracted/images_background", tmp_path / "out")
    a, b = ImageSet(prepared), ImageSet(from_folder)
    assert a.info.content_sha256 == b.info.content_sha256 and b.info.source_sha256 is None
    assert np.array_equal(a.images(np.arange(len(a))), b.images(np.arange(len(b))))
    assert np.array_equal(a.class_id, b.class_id) and a.class_names == b.class_names


def test_content_hash_matches_the_shared_manifest():
    if not SHARED_ZIP.exists():
        pytest.skip(f"the shared Omniglot archive is not at {SHARED_ZIP}")
    manifest = (SHARED_ZIP.parent / "MANIFEST.txt").read_text()
    expected = re.search(r"content-sha256\s+([0-9a-f]{64})", manifest).group(1)
    with ImageArchive(SHARED_ZIP) as archive:
        digests = {p: hashlib.sha256(archive.read(p)).hexdigest() for p in archive.paths}
    assert len(digests) == 19280 and content_sha256(digests) == expected


def test_evaluation_split_is_marked_held_out(tmp_path):
    source = omniglot_subset(tmp_path / "images_evaluation.zip", ("Tagalog",), "images_evaluation")
    info = ImageSet(prepare_omniglot(source, tmp_path / "out", size=(14, 14))).info
    assert info.held_out and (info.height, info.width, info.classes) == (14, 14, 17)


def _rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of zip ``src`` (stored, uncompressed) with ``change(name, data)`` applied."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            changed = change(name, zin.read(name))
            if changed is not None:
                zout.writestr(changed[0], changed[1])
    return dst


BROKEN = "images_background/Tagalog/character05/0897_07.png"


def _undecodable(name, data):
    return name, b"this is not a PNG" if name == BROKEN else data


def _truncated_png(name, data):
    return name, data[: len(data) // 2] if name == BROKEN else data


def _flat_layout(name, data):
    return ("images_background/Tagalog/0897_07.png" if name == BROKEN else name), data


def _badly_named(name, data):
    return (name.replace("0897_07.png", "drawing7.png") if name == BROKEN else name), data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_undecodable, f"{BROKEN}: not a decodable image"),
        (_truncated_png, f"{BROKEN}: not a decodable image"),
        (_flat_layout, "Tagalog/0897_07.png is not in the Omniglot layout"),
        (_badly_named, "character05/drawing7.png is not in the Omniglot layout"),
    ],
)
def test_bad_entries_name_the_file_and_write_nothing(small_zip, tmp_path, change, message):
    broken = _rewrite(small_zip, tmp_path / "images_background.zip", change)
    with pytest.raises(DataError, match=re.escape(message)):
        prepare_omniglot(broken, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_truncated_zip_is_refused(small_zip, tmp_path):
    truncated = tmp_path / "images_background.zip"
    truncated.write_bytes(small_zip.read_bytes()[: small_zip.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{re.escape(str(truncated))} is not a readable zip"):
        prepare_omniglot(truncated, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_corrupt_zip_entry_is_refused(small_zip, tmp_path):
    stored = _rewrite(small_zip, tmp_path / "images_background.zip", lambda n, d: (n, d))
    raw = bytearray(stored.read_bytes())
    with zipfile.ZipFile(stored) as archive:
        info = archive.getinfo(BROKEN)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF  # flip a byte inside the stored PNG
    stored.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=re.escape(f"{stored}:{BROKEN}: cannot be read")):
        prepare_omniglot(stored, tmp_path / "out")


def test_parent_folder_is_the_wrong_layout(small_zip, tmp_path):
    with zipfile.ZipFile(small_zip) as source:
        source.extractall(tmp_path / "parent")
    with pytest.raises(DataError, match="is not in the Omniglot layout"):
        prepare_omniglot(tmp_path / "parent", tmp_path / "out")
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_omniglot(tmp_path / "missing.zip", tmp_path / "out")


def test_failed_preparation_keeps_the_previous_file(small_zip, prepared, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(prepared, out / prepared.name)
    before = (out / prepared.name).read_bytes()
    broken = _rewrite(small_zip, tmp_path / "images_background.zip", _undecodable)
    with pytest.raises(DataError):
        prepare_omniglot(broken, out)
    assert leftovers(out) == [prepared.name] and (out / prepared.name).read_bytes() == before


def _write_table(path: Path, table: pa.Table) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_arrow_files_of_the_wrong_schema_are_refused(prepared, tmp_path):
    table = pa.ipc.open_file(pa.memory_map(str(prepared))).read_all()
    renamed = table.rename_columns([*table.column_names[:-1], "pixels"])
    renamed = _write_table(
        tmp_path / "renamed.arrow", renamed.replace_schema_metadata(table.schema.metadata)
    )
    with pytest.raises(DataError, match=f"{re.escape(str(renamed))} has the wrong schema"):
        ImageSet(renamed)
    plain = _write_table(tmp_path / "plain.arrow", table.replace_schema_metadata(None))
    with pytest.raises(DataError, match="is not a distmeta image set"):
        ImageSet(plain)
    newer = table.replace_schema_metadata({b"distmeta": b'{"version": 2}'})
    with pytest.raises(DataError, match=r"invalid image-set metadata \(version: Input should be 1"):
        ImageSet(_write_table(tmp_path / "newer.arrow", newer))
    ids = table.column("class_id").to_numpy()
    for wrong, message in [
        (np.zeros_like(ids), "class ids must be 0..30, each used; found 1 distinct ids in 0..0"),
        (np.where(np.arange(620) == 0, 1, ids), "rows of one class_id differ in character"),
    ]:
        bad = table.set_column(2, "class_id", pa.array(wrong, pa.int32()))
        with pytest.raises(DataError, match=re.escape(message)):
            ImageSet(_write_table(tmp_path / "ids.arrow", bad))
    characters = table.column("character").to_pylist()
    merged = [characters[0] if i == 1 else c for i, c in zip(ids, characters, strict=True)]
    bad = table.set_column(1, "character", pa.array(merged, pa.string()))
    with pytest.raises(DataError, match="two class ids name the same class folder"):
        ImageSet(_write_table(tmp_path / "merged.arrow", bad))
    fewer = _write_table(tmp_path / "fewer.arrow", table.slice(0, 100))
    with pytest.raises(DataError, match="holds 100 rows, its metadata says 620"):
        ImageSet(fewer)
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(prepared.read_bytes()[:-1000])
    with pytest.raises(DataError, match="cut.arrow is not a readable Arrow IPC file"):
        ImageSet(cut)
    with pytest.raises(DataError, match="no prepared image set at"):
        ImageSet(tmp_path / "nothing.arrow")
    with pytest.raises(DataError, match="must hold exactly one prepared .arrow file"):
        ImageSet(tmp_path)


def test_many_record_batches_read_like_one(tmp_path):
    one = ImageSet(synthetic_image_set(tmp_path / "one.arrow", 10, 7))
    many = synthetic_image_set(tmp_path / "many.arrow", 10, 7, batch_bytes=36 * 9)
    assert pa.ipc.open_file(pa.memory_map(str(many))).num_record_batches == 8
    rows = np.random.default_rng(0).integers(0, 70, size=(5, 40))
    assert np.array_equal(ImageSet(many).images(rows), one.images(rows))


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["n01", "n02", "n03"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
            image = Image.fromarray(pixels if c != 1 else pixels[..., 0])  # one gray class
            image.save(root / name / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder_round_trips_exact_pixels(tmp_path, channels):
    folder = _image_folder(tmp_path / "train")
    path = prepare_imagefolder(folder, tmp_path / "out", size=(12, 10), channels=channels)
    images = ImageSet(path)
    assert path.name == "train.arrow" and images.shape == (12, 10, channels)
    assert (images.info.rows, images.info.classes, images.info.invert) == (12, 3, False)
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    assert table.column("drawer").to_pylist() == [1, 2, 3, 4] * 3
    for row, file in enumerate(table.column("file").to_pylist()):
        expected = documented_pixels(
            (tmp_path / file).read_bytes(), (12, 10), "RGB" if channels == 3 else "L"
        )
        assert np.array_equal(images.images([row])[0], expected), file


def test_image_folder_errors(tmp_path):
    folder = _image_folder(tmp_path / "train")
    (folder / "n02" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"n02/notes.txt is not an image file"):
        prepare_imagefolder(folder, tmp_path / "out", size=(8, 8))
    (folder / "n02" / "notes.txt").unlink()
    (folder / "stray.png").write_bytes((folder / "n01" / "img1.png").read_bytes())
    with pytest.raises(DataError, match=r"train/stray.png is not in the layout"):
        prepare_imagefolder(folder, tmp_path / "out", size=(8, 8))
    (folder / "stray.png").unlink()
    (folder / "n03" / "img0.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"n03/img0.jpg: not a decodable image"):
        prepare_imagefolder(folder, tmp_path / "out", size=(8, 8))
    assert leftovers(tmp_path / "out") == []


def test_cli_prepares_and_reports_errors_in_one_line(small_zip, tmp_path, capsys):
    assert (
        main(["data", "prepare", "omniglot", "--src", str(small_zip), "--out", str(tmp_path)]) == 0
    )
    assert "620 images of 31 classes" in capsys.readouterr().err
    assert ImageSet(tmp_path).info.rows == 620
    folder = _image_folder(tmp_path / "mini")
    argv = ["data", "prepare", "imagefolder", "--src", str(folder), "--out", str(tmp_path / "m")]
    assert main([*argv, "--size", "8", "8", "--held-out"]) == 0
    assert ImageSet(tmp_path / "m").info.held_out and "12 images" in capsys.readouterr().err
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    assert (
        main(["data", "prepare", "omniglot", "--src", str(bad), "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.zip is not a readable zip archive" in err
    assert len(err.strip().splitlines()) == 1
