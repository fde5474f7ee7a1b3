"""The episodic sampler: shapes, distinct classes, disjoint support and query, rotations,
splits, and tasks rebuilt from (seed, step, index) in any process."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from imagesets import omniglot_subset, read_mark, synthetic_image_set

from distmeta.cli import main
from distmeta.config import parse_config
from distmeta.data import ImageRows, ImageSet, prepare_omniglot, write_image_set
from distmeta.errors import ConfigError, DataError
from distmeta.experiment import build_task_source
from distmeta.runs import adaptation_curves, load_run
from distmeta.tasks import FewShotImages, split_classes

CLASSES, DRAWERS, SIZE = 12, 6, 6
BARE = {"dataset": "test", "source": "test", "source_sha256": None, "content_sha256": "0" * 64}


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> Path:
    return synthetic_image_set(tmp_path_factory.mktemp("marked") / "marked.arrow", CLASSES, DRAWERS)


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory) -> Path:
    source = omniglot_subset(tmp_path_factory.mktemp("src") / "images_background.zip")
    return prepare_omniglot(source, tmp_path_factory.mktemp("omniglot")).parent


def marks(x: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(class, drawer, quarter turns)`` of each ``[C, H, W]`` image of one set."""
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [read_mark(image) for image in pixels]


def test_shapes_labels_and_names(marked):
    source = FewShotImages(marked, ways=5, shots=2, query=3, split="all")
    batch = source.sample(4, 7, [0, 5, 2])
    assert source.kind == "classification" and source.output_size == 5
    assert source.input_shape == (1, SIZE, SIZE) and source.classes == 4 * CLASSES
    assert (
        batch.support_x.shape == (3, 10, 1, SIZE, SIZE) and batch.support_x.dtype == torch.float32
    )
    assert batch.query_x.shape == (3, 15, 1, SIZE, SIZE)
    assert torch.equal(batch.support_y, torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 3))
    assert torch.equal(batch.query_y, torch.arange(5).repeat_interleave(3).repeat(3, 1))
    assert batch.support_y.dtype == torch.int64 and batch.ids == ((4, 7, 0), (4, 7, 5), (4, 7, 2))
    assert source.loss_fn()(torch.zeros(15, 5), batch.query_y[0]).item() == pytest.approx(np.log(5))
    wide = FewShotImages(marked, 3, 1, 1, split="all", dtype=torch.float64).sample(4, 7, [5])
    assert wide.query_x.dtype == torch.float64


def test_classes_distinct_support_and_query_disjoint_rotations_exact(marked):
    source = FewShotImages(marked, ways=5, shots=2, query=3, split="all")
    batch = source.sample(0, 0, range(200))
    turns_seen = set()
    for t in range(len(batch)):
        sx, sy, qx, qy = batch.task(t)
        support, query = marks(sx), marks(qx)
        class_of_label = {}
        labels = [*sy.tolist(), *qy.tolist()]
        for (cls, _, k), label in zip(support + query, labels, strict=True):
            # read_mark found exactly np.rot90(marked_image(cls, drawer), k): its class's turn
            assert class_of_label.setdefault(label, (cls, k)) == (cls, k)  # one class per label
        assert len(set(class_of_label.values())) == 5  # no class repeated in a task
        assert not set(support) & set(query)  # no query image in the support set
        assert len(set(support)) == 10 and len(set(query)) == 15
        turns_seen |= {k for _, _, k in support}
    assert turns_seen == {0, 1, 2, 3}
    upright = FewShotImages(marked, ways=5, shots=2, query=3, rotations=False, split="all")
    assert upright.classes == CLASSES
    upright_batch = upright.sample(0, 0, range(20))
    assert {k for t in range(20) for _, _, k in marks(upright_batch.support_x[t])} == {0}


def test_rotations_of_real_drawings(omniglot):
    source = FewShotImages(omniglot, ways=5, shots=1, query=15, split="all")
    images = ImageSet(omniglot)
    batch = source.sample(3, 1, range(4))
    assert batch.support_x.shape == (4, 5, 1, 28, 28) and batch.query_x.shape == (4, 75, 1, 28, 28)
    assert batch.query_x.min() == 0 and batch.query_x.max() == 1
    assert batch.query_x.mean() < 0.3  # inverted: mostly background 0, ink 1
    for index in range(4):
        rows, turns, offsets = source._draw(3, 1, index)
        assert offsets is None  # no shift
        for label in range(5):
            stored = images.images(rows[label, :1])[0]
            expected = 1 - np.rot90(stored, turns[label]).transpose(2, 0, 1) / 255
            actual = batch.support_x[index, label].numpy()
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def moved(image: np.ndarray, down: int, right: int) -> np.ndarray:
    """``image [H, W]`` moved ``down`` and ``right`` pixels (negative: up, left), the nearest
    edge pixel filling what it leaves: a per-pixel reference for the sampler's shift."""
    height, width = image.shape
    out = np.empty_like(image)
    for r in range(height):
        for c in range(width):
            out[r, c] = image[min(max(r - down, 0), height - 1), min(max(c - right, 0), width - 1)]
    return out


def test_shift_moves_each_image_and_leaves_the_task_otherwise_unchanged(omniglot):
    plain = FewShotImages(omniglot, ways=5, shots=1, query=3, split="all")
    shifted = FewShotImages(omniglot, ways=5, shots=1, query=3, split="all", shift=3)
    batch, moved_batch = plain.sample(5, 2, range(3)), shifted.sample(5, 2, range(3))
    assert torch.equal(batch.support_y, moved_batch.support_y)
    offsets_seen = set()
    for index in range(3):
        rows, turns, offsets = shifted._draw(5, 2, index)
        plain_rows, plain_turns, _ = plain._draw(5, 2, index)
        assert np.array_equal(rows, plain_rows) and np.array_equal(turns, plain_turns)
        for label in range(5):
            images = [batch.support_x[index, label, 0]] + [
                batch.query_x[index, 3 * label + q, 0] for q in range(3)
            ]
            got = [moved_batch.support_x[index, label, 0]] + [
                moved_batch.query_x[index, 3 * label + q, 0] for q in range(3)
            ]
            for image, actual, (row, col) in zip(images, got, offsets[label], strict=True):
                expected = moved(image.numpy(), 3 - int(row), 3 - int(col))
                np.testing.assert_array_equal(actual.numpy(), expected)
                offsets_seen.add((int(row), int(col)))
    assert len(offsets_seen) > 10 and all(0 <= o <= 6 for pair in offsets_seen for o in pair)
    with pytest.raises(ConfigError, match="shift=14 moves whole 28x28 images"):
        FewShotImages(omniglot, 5, 1, 1, split="all", shift=14)
    with pytest.raises(ValueError, match="shift must be >= 0"):
        FewShotImages(omniglot, 5, 1, 1, split="all", shift=-1)


def test_reflections_add_the_mirrored_classes(omniglot):
    source = FewShotImages(omniglot, ways=5, shots=1, query=2, split="all", reflections=True)
    assert source.classes == 2 * FewShotImages(omniglot, 5, 1, 2, split="all").classes
    images = ImageSet(omniglot)
    batch = source.sample(8, 4, range(40))
    variants_seen = set()
    for index in range(40):
        rows, variants, _ = source._draw(8, 4, index)
        for label in range(5):
            stored = images.images(rows[label, 1:2])[0]  # the first query image
            variant = int(variants[label])
            drawn = np.fliplr(stored) if variant >= 4 else stored
            expected = 1 - np.rot90(drawn, variant % 4).transpose(2, 0, 1) / 255
            actual = batch.query_x[index, 2 * label].numpy()
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
            variants_seen.add(variant)
    assert variants_seen == set(range(8))
    upright = FewShotImages(omniglot, 5, 1, 2, rotations=False, split="all", reflections=True)
    assert {int(v) for i in range(40) for v in upright._draw(8, 4, i)[1]} == {0, 1}


def test_shift_and_reflections_apply_to_meta_training_tasks_only(omniglot):
    task = {"name": "fewshot", "path": str(omniglot), "shift": 2, "reflections": True}
    config = parse_config({"task": task, "model": {"name": "conv4"}})
    training, evaluation = build_task_source(config), build_task_source(config, split="eval")
    assert training.shift == 2 and training.reflections
    assert evaluation.shift == 0 and not evaluation.reflections


def test_split_by_character_is_deterministic_and_disjoint(marked):
    names = ImageSet(marked).class_names
    val = split_classes(names, 0.25, seed=0)
    assert val.sum() == 3 and np.array_equal(split_classes(names, 0.25, seed=0), val)
    order = np.random.default_rng(1).permutation(len(names))
    assert np.array_equal(split_classes([names[i] for i in order], 0.25)[np.argsort(order)], val)
    assert not np.array_equal(split_classes(names, 0.25, seed=1), val)
    val_names = {names[i] for i in np.flatnonzero(val)}

    def characters(split):
        source = FewShotImages(marked, ways=3, shots=1, query=1, split=split, val_fraction=0.25)
        batch = source.sample(0, 0, range(40))
        seen = {cls for t in range(40) for cls, _, _ in marks(batch.support_x[t])}
        return source, {f"alphabet{c % 3}/character{c:03d}" for c in seen}

    train, seen_train = characters("train")
    val_source, seen_val = characters("val")
    assert (train.classes, val_source.classes) == (4 * 9, 4 * 3)
    assert seen_val == val_names and not seen_train & val_names
    assert characters("held_out")[1] == val_names  # a file not marked held out: its val split


def test_held_out_file_evaluates_on_every_class(tmp_path):
    path = synthetic_image_set(tmp_path / "eval.arrow", 5, 4, held_out=True)
    source = FewShotImages(path, ways=5, shots=1, query=1, split="held_out", rotations=False)
    assert source.split == "all" and source.classes == 5


def test_a_task_is_rebuilt_from_its_name_alone(marked):
    source = FewShotImages(marked, ways=4, shots=1, query=2, split="all")
    whole = source.sample(9, 3, range(6))
    part = source.sample(9, 3, [4, 1])
    assert torch.equal(part.support_x[0], whole.support_x[4])
    assert torch.equal(part.query_x[1], whole.query_x[1])
    assert not torch.equal(source.sample(9, 4, [1]).query_x[0], whole.query_x[1])
    assert not torch.equal(source.sample(10, 3, [1]).query_x[0], whole.query_x[1])


def test_same_task_in_another_process(omniglot):
    code = (
        "import sys, torch, distmeta as dm;"
        "b = dm.tasks.FewShotImages(sys.argv[1], 5, 1, 15).sample(11, 2, [0, 7]);"
        "sys.stdout.write(repr((b.support_x * 255).round().int().flatten().tolist()"
        " + (b.query_x * 255).round().int().flatten().tolist()))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(omniglot)], check=True, capture_output=True, text=True
    )
    here = FewShotImages(omniglot, 5, 1, 15).sample(11, 2, [0, 7])
    pixels = [(x * 255).round().int().flatten().tolist() for x in (here.support_x, here.query_x)]
    assert other.stdout == repr(pixels[0] + pixels[1])


def test_pickles_without_pixels_and_maps_the_file(marked, omniglot, tmp_path):
    source = FewShotImages(omniglot, 5, 1, 15)
    expected = source.sample(0, 0, range(3))
    data = pickle.dumps(source)
    assert len(data) < ImageSet(omniglot).path.stat().st_size / 10
    copy = pickle.loads(data)
    assert copy._images is None
    assert torch.equal(copy.sample(0, 0, range(3)).query_x, expected.query_x)
    maps = Path("/proc/self/maps")
    if maps.exists():  # the pixels are read from the mapped file, not from a private copy
        view = copy._images._views[0]
        spans = [
            [int(a, 16) for a in line.split()[0].split("-")]
            for line in maps.read_text().splitlines()
            if line.endswith(str(copy.path))
        ]
        assert any(low <= view.ctypes.data < high for low, high in spans)

    moved = tmp_path / "moved.arrow"
    synthetic_image_set(moved, CLASSES, DRAWERS, content_sha256="1" * 64)
    stale = FewShotImages(moved, 3, 1, 1)
    synthetic_image_set(moved, CLASSES, DRAWERS, content_sha256="2" * 64)
    with pytest.raises(DataError, match="is not the image set this task source was built on"):
        pickle.loads(pickle.dumps(stale)).sample(0, 0, [0])


def test_unequal_classes_and_bad_requests(tmp_path, marked):
    path = synthetic_image_set(tmp_path / "uneven.arrow", 8, [6, 4, 9, 6, 5, 4, 7, 6])
    source = FewShotImages(path, ways=8, shots=2, query=2, rotations=False, split="all")
    for t in range(30):
        for cls, drawer, _ in marks(source.sample(0, 0, [t]).query_x[0]):
            assert drawer < [6, 4, 9, 6, 5, 4, 7, 6][cls]
    with pytest.raises(ConfigError, match=r"shots \+ query = 2 \+ 3 = 5 but the smallest class"):
        FewShotImages(path, ways=2, shots=2, query=3, split="all")
    with pytest.raises(ConfigError, match=r"ways=40 but the train split of .* holds 36 classes"):
        FewShotImages(marked, ways=40, shots=1, query=1, val_fraction=0.25)
    with pytest.raises(ConfigError, match="ways=2 but the val split"):
        FewShotImages(marked, ways=2, shots=1, query=1, split="val", val_fraction=0.0)
    wide = tmp_path / "wide.arrow"
    pixels = np.zeros((4, 4, 6, 1), np.uint8)
    rows = ImageRows(["a"] * 4, ["c0", "c0", "c1", "c1"], [1, 2, 1, 2], ["f"] * 4, pixels)
    write_image_set(wide, rows, **{**BARE, "invert": False, "held_out": False})
    with pytest.raises(ConfigError, match="rotations need square images, .* holds 4x6"):
        FewShotImages(wide, 2, 1, 1, split="all")
    assert FewShotImages(wide, 2, 1, 1, split="all", rotations=False).input_shape == (1, 4, 6)
    with pytest.raises(DataError, match="no prepared image set at"):
        FewShotImages(tmp_path / "missing", 5, 1, 1)


def _config(path, **task):
    return parse_config(
        {
            "seed": 1,
            "task": {
                "name": "fewshot",
                "path": str(path),
                "ways": 3,
                "shots": 1,
                "query": 2,
                **task,
            },
            "model": {"name": "conv4", "hidden": 4},
            "algorithm": {"name": "maml", "inner_lr": 0.4, "inner_steps": 1},
            "train": {"steps": 2, "meta_batch_size": 2, "checkpoint_every": 2, "log_every": 1},
            "eval": {"tasks": 10, "shots": 2, "query": 4},
            "tracking": {"enabled": False},
        }
    )


def test_config_builds_train_and_eval_sources(marked):
    config = _config(marked, val_fraction=0.25)
    train, held = build_task_source(config), build_task_source(config, split="eval")
    assert (train.split, train.shots, train.query, train.classes) == ("train", 1, 2, 36)
    assert (held.split, held.shots, held.query, held.classes) == ("val", 2, 4, 12)
    assert build_task_source(_config(marked, eval_split="all"), split="eval").classes == 48
    with pytest.raises(ConfigError, match=r"task.val_fraction: Input should be less than 1"):
        _config(marked, val_fraction=1.0)
    with pytest.raises(ConfigError, match=r"task.path: Field required"):
        parse_config({"task": {"name": "fewshot"}})


def test_train_then_eval_on_another_prepared_split(omniglot, tmp_path, capsys):
    config = tmp_path / "omniglot.yaml"
    raw = _config(omniglot).model_dump(mode="json")
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    evaluation = omniglot_subset(
        tmp_path / "images_evaluation.zip", ("Tagalog",), "images_evaluation"
    )
    held_out = prepare_omniglot(evaluation, tmp_path / "evaluation").parent
    capsys.readouterr()
    argv = ["eval", str(run), "--json", "--set", f"task.path={held_out}"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tasks"] == 10 and len(result["accuracy"]) == 2
    assert all(0 <= a <= 1 for a in result["accuracy"])
    assert main(["eval", str(run), "--set", "task.ways=500"]) == 2
    assert "ways=500 but the train split" in capsys.readouterr().err


def test_a_run_with_its_head_at_zero_evaluates_on_fewer_ways(omniglot, tmp_path, capsys):
    runs = {}
    for name, zero_init in (("zero-head", ["head.weight", "head.bias"]), ("learned-head", [])):
        raw = _config(omniglot).model_dump(mode="json")
        raw["algorithm"]["zero_init"] = zero_init
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        runs[name] = tmp_path / name
        assert main(["train", str(config), "--run-dir", str(runs[name]), "--no-progress"]) == 0
    trained = load_run(runs["zero-head"])
    assert trained.params["head.weight"].shape[0] == 3
    evaluated = load_run(runs["zero-head"], ["eval.ways=2", "eval.inner_lr=0.2"])
    assert build_task_source(evaluated.config, split="eval").ways == 2
    # The same as the run loaded as if it had been configured with two ways at that rate:
    # the head is rebuilt at zero, every learned parameter kept.
    as_two_ways = load_run(runs["zero-head"], ["task.ways=2", "algorithm.inner_lr=0.2"])
    assert as_two_ways.params["head.weight"].shape[0] == 2
    assert torch.equal(as_two_ways.params["features.0.weight"], trained.params["features.0.weight"])
    torch.testing.assert_close(
        adaptation_curves(evaluated), adaptation_curves(as_two_ways), rtol=0, atol=0
    )
    capsys.readouterr()
    assert main(["eval", str(runs["zero-head"]), "--json", "--set", "eval.ways=2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == 10
    assert main(["eval", str(runs["learned-head"]), "--set", "eval.ways=2"]) == 2
    assert "eval.ways: 2-way evaluation needs the model's output layer" in capsys.readouterr().err


def test_alphabet_split_holds_out_whole_alphabets(omniglot):
    path = omniglot
    train = FewShotImages(path, ways=2, shots=1, query=1, split="train", val_fraction=0.5,
                          split_by="alphabet")  # fmt: skip
    val = FewShotImages(path, ways=2, shots=1, query=1, split="val", val_fraction=0.5,
                        split_by="alphabet")  # fmt: skip
    names = ImageSet(path).class_names
    alphabets = {kind: {names[c].split("/")[0] for c in source._classes}
                 for kind, source in (("train", train), ("val", val))}  # fmt: skip
    assert alphabets["train"] and alphabets["val"]
    assert not alphabets["train"] & alphabets["val"]
