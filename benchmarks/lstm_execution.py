"""How L2L runs the trajectories of a step on a CPU: one after another (each operation on
torch's threads), on task threads (a trajectory per thread, single-threaded operations: the
default), or vectorised with vmap. Median seconds per meta-training step of the shipped
learned-optimizer configs, each way timed in turn in this one process (after 2 warm-up
steps).

    python benchmarks/lstm_execution.py --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from distmeta.config import load_config
from distmeta.experiment import build_experiment

WAYS = {
    "one at a time, threaded operations": ["algorithm.execution=loop", "algorithm.task_threads=1"],
    "task threads": ["algorithm.execution=loop", "algorithm.task_threads=auto"],
    "vmap": ["algorithm.execution=vmap"],
}


def seconds_per_step(config: str, overrides: list[str], steps: int) -> float:
    experiment = build_experiment(load_config(config, overrides))
    params = experiment.algorithm.init_params()
    times = []
    for step in range(steps + 2):
        began = time.perf_counter()
        request = experiment.plan.batch(experiment.source, step)
        experiment.algorithm.meta_gradient_sum(params, request)
        times.append(time.perf_counter() - began)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["configs/lstm_quadratic.yaml", "configs/lstm_sinusoid.yaml"],
    )
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for config in args.configs:
        for way, overrides in WAYS.items():
            seconds = seconds_per_step(config, ["tracking.enabled=false", *overrides], args.steps)
            print(f"{config}: {way}: {seconds * 1000:.0f} ms per step", flush=True)


if __name__ == "__main__":
    main()
