"""Shared fixtures: small experiments and an offline environment for Ray and MLflow."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = REPO.parent / "shared" / "offline-env.sh"


def _load_offline_env() -> None:
    """Apply ../shared/offline-env.sh to this process (keeps Ray and MLflow on loopback)."""
    if not OFFLINE_ENV.exists():
        return
    dump = subprocess.run(
        ["bash", "-c", f". '{OFFLINE_ENV}' && env -0"], check=True, capture_output=True
    ).stdout.decode()
    for entry in dump.split("\0"):
        key, sep, value = entry.partition("=")
        if sep and key.startswith(("RAY_", "MLFLOW_", "DO_NOT_TRACK")):
            os.environ[key] = value


_load_offline_env()


@pytest.fixture
def tiny_sinusoid_config():
    """A sinusoid MAML experiment small enough for a unit test."""
    from distmeta.config import parse_config

    return parse_config(
        {
            "seed": 3,
            "task": {"name": "sinusoid", "shots": 5, "query": 5},
            "model": {"name": "mlp", "hidden": [16, 16]},
            "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "outer_lr": 0.001},
            "train": {"steps": 20, "meta_batch_size": 4, "checkpoint_every": 5, "log_every": 5},
            "eval": {"tasks": 20, "query": 20},
            "tracking": {"enabled": False},
        }
    )
