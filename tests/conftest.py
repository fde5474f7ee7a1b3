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


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray cluster for the test session (a head node on 127.0.0.1; tests may add nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 4,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "object_store_memory": 256 * 1024 * 1024,
        },
    )
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def raylet_pids(cluster) -> set[int]:
    """PIDs of the raylets of ``cluster``'s nodes (parents of its worker processes)."""
    from ray._private import ray_constants

    pids = set()
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
            pids.add(info.process.pid)
    return pids


def actor_pids(cluster, class_name: str) -> list[int]:
    """PIDs of ``cluster``'s worker processes currently hosting an actor of ``class_name``."""
    parents = raylet_pids(cluster)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if title.startswith(f"ray::{class_name}") and parent in parents:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server (sqlite backend, proxied artifacts) for a test module."""
    from mlflow_service import tracking_server

    with tracking_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


class StopAt:
    """A callback that interrupts training after a given logged step."""

    def __init__(self, step):
        self.step = step

    def on_start(self, *args):
        pass

    def on_metrics(self, record):
        if record["step"] >= self.step:
            raise KeyboardInterrupt

    def on_checkpoint(self, *args):
        pass

    def on_end(self, *args):
        pass


STREAM_BASE = {
    "seed": 0,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.05, "inner_steps": 1, "outer_lr": 0.003},
    "train": {"steps": 20, "meta_batch_size": 4, "checkpoint_every": 20, "log_every": 10},
    "tracking": {"enabled": False},
}
"""A sinusoid experiment small enough to pretrain in seconds for stream tests."""


@pytest.fixture(scope="session")
def omniglot_background(tmp_path_factory):
    """The Omniglot background set, prepared once per session from the shared archive."""
    from imagesets import SHARED_ZIP

    if not SHARED_ZIP.exists():
        pytest.skip(f"the shared Omniglot archive is not at {SHARED_ZIP}")
    from distmeta.data import prepare_omniglot

    return prepare_omniglot(SHARED_ZIP, tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="session")
def stream_runs(tmp_path_factory):
    """``(pretrained, joint)``: run folders of a tiny MAML run and a tiny joint run of
    :data:`STREAM_BASE`, the starting points of stream tests."""
    import distmeta as dm
    from distmeta.config import parse_config

    root = tmp_path_factory.mktemp("stream-runs")
    folders = []
    for name in ("maml", "joint"):
        raw = {**STREAM_BASE, "algorithm": {**STREAM_BASE["algorithm"], "name": name}}
        dm.train(parse_config(raw), run_dir=str(root / name), progress=False)
        folders.append(str(root / name))
    return tuple(folders)


def stream_config(runs, engine=None, **stream):
    """:data:`STREAM_BASE` with a stream section starting from ``runs`` (``stream_runs``) and
    an ``engine`` section."""
    from distmeta.config import parse_config

    pretrained, joint = runs
    section = {"steps": 30, "alpha": 0.9, "pretrained": pretrained, "joint": joint, **stream}
    return parse_config({**STREAM_BASE, "engine": engine or {}, "stream": section})
