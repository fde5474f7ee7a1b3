"""The GPU recipe's CPU-side parts (benchmarks/gpu/): what pack.py packs, what unpack.py
extracts (the image's copy of a distribution where it fits, the packed one where it is
missing or does not fit) and how it fails, and the measurement's configs, comparison, summary
and synthetic images. The whole recipe runs end to end in benchmarks/gpu/cpu_dry_run.sh."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@functools.cache
def _load(name: str):
    """benchmarks/gpu/<name>.py as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", REPO / f"benchmarks/gpu/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


unpack = _load("unpack")

MANIFEST = {
    "roots": {"pydantic": ">=2.6", "numpy": ">=1.24"},
    "image": ["torch", "numpy"],
    "distributions": {
        "pydantic": {
            "version": "2.14.4",
            "packed": True,
            "requires": [["pydantic-core", "==2.50.5"], ["typing-extensions", ">=4.16"]],
        },
        "pydantic-core": {"version": "2.50.5", "packed": True, "requires": []},
        "typing-extensions": {"version": "4.16.0", "packed": True, "requires": []},
        "numpy": {"version": "2.4.6", "packed": False, "requires": []},
    },
}
OLD_PAIR = {"pydantic": [("pydantic-core", "==2.27.0"), ("typing-extensions", ">=4.12")]}


@pytest.mark.parametrize(
    ("image", "requires", "uses"),
    [
        # a bare image: every packed distribution is unpacked
        ({"torch": "2.11", "numpy": "2.5"}, {}, "ppp"),
        # an older pydantic that fits distmeta brings its own core, pinned: both stay
        (
            {"torch": "2.11", "numpy": "2.5", "pydantic": "2.10.0", "pydantic-core": "2.27.0"}
            | {"typing-extensions": "4.15"},
            OLD_PAIR,
            "iii",
        ),
        # a pydantic too old for distmeta: the packed one, with the core it pins and the
        # typing-extensions it needs; the image's core would not fit it
        (
            {"torch": "2.11", "numpy": "2.5", "pydantic": "2.5.0", "pydantic-core": "2.14.0"}
            | {"typing-extensions": "4.15"},
            {"pydantic": [("pydantic-core", "==2.14.0")]},
            "ppp",
        ),
    ],
)
def test_the_image_copy_is_used_where_it_fits_the_requirements_of_what_is_used(
    image, requires, uses
):
    table = unpack.choose(MANIFEST, image.get, lambda name: requires.get(name, []))
    chosen = [table[name]["uses"][0] for name in ("pydantic", "pydantic-core", "typing-extensions")]
    assert "".join(chosen) == uses
    assert table["torch"]["uses"] == table["numpy"]["uses"] == "image"


def test_what_is_neither_in_the_image_nor_packed_is_missing():
    table = unpack.choose(MANIFEST, {"torch": "2.11", "numpy": "1.20"}.get, lambda name: [])
    assert table["numpy"] == {
        "image": "1.20",
        "packed": None,
        "required": ">=1.24",
        "uses": "missing",
    }


# --- unpack.py end to end on a small carry -----------------------------------------------


def _fake_carry(folder, data: bool):
    """A carry holding one packed distribution that no environment has, and maybe data."""
    import json
    import tarfile

    site = folder / "site"
    (site / "distmeta_fake_dist").mkdir(parents=True)
    (site / "distmeta_fake_dist" / "__init__.py").write_text("VALUE = 7\n")
    carry = folder / "carry"
    carry.mkdir()
    with tarfile.open(carry / "site.tar.xz", "w:xz", preset=1) as tar:
        tar.add(site / "distmeta_fake_dist", arcname="distmeta_fake_dist")
    if data:
        (folder / "omniglot").mkdir()
        (folder / "omniglot" / "images_background.arrow").write_bytes(b"x")
        with tarfile.open(carry / "omniglot.tar.xz", "w:xz", preset=1) as tar:
            tar.add(folder / "omniglot", arcname="omniglot")
    manifest = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "roots": {},
        "image": ["torch", "distmeta-not-in-any-image"],
        "distributions": {
            "distmeta-fake-dist": {
                "version": "1.0",
                "packed": True,
                "requires": [],
                "paths": ["distmeta_fake_dist"],
            }
        },
        "site": "site.tar.xz",
        "data": "omniglot.tar.xz" if data else None,
    }
    (carry / "manifest.json").write_text(json.dumps(manifest))
    return carry


def _unpack(carry, out, *extra):
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu/unpack.py"), "--carry", str(carry),
         "--site", str(out / "site"), "--data", str(out / "data"), *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_unpack_extracts_what_the_image_lacks_and_fails_on_what_is_missing(tmp_path):
    carry = _fake_carry(tmp_path, data=True)
    done = _unpack(carry, tmp_path / "a")
    assert done.returncode == 1
    assert "not-in-any-image" in done.stderr.splitlines()[-1]
    assert "the image lacks 2 of 3: distmeta-fake-dist, distmeta-not-in-any-image" in done.stdout
    assert (tmp_path / "a/site/distmeta_fake_dist/__init__.py").read_text() == "VALUE = 7\n"
    assert (tmp_path / "a/data/omniglot/images_background.arrow").exists()

    done = _unpack(carry, tmp_path / "b", "--allow-missing", "distmeta_not_in_any_image")
    assert done.returncode == 0, done.stderr


def test_unpack_without_carried_data_says_the_images_will_be_synthetic(tmp_path):
    carry = _fake_carry(tmp_path, data=False)
    done = _unpack(carry, tmp_path, "--allow-missing", "distmeta-not-in-any-image")
    assert done.returncode == 0, done.stderr
    assert "no data (none carried: the measurement makes synthetic images)" in done.stdout


def test_unpack_refuses_an_interpreter_the_wheels_were_not_built_for(tmp_path):
    carry = _fake_carry(tmp_path, data=False)
    manifest = carry / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"python": "3.', '"python": "2.'))
    done = _unpack(carry, tmp_path)
    assert done.returncode == 1 and "holds wheels for 2." in done.stderr


# --- pack.py: what goes into the archive ---------------------------------------------------


def test_pack_packs_ray_and_its_closure_for_the_target_but_not_what_the_image_has():
    pack = _load("pack")
    roots, found = pack.closure("3.12")
    assert {"ray", "pydantic", "pydantic-core", "pyyaml", "msgpack"} <= set(found)
    assert all(found[name]["packed"] for name in ("ray", "pydantic", "pyyaml"))
    assert not any(found[name]["packed"] for name in pack.IN_IMAGE if name in found)
    assert "torch" not in found  # distmeta's requirement on torch is not followed: in the image
    assert set(roots) <= {"ray", "pydantic", "pyyaml", "numpy", "pyarrow", "pillow"}
    # markers are those of the target: nothing only for older Pythons
    assert "async-timeout" not in found and "exceptiongroup" not in found


# --- ray_gpu.py: the measurement's pure parts ----------------------------------------------


def test_workers_share_one_gpu_in_equal_parts_with_a_cpu_each():
    ray_gpu = _load("ray_gpu")
    for workers, share in ((1, 1.0), (2, 0.5), (4, 0.25)):
        config = ray_gpu.experiment(
            "omniglot20", Path("/data"), False, *ray_gpu.worker_overrides(workers, cuda=True)
        )
        assert config.engine.name == "ray" and config.engine.workers == workers
        assert config.engine.worker_resources.num_gpus == share
        assert config.engine.worker_resources.num_cpus == 1
        assert config.train.meta_batch_size == 32 and config.task.ways == 20
        assert config.algorithm.name == "maml"  # second order


def test_every_measured_config_parses_at_full_and_tiny_sizes():
    ray_gpu = _load("ray_gpu")
    for name in ray_gpu.TASKS:
        for tiny in (False, True):
            config = ray_gpu.experiment(name, Path("/data"), tiny, "engine.name=local")
            assert config.tracking.enabled is False
            if tiny:
                assert config.train.meta_batch_size == 4
            elif name.startswith("omniglot"):
                assert config.train.meta_batch_size == 32
                assert str(config.task.path) == "/data"


def test_compare_reports_equal_parameters_and_the_difference_over_the_update():
    import torch

    ray_gpu = _load("ray_gpu")
    initial = {"w": torch.zeros(4)}
    final = {"w": torch.ones(4)}
    assert ray_gpu.compare(final, final, initial) == {
        "params_bitwise_equal": True,
        "params_max_abs_diff": 0.0,
        "params_diff_over_update": 0.0,
    }
    off = ray_gpu.compare({"w": torch.tensor([1.0, 1.0, 1.0, 1.1])}, final, initial)
    assert not off["params_bitwise_equal"]
    assert off["params_diff_over_update"] == pytest.approx(0.1 / 2, rel=1e-5)


def test_the_summary_has_a_row_per_run_failed_or_skipped_ones_too():
    ray_gpu = _load("ray_gpu")
    entries = [
        {"task": "sinusoid", "mode": "local", "workers": 0, "tasks_per_s": 100.0,
         "execution": "vmap", "peak_mib": 12.0},
        {"task": "sinusoid", "mode": "sync", "workers": 2, "tasks_per_s": 50.0, "vs_local": 0.5,
         "transport": "gloo", "not_compute_share": 0.25, "params_diff_over_update": 1e-7,
         "start_s": 3.0, "placement": [{"peak_mib": 10.0, "nvml_mib": 500.0}] * 2},
        {"task": "omniglot20", "mode": "async", "workers": 4, "skipped": "not started"},
    ]  # fmt: skip
    rows = ray_gpu.summary(entries).splitlines()
    assert len(rows) == 2 + 3
    assert rows[2].startswith("| sinusoid | local | 0 | 100.0 |  | vmap |")
    assert "| 0.50 | gloo | 25.0 % | 1.0e-07 | 10 | 500 | 3.0 |" in rows[3]
    assert "not started" in rows[4]
    assert all(ray_gpu._line(entry) for entry in entries)


def test_synthetic_images_are_a_set_the_fewshot_task_reads(tmp_path):
    from distmeta.data.arrow import ImageSet

    ray_gpu = _load("ray_gpu")
    path = ray_gpu.synthetic_omniglot(tmp_path, classes=45, drawers=20)
    images = ImageSet(path)
    assert len(images) == 45 * 20
    assert images.info.classes == 45 and images.info.source == "synthetic"
