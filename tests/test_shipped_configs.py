"""Every shipped config parses and trains two steps, so that a renamed key cannot ship broken.

The Omniglot configs train on the shared background set, prepared once for the module; the
sinusoid configs are not compiled here (compiling is tested against eager execution in
test_algorithms), and nothing is tracked.
"""

from __future__ import annotations

import math

import pytest
from conftest import REPO
from imagesets import SHARED_ZIP

import distmeta as dm
from distmeta.config import load_config, read_yaml

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """The Omniglot background set, prepared from the shared archive."""
    if not SHARED_ZIP.exists():
        pytest.skip(f"the shared Omniglot archive is not at {SHARED_ZIP}")
    from distmeta.data import prepare_omniglot

    return prepare_omniglot(SHARED_ZIP, tmp_path_factory.mktemp("omniglot"))


def test_every_config_in_the_folder_is_covered():
    assert len(CONFIGS) >= 12


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_a_shipped_config_trains_two_steps(path, request, tmp_path):
    raw = read_yaml(path)
    overrides = [
        "train.steps=2",
        "train.checkpoint_every=1",
        "train.log_every=1",
        "tracking.enabled=false",
        "algorithm.compile=false",
    ]
    if raw.get("task", {}).get("name") == "fewshot":
        overrides.append(f"task.path={request.getfixturevalue('background')}")
    if raw.get("algorithm", {}).get("outer_lr_decay"):
        overrides.append("algorithm.outer_lr_decay.start=1")  # within the two steps
    if raw.get("algorithm", {}).get("name") == "l2l":
        # Trajectories of one short unroll: checkpoints every step fall on trajectory
        # boundaries, and the quadratic's 1,280 coordinates take 5 optimizee steps, not 20.
        overrides += ["algorithm.unroll.length=5", "algorithm.unroll.horizon=5"]
    config = load_config(path, overrides)
    if config.engine.name == "ray":
        request.getfixturevalue("ray_cluster")  # the session's Ray, not one per config
    result = dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    assert result.steps == 2
    assert math.isfinite(result.metrics["loss"])
    assert dm.load_run(tmp_path / "run").step == 2
