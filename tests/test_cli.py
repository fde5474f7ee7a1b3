"""The command line: train, resume, eval --json, and one clear line for every error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from distmeta.cli import main

TINY = {
    "task": {"shots": 5, "query": 5},
    "model": {"hidden": [8]},
    "train": {"steps": 10, "meta_batch_size": 2, "checkpoint_every": 5, "log_every": 5},
    "eval": {"tasks": 10, "inner_steps": 3},
    "tracking": {"enabled": False},
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _distmeta(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "distmeta.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def test_train_then_eval_json(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    done = _distmeta("train", tiny_config, "--run-dir", run_dir, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert (run_dir / "final.pt").exists() and (run_dir / "metrics.jsonl").exists()
    records = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in records] == ["step 5", "step 10"]
    assert ", tasks_per_s " in records[0]
    evaluated = _distmeta("eval", run_dir, "--json", "--tasks", "7")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["tasks"] == 7 and result["steps"] == [0, 1, 2, 3]
    assert len(result["loss"]) == 4 and "accuracy" not in result
    assert result["diverged"] == [0, 0, 0, 0] and len(result["loss_median"]) == 4


def test_set_overrides_reach_the_run(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(tiny_config),
                "--run-dir",
                str(run_dir),
                "--no-progress",
                "--set",
                "algorithm.inner_lr=0.05",
            ]
        )
        == 0
    )
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["algorithm"]["inner_lr"] == 0.05


def _one_error_line(result, *fragments):
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr  # one message (rich may wrap it once)
    text = " ".join(lines)
    assert text.startswith("error:"), text
    for fragment in fragments:
        assert fragment in text, text


def test_bad_config_is_one_line_naming_the_field(tmp_path, tiny_config):
    result = _distmeta(
        "train", tiny_config, "--set", "algorithm.inner_lr=-1", "--run-dir", tmp_path / "r"
    )
    _one_error_line(result, "algorithm.inner_lr")


def test_missing_run_dir_is_one_line(tmp_path):
    _one_error_line(_distmeta("eval", tmp_path / "nowhere"), "does not exist")


def test_corrupt_checkpoint_is_one_line(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    assert _distmeta("train", tiny_config, "--run-dir", run_dir, "--no-progress").returncode == 0
    (run_dir / "checkpoints" / "step-00000010.pt").write_bytes(b"not a checkpoint")
    result = _distmeta(
        "train", tiny_config, "--run-dir", run_dir, "--resume", "--set", "train.steps=20"
    )
    _one_error_line(result, "step-00000010.pt", "corrupt")
    (run_dir / "final.pt").write_bytes(b"garbage")
    _one_error_line(_distmeta("eval", run_dir), "final.pt")
