"""Per-step call overhead of a sync step's shape: learner -> 2 workers -> learner, as ordinary
actor calls from the driver, as actor calls the learner makes itself (the driver waits once
for all steps), and as a Ray Compiled Graph, with ``--work`` seconds of busy compute per worker.

    python benchmarks/compiled_graph_latency.py --work 0 --steps 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
from ray.dag import InputNode


@ray.remote(num_cpus=0.5)
class Worker:
    def __init__(self, work: float):
        self.work = work

    def compute(self, params: np.ndarray, step: int) -> np.ndarray:
        began = time.perf_counter()
        while time.perf_counter() - began < self.work:
            pass
        return params * 0.5


@ray.remote(num_cpus=0)
class Learner:
    def __init__(self, size: int):
        self.theta = np.zeros(size, dtype=np.float32)

    def params(self, step: int) -> np.ndarray:
        return self.theta

    def apply(self, *grads: np.ndarray) -> int:
        self.theta = self.theta - 0.001 * sum(grads)
        return 1

    def drive(self, workers: list, steps: int) -> int:
        """The learner calls the workers itself: the driver waits once for all the steps."""
        for step in range(steps):
            self.apply(*ray.get([w.compute.remote(self.theta, step) for w in workers]))
        return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=float, default=0.0, help="busy seconds per worker")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1761, help="parameters (sinusoid MLP)")
    args = parser.parse_args()
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2)
    workers = [Worker.remote(args.work) for _ in range(2)]
    learner = Learner.remote(args.size)
    ray.get([w.compute.remote(np.zeros(3), 0) for w in workers])

    began = time.perf_counter()
    for step in range(args.steps):
        params = learner.params.remote(step)
        ray.get(learner.apply.remote(*[w.compute.remote(params, step) for w in workers]))
    calls = (time.perf_counter() - began) / args.steps
    print(f"actor calls     {1e3 * calls:.3f} ms per step", flush=True)

    ray.get(learner.drive.remote(workers, 10))
    began = time.perf_counter()
    ray.get(learner.drive.remote(workers, args.steps))
    driven = (time.perf_counter() - began) / args.steps
    print(f"learner-driven  {1e3 * driven:.3f} ms per step", flush=True)

    with InputNode() as step:
        params = learner.params.bind(step)
        out = learner.apply.bind(*[w.compute.bind(params, step) for w in workers])
    graph = out.experimental_compile()
    for step in range(10):
        ray.get(graph.execute(step))
    began = time.perf_counter()
    for step in range(args.steps):
        ray.get(graph.execute(step))
    compiled = (time.perf_counter() - began) / args.steps
    print(f"compiled graph  {1e3 * compiled:.3f} ms per step", flush=True)
    graph.teardown()
    ray.shutdown()


if __name__ == "__main__":
    main()
