"""The Ray engine across nodes: placement, and a worker node removed mid-run."""

from __future__ import annotations

import pytest
import torch

import distmeta as dm
from distmeta.config import WorkerResources, parse_config
from distmeta.engine.ray_engine import RayEngine
from distmeta.engine.rundir import RunDir
from distmeta.errors import ClusterError

RESOURCE = "distmeta_test_node"


def _config(**train):
    return parse_config(
        {
            "seed": 5,
            "task": {"shots": 5, "query": 5},
            "model": {"hidden": [16, 16]},
            "algorithm": {"execution": "loop"},  # per-task gradients independent of slicing
            "train": {
                "steps": 30,
                "meta_batch_size": 6,
                "checkpoint_every": 10,
                "log_every": 5,
                **train,
            },
            "tracking": {"enabled": False},
            "engine": {
                "name": "ray",
                "workers": 2,
                "worker_resources": {"num_cpus": 0.5, "resources": {RESOURCE: 1}},
            },
        }
    )


@pytest.fixture
def worker_nodes(ray_cluster):
    """Three extra nodes that alone can host task workers (one worker each)."""
    nodes = [ray_cluster.add_node(num_cpus=1, resources={RESOURCE: 1}) for _ in range(3)]
    ray_cluster.wait_for_nodes()
    yield nodes
    for node in nodes:
        if node in ray_cluster.worker_nodes:
            ray_cluster.remove_node(node)


def test_workers_are_placed_on_distinct_nodes(worker_nodes, tmp_path):
    engine = RayEngine(_config(), RunDir(tmp_path / "run"))
    try:
        placed = {entry["node"] for entry in engine.pool.placement}
        assert len(placed) == 2
        assert placed <= {node.node_id for node in worker_nodes}
    finally:
        engine.close()


def test_removing_a_worker_node_mid_run_does_not_stop_it(ray_cluster, worker_nodes, tmp_path):
    local = _config().model_copy(
        update={"engine": _config().engine.model_copy(update={"name": "local"})}
    )
    dm.train(local, run_dir=str(tmp_path / "local"), progress=False)

    removed = []

    class RemoveANode:
        def on_start(self, *args):
            pass

        def on_metrics(self, record):
            if record["step"] == 15 and not removed:
                busy = [n for n in worker_nodes if _hosts_a_worker(n)]
                ray_cluster.remove_node(busy[0])
                removed.append(busy[0])

        def on_checkpoint(self, *args):
            pass

        def on_end(self, *args):
            pass

    dm.train(_config(), run_dir=str(tmp_path / "ray"), callbacks=[RemoveANode()], progress=False)
    assert len(removed) == 1
    expected, actual = dm.load_run(tmp_path / "local").params, dm.load_run(tmp_path / "ray").params
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def _hosts_a_worker(node) -> bool:
    from conftest import actor_pids

    class _One:
        head_node = node
        worker_nodes = ()

    return bool(actor_pids(_One, "TaskWorker"))


def test_inside_a_placement_group_workers_use_its_bundles(ray_cluster, worker_nodes, tmp_path):
    """As in a Ray Tune trial: the trial's group holds every unit of the resource the workers
    need, so the run only finishes if they take the group's bundles."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([{"CPU": 0.5}] + [{"CPU": 0.5, RESOURCE: 1}] * 3)
    ray.get(group.ready(), timeout=60)
    config = _config(steps=6).model_copy(
        update={"engine": _config().engine.model_copy(update={"step_timeout_s": 60.0})}
    )

    @ray.remote(num_cpus=0.5)
    def trial(run_dir):
        return dm.train(config, run_dir=run_dir, progress=False).steps

    try:
        strategy = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
        steps = ray.get(trial.options(scheduling_strategy=strategy).remote(str(tmp_path / "r")))
        assert steps == 6
    finally:
        remove_placement_group(group)


def test_a_step_that_waits_past_the_timeout_fails_with_a_cluster_error(
    ray_cluster, worker_nodes, tmp_path
):
    """Every node that can host a worker leaves mid-run: the restarted workers can never be
    placed, and the step fails after engine.step_timeout_s naming the silent workers."""
    config = _config().model_copy(
        update={"engine": _config().engine.model_copy(update={"step_timeout_s": 20.0})}
    )

    class RemoveEveryWorkerNode:
        def on_start(self, *args):
            pass

        def on_metrics(self, record):
            if record["step"] == 10:
                for node in worker_nodes:
                    if node in ray_cluster.worker_nodes:
                        ray_cluster.remove_node(node)

        def on_checkpoint(self, *args):
            pass

        def on_end(self, *args):
            pass

    with pytest.raises(
        ClusterError, match=r"waited 20 s \(engine.step_timeout_s\); workers \[0, 1\]"
    ):
        dm.train(
            config,
            run_dir=str(tmp_path / "run"),
            callbacks=[RemoveEveryWorkerNode()],
            progress=False,
        )


def test_a_worker_on_a_gpu_node_whose_torch_sees_no_gpu_fails_the_run_in_one_line(
    ray_cluster, tmp_path
):
    """The node declares a GPU, so Ray places the worker there; torch in it (a CPU build)
    sees none, and the worker's refusal reaches the driver as one line naming the field."""
    node = ray_cluster.add_node(num_cpus=1, num_gpus=1)
    ray_cluster.wait_for_nodes()
    try:
        gpu = WorkerResources(num_cpus=0.5, num_gpus=1)
        config = _config().model_copy(
            update={
                "engine": _config().engine.model_copy(
                    update={"workers": 1, "worker_resources": gpu, "step_timeout_s": 60.0}
                )
            }
        )
        with pytest.raises(ClusterError) as raised:
            dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
        message = str(raised.value)
        assert message.startswith("a task worker could not start: engine.worker_resources: ")
        assert "num_gpus 1, but torch in the task worker sees no CUDA device" in message
        assert "\n" not in message
    finally:
        ray_cluster.remove_node(node)
