"""Every shipped config parses and trains two steps, so that a renamed key cannot ship broken.

The Omniglot configs train on the shared background set, prepared once for the session; the
sinusoid configs are not compiled here (compiling is tested against eager execution in
test_algorithms), and nothing is tracked. The stream configs also stream a few steps from
their two starting points, trained two steps each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO

import distmeta as dm
from distmeta.cli import main
from distmeta.config import load_config, read_yaml

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
STREAMS = [path for path in CONFIGS if "stream" in read_yaml(path)]


def test_every_config_in_the_folder_is_covered():
    assert len(CONFIGS) >= 12


def _cheap(path: Path, request: pytest.FixtureRequest) -> list[str]:
    """Overrides that make ``path`` train two steps here, on the shared Omniglot set if it
    needs one, untracked and uncompiled."""
    raw = read_yaml(path)
    overrides = [
        "train.steps=2",
        "train.checkpoint_every=1",
        "train.log_every=1",
        "tracking.enabled=false",
        "algorithm.compile=false",
    ]
    if raw.get("task", {}).get("name") == "fewshot":
        overrides.append(f"task.path={request.getfixturevalue('omniglot_background')}")
    if raw.get("algorithm", {}).get("outer_lr_decay"):
        overrides.append("algorithm.outer_lr_decay.start=1")  # within the two steps
    if raw.get("algorithm", {}).get("name") == "l2l":
        # Trajectories of one short unroll: checkpoints every step fall on trajectory
        # boundaries, and the quadratic's 1,280 coordinates take 5 optimizee steps, not 20.
        overrides += ["algorithm.unroll.length=5", "algorithm.unroll.horizon=5"]
    return overrides


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_a_shipped_config_trains_two_steps(path, request, tmp_path):
    config = load_config(path, _cheap(path, request))
    if config.engine.name == "ray":
        request.getfixturevalue("ray_cluster")  # the session's Ray, not one per config
    result = dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    assert result.steps == 2
    assert math.isfinite(result.metrics["loss"])
    assert dm.load_run(tmp_path / "run").step == 2


def test_every_kind_of_stream_has_a_shipped_config():
    assert {read_yaml(path)["stream"]["name"] for path in STREAMS} == {
        "sinusoid",
        "pendulum",
        "images",
    }


@pytest.mark.parametrize("path", STREAMS, ids=[path.stem for path in STREAMS])
def test_a_shipped_stream_config_streams_a_few_steps(path, request, tmp_path, capsys):
    """As its header says: train the meta-learned and the joint starting points from the same
    file (two steps here), then ``distmeta stream --json`` (four steps here)."""
    overrides = _cheap(path, request)
    starts = {}
    for name, extra in (("pretrained", []), ("joint", ["algorithm.name=joint"])):
        starts[name] = tmp_path / name
        dm.train(load_config(path, overrides + extra), run_dir=str(starts[name]), progress=False)
    streaming = [*overrides, "stream.steps=4", *(f"stream.{k}={v}" for k, v in starts.items())]
    sets = [part for override in streaming for part in ("--set", override)]
    run_dir = str(tmp_path / "stream")
    assert main(["stream", str(path), "--json", "--no-progress", "--run-dir", run_dir, *sets]) == 0
    entry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(entry) == {"method", "baselines", "oracle"}
    assert entry["method"]["name"] == read_yaml(path)["stream"]["method"]
    for summary in [entry["method"], entry["oracle"], *entry["baselines"].values()]:
        assert math.isfinite(summary["mean_loss"]) and summary["modes"]
        assert "recovery_steps" in summary
        assert ("mean_accuracy" in summary) == (read_yaml(path)["stream"]["name"] == "images")
