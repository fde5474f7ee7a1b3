"""The Ray engine: exact sync steps, async staleness, checkpoints, and surviving failures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from conftest import actor_pids

import distmeta as dm
from distmeta.config import parse_config
from distmeta.engine import build_engine
from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.engine.ray_engine.collective import open_store
from distmeta.engine.ray_engine.messages import SliceResult, merge_results
from distmeta.engine.ray_engine.transport import MEASURED_STEPS, choose_transport, short_steps
from distmeta.engine.rundir import MetricsLog, RunDir
from distmeta.errors import ClusterError, TaskFailedError
from distmeta.experiment import build_experiment, build_task_source
from distmeta.tasks import MetaBatchPlan

BASE = {
    "seed": 3,
    "task": {"shots": 5, "query": 5},
    "model": {"hidden": [16, 16]},
    "train": {"steps": 30, "meta_batch_size": 5, "checkpoint_every": 10, "log_every": 5},
    "tracking": {"enabled": False},
}


def _config(engine=None, **sections):
    raw = {**BASE, **sections, "engine": {"name": "local", **(engine or {})}}
    return parse_config(raw)


def _ray(workers, **extra):
    return {"name": "ray", "workers": workers, "worker_resources": {"num_cpus": 0.5}, **extra}


def _final(run_dir):
    return dm.load_run(run_dir).params


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _close(a, b, rtol=1e-6):
    """Within ``rtol`` of each tensor's largest magnitude."""
    return all((a[k] - b[k]).abs().max() <= rtol * a[k].abs().max() for k in a)


# The per-task loop computes every task alone, so its per-task gradients do not depend on
# how the meta-batch was split; with the exact reduction the engines then agree bit for bit.
LOOP = {"execution": "loop", "inner_steps": 2}
ALGORITHMS = {
    "maml": {"name": "maml"},
    "reptile": {"name": "reptile"},
    "fomaml": {"name": "fomaml"},
    "metasgd": {"name": "maml", "inner_rule": "metasgd"},
    "metasgd-own-rate": {"name": "maml", "inner_rule": "metasgd", "rule_outer_lr": 1e-4},
    # A clip small enough to change the run (the test checks it): the learner actor's clip.
    "maml-clipped": {"name": "maml", "outer_clip_norm": 0.05},
}


class _Hook:
    """Calls ``action`` once, when the given logged step is reached."""

    def __init__(self, step, action):
        self.step, self.action, self.done = step, action, False

    def on_start(self, *args):
        pass

    def on_metrics(self, record):
        if record["step"] >= self.step and not self.done:
            self.done = True
            self.action()

    def on_checkpoint(self, *args):
        pass

    def on_end(self, *args):
        pass


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Local-engine runs the Ray runs must reproduce exactly."""
    root = tmp_path_factory.mktemp("local")
    runs = {}
    for algorithm, chosen in ALGORITHMS.items():
        config = _config(algorithm={**chosen, **LOOP})
        dm.train(config, run_dir=str(root / algorithm), progress=False)
        runs[algorithm] = _final(root / algorithm)
    return runs


def test_slices_cover_the_meta_batch_in_order():
    assert MetaBatchPlan(0, 25).slices(2) == [(0, 12), (12, 25)]
    assert MetaBatchPlan(0, 3).slices(5) == [(0, 1), (1, 2), (2, 3)]
    assert MetaBatchPlan(0, 8).slices(1) == [(0, 8)]


@pytest.mark.parametrize(
    ("algorithm", "workers", "engine"),
    [
        ("maml", 1, {}),
        ("maml", 2, {}),
        ("maml", 2, {"transport": "tasks"}),
        ("maml", 3, {"transport": "tasks", "reduction": "tree"}),
        ("reptile", 1, {}),
        ("reptile", 2, {}),
        ("reptile", 2, {"transport": "tasks"}),
        ("fomaml", 2, {}),
        ("metasgd", 2, {}),
        ("metasgd-own-rate", 2, {}),
        ("maml-clipped", 2, {}),
    ],
)
def test_sync_ray_equals_local_bit_for_bit(
    ray_cluster, reference_runs, tmp_path, algorithm, workers, engine
):
    """Every algorithm and inner rule (a learned rule at an outer rate of its own too, and a
    clipped meta-gradient), every transport and the reduction tree (three workers: two levels
    of merges) give the local engine's parameters, bit for bit."""
    if algorithm == "maml-clipped":
        assert not _same(reference_runs["maml"], reference_runs["maml-clipped"])
    config = _config(_ray(workers, **engine), algorithm={**ALGORITHMS[algorithm], **LOOP})
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    assert _same(reference_runs[algorithm], _final(tmp_path / "run"))


@pytest.mark.parametrize(
    ("engine", "parameters", "tree", "transport"),
    [
        ({}, 1_761, False, "measure"),
        ({}, 2_000_000, False, "tasks"),
        ({}, 1_761, True, "tasks"),
        ({"mode": "async"}, 1_761, False, "tasks"),
        ({"transport": "tasks"}, 1_761, False, "tasks"),
        ({"transport": "collective"}, 2_000_000, False, "collective"),
    ],
)
def test_how_sync_steps_reach_the_actors(engine, parameters, tree, transport):
    config = _config(_ray(2, **engine)).engine
    assert choose_transport(config, parameters, tree) == transport


def test_only_short_steps_move_to_a_gloo_group():
    assert short_steps([0.001] * 19 + [2.0])
    assert not short_steps([0.6] * 20)


@pytest.mark.parametrize(("transport", "grouped"), [("auto", True), ("tasks", False)])
def test_short_sync_steps_run_over_one_gloo_group(ray_cluster, tmp_path, transport, grouped):
    """``auto`` times the first steps as ordinary calls; these take a millisecond, so the
    learner runs the rest over a gloo group, formed once for the run."""
    config = _config(_ray(2, transport=transport), algorithm={"name": "maml", **LOOP})
    engine = build_engine(config, RunDir(tmp_path / "run"))
    try:
        assert len(list(engine.run(0, MEASURED_STEPS + 2))) == MEASURED_STEPS + 2
        assert engine.transport == ("collective" if grouped else "tasks")
        generation = engine._generation
        assert len(list(engine.run(MEASURED_STEPS + 2, MEASURED_STEPS + 5))) == 3
        assert engine._generation == generation  # the next segment reuses the group
    finally:
        engine.close()


def test_the_gloo_rendezvous_listens_on_the_ray_address_only(ray_cluster):
    """torch's own TCPStore would listen on every interface; 127.0.0.2 is loopback too, so
    a store listening everywhere would accept there."""
    store, address = open_store(world=2, generation=1, timeout_s=5)
    assert address.host == "127.0.0.1"
    socket.create_connection(("127.0.0.1", address.port), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", address.port), timeout=5)
    del store


def test_merging_refuses_slices_that_do_not_fit_together():
    def part(start, stop, step=0):
        zeros = np.zeros(3)
        return SliceResult(step, start, stop, step, zeros, zeros, {"loss": 1.0}, 0.1)

    assert merge_results([part(2, 5), part(0, 2)]).count == 5
    with pytest.raises(ValueError, match="not adjacent"):
        merge_results([part(0, 2), part(3, 5)])
    with pytest.raises(ValueError, match="not adjacent"):
        merge_results([part(0, 2), part(2, 4, step=1)])


def test_resume_from_a_ray_checkpoint_on_either_engine(ray_cluster, reference_runs, tmp_path):
    cut = _config(_ray(2), algorithm={"name": "maml", **LOOP}, train={**BASE["train"], "steps": 20})
    dm.train(cut, run_dir=str(tmp_path / "a"), progress=False)
    dm.train(cut, run_dir=str(tmp_path / "b"), progress=False)
    whole_ray = _config(_ray(2), algorithm={"name": "maml", **LOOP})
    whole_local = _config(algorithm={"name": "maml", **LOOP})
    dm.train(whole_ray, run_dir=str(tmp_path / "a"), resume=True, progress=False)
    dm.train(whole_local, run_dir=str(tmp_path / "b"), resume=True, progress=False)
    assert _same(reference_runs["maml"], _final(tmp_path / "a"))
    assert _same(reference_runs["maml"], _final(tmp_path / "b"))


# Each fault meets every way a sync step can go: ordinary actor calls, and a gloo group whose
# peer dies or whose worker reports a failed slice (which hands over to ordinary calls).
TRANSPORTS = pytest.mark.parametrize("transport", ["tasks", "collective"])


@TRANSPORTS
def test_sigkill_of_a_worker_mid_run_gives_the_unfaulted_parameters(
    ray_cluster, reference_runs, tmp_path, transport
):
    killed = []

    def kill_a_worker():
        pids = actor_pids(ray_cluster, "TaskWorker")
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    config = _config(_ray(2, transport=transport), algorithm={"name": "maml", **LOOP})
    dm.train(
        config, run_dir=str(tmp_path / "run"), callbacks=[_Hook(15, kill_a_worker)], progress=False
    )
    assert killed
    assert _same(reference_runs["maml"], _final(tmp_path / "run"))


@TRANSPORTS
def test_a_dead_learner_is_restored_from_the_last_checkpoint(
    ray_cluster, reference_runs, tmp_path, transport
):
    def kill_the_learner():
        pids = actor_pids(ray_cluster, "LearnerActor")
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.5)  # let Ray notice before the next step is submitted

    config = _config(_ray(2, transport=transport), algorithm={"name": "maml", **LOOP})
    dm.train(
        config,
        run_dir=str(tmp_path / "run"),
        callbacks=[_Hook(15, kill_the_learner)],
        progress=False,
    )
    assert _same(reference_runs["maml"], _final(tmp_path / "run"))
    steps = [r["step"] for r in MetricsLog.read(RunDir(tmp_path / "run"))]
    assert steps == [5, 10, 15, 20, 25, 30]


@TRANSPORTS
def test_a_task_that_keeps_failing_fails_the_run_naming_it(ray_cluster, tmp_path, transport):
    # Amplitudes near float32's limit make every task's loss infinite.
    config = _config(
        _ray(2, max_task_retries=1, transport=transport),
        task={"shots": 5, "query": 5, "amplitude": [1e37, 3e38]},
    )
    with pytest.raises(TaskFailedError, match=r"\(3, 0, \d+\).*not finite"):
        dm.train(config, run_dir=str(tmp_path / "run"), progress=False)


def test_async_mode_converges_and_reports_staleness(ray_cluster, tmp_path):
    config = _config(
        _ray(2, mode="async", max_staleness=2),
        train={"steps": 400, "meta_batch_size": 10, "checkpoint_every": 200, "log_every": 50},
        algorithm={"name": "maml", "outer_lr": 0.003},
        eval={"tasks": 200, "query": 50},
    )
    result = dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    run = dm.load_run(tmp_path / "run")
    untrained = build_experiment(run.config).algorithm  # initialisation from the seed
    curve = untrained.adaptation_curve(untrained.init_params(), _eval_tasks(run), 1)
    trained = dm.evaluate(run, steps=1).loss[1]
    assert trained < 0.8 * curve[:, 1, 0].mean().item()
    for record in result.history:
        assert {"staleness", "staleness_max", "rejected_count"} <= record.keys()
        assert 0 <= record["staleness"] <= record["staleness_max"] <= 2
    assert any(record["staleness_max"] >= 1 for record in result.history)


def _eval_tasks(run):
    source = build_task_source(run.config, split="eval")
    return source.sample(run.config.seed + 1, 0, range(200))


def test_async_results_older_than_the_bound_are_never_applied(ray_cluster, tmp_path):
    """With ``max_staleness: 0`` every applied result was computed on the learner's current
    parameters. Whether any result arrives stale at all depends on timing (a CI run on an idle
    machine saw none in 40 steps), so the rejection itself is tested where it is decided,
    with the staleness forced: test_learner_damps_and_rejects_stale_results."""
    config = _config(
        _ray(2, mode="async", max_staleness=0),
        train={"steps": 40, "meta_batch_size": 5, "checkpoint_every": 40, "log_every": 10},
    )
    result = dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    assert result.steps == 40
    assert all(r["staleness_max"] == 0 for r in result.history)


def test_learner_damps_and_rejects_stale_results():
    layout = ParamLayout(("w",), ((3,),))
    learner = Learner(layout, torch.zeros(3), "sgd", lr=1.0)
    assert learner.apply_stale(torch.ones(3), read_version=0, max_staleness=1).accepted
    outcome = learner.apply_stale(torch.ones(3), read_version=0, max_staleness=1)
    assert outcome.accepted and outcome.staleness == 1
    torch.testing.assert_close(learner.theta, torch.full((3,), -1.5))
    outcome = learner.apply_stale(torch.ones(3), read_version=0, max_staleness=1)
    assert not outcome.accepted and outcome.staleness == 2
    assert learner.version == 2


def test_without_an_address_a_new_local_ray_starts_even_after_a_dead_ray_start():
    """`ray start` leaves its address in <ray temp>/ray/ray_current_cluster; when that head has
    died, Ray's own default would wait for it forever. distmeta starts its own instance."""
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a limit
    try:
        Path(temp, "ray").mkdir()
        Path(temp, "ray", "ray_current_cluster").write_text("127.0.0.1:1\n")
        script = (
            "import ray\n"
            "from distmeta.config import EngineConfig\n"
            "from distmeta.engine.ray_engine.cluster import RayConnection\n"
            "connection = RayConnection(EngineConfig(name='ray'))\n"
            "print('started', ray.get(ray.put(7)))\n"
            "connection.close()\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = temp
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "started 7" in done.stdout
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_more_workers_than_a_local_ray_can_ever_hold_fail_at_once_in_one_line(tmp_path):
    """A local Ray that distmeta starts never grows: 64 one-CPU workers on a machine of a few
    cores fail before any worker starts, naming the fields and what the cluster has."""
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a limit
    try:
        (tmp_path / "c.yaml").write_text("task: {shots: 5, query: 5}\nmodel: {hidden: [8]}\n")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = temp
        command = [
            *(sys.executable, "-m", "distmeta.cli", "train", "c.yaml", "--no-progress"),
            *("--set", "engine.name=ray", "--set", "engine.workers=64"),
            *("--set", "tracking.enabled=false", "--run-dir", str(tmp_path / "run")),
        ]
        began = time.monotonic()
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("error: engine.workers: 64 workers of engine.worker_resources")
        assert "CPU" in lines[0] and "lower engine.workers" in lines[0]
        assert time.monotonic() - began < 60  # not the 300 s start timeout
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_workers_a_joined_cluster_cannot_place_fail_after_the_step_timeout(ray_cluster, tmp_path):
    """The session's cluster has no GPU: workers that each ask for one never start, and after
    engine.step_timeout_s the run fails naming the request and what the cluster has."""
    gpus = {"worker_resources": {"num_cpus": 0.5, "num_gpus": 1}, "step_timeout_s": 3}
    config = _config(_ray(2, **gpus))
    with pytest.raises(ClusterError) as raised:
        dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    message = str(raised.value)
    assert "engine.workers: 2 workers of engine.worker_resources (0.5 CPU, 1 GPU each)" in message
    assert "0 GPU" in message and "holds 0 such workers" in message


def test_workers_run_their_tasks_as_the_local_engine_would_on_their_device(ray_cluster, tmp_path):
    """A worker builds its algorithm from the config as the local engine does, so it runs
    its tasks as the local engine would on the worker's device (``execution: auto``: vmap
    for this MLP on a CPU; on CUDA, what ``choose_execution`` gives there) and says so in
    the pool's placement; a worker on a CPU has no GPU memory to report."""
    config = _config(_ray(2))
    local = build_experiment(config, torch.device("cpu")).algorithm
    engine = build_engine(config, RunDir(tmp_path / "run"))
    try:
        chosen = [entry["execution"] for entry in engine.pool.placement]
        assert chosen == [local.resolved_execution(torch.device("cpu"))] * 2 == ["vmap"] * 2
        memory = [worker.device_memory.remote() for worker in engine.pool.workers]
        assert ray.get(memory) == [None, None]
    finally:
        engine.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch sees a GPU")
def test_a_worker_asking_for_a_gpu_torch_cannot_see_refuses_to_start():
    from distmeta.config import config_to_dict
    from distmeta.engine.ray_engine import TaskWorker

    config = _config(_ray(1, worker_resources={"num_cpus": 1, "num_gpus": 0.5}))
    with pytest.raises(ClusterError, match=r"^engine.worker_resources: num_gpus 0.5, but torch"):
        TaskWorker(config_to_dict(config), 0)
