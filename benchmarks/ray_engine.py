"""Ray engine benchmarks (issue 3 targets), each measured in one process run.

``overhead``  Omniglot Conv4, 5-way 1-shot, 15 queries per class, meta-batch 32, 2 workers with
              one CPU each: per sync step, the share of wall time that is not the slowest
              worker's inner-loop compute (scheduling, object store, learner). Target <= 5%.
``scaling``   The same network: tasks/s of 2 workers x 1 thread against 1 worker x 1 thread,
              alternated (1, 2, 1, 2 ...); parallel efficiency = tps(2) / (2 tps(1)). Target >= 85%.
``small``     The sinusoid paper config (70,000 steps of a 40-40 MLP): wall time of the local
              engine and of the ray engine with 2 workers, its sync steps as ordinary actor
              calls (``engine.transport=tasks``) and over a gloo group (``collective``).
              Target: ray <= 2x local.
``latency``   The same config: wall time per sync step of each of those after ``--warmup``
              steps (which include ``torch.compile``), with the slowest worker's compute:
              what the ``small`` target is made of.

Usage::

    python benchmarks/ray_engine.py overhead --data data/omniglot --steps 40
    python benchmarks/ray_engine.py scaling --data data/omniglot --steps 20 --rounds 2
    python benchmarks/ray_engine.py small --steps 70000
    python benchmarks/ray_engine.py latency --warmup 1000 --steps 5000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import ray
import yaml

import distmeta as dm
from distmeta.config import apply_overrides, parse_config
from distmeta.engine import build_engine
from distmeta.engine.ray_engine import RayEngine
from distmeta.engine.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
_RAY = ["engine.name=ray", "engine.workers=2", "engine.worker_resources.num_cpus=1"]
SINUSOID_ENGINES = {
    "local": ["engine.name=local"],
    "ray-tasks": [*_RAY, "engine.transport=tasks"],
    "ray-collective": [*_RAY, "engine.transport=collective"],
}
"""What ``small`` and ``latency`` compare: overrides of configs/sinusoid_maml.yaml."""
PAPER_SETTING = [
    "algorithm.inner_steps=1",
    "algorithm.step_loss_weights=null",
    "algorithm.outer_lr_decay=null",
    "train.meta_batch_size=25",
]
"""The paper's one-step MAML, what the figures in BENCHMARKS.md measured (the shipped config
has taken two inner steps on 50 tasks since 2026-12-04)."""


def sinusoid_config(engine: str, *overrides: str) -> dm.ExperimentConfig:
    raw = yaml.safe_load((REPO / "configs" / "sinusoid_maml.yaml").read_text())
    extra = [*PAPER_SETTING, *SINUSOID_ENGINES[engine], *overrides, "tracking.enabled=false"]
    return parse_config(apply_overrides(raw, extra))


def omniglot_config(
    data: str, workers: int, threads: int = 1, transport: str = "auto"
) -> dm.ExperimentConfig:
    return parse_config(
        {
            "task": {"name": "fewshot", "path": data, "ways": 5, "shots": 1, "query": 15},
            "model": {"name": "conv4", "hidden": 64},
            "algorithm": {"name": "maml", "inner_lr": 0.4, "inner_steps": 1},
            "train": {"steps": 10_000, "meta_batch_size": 32},
            "engine": {
                "name": "ray",
                "workers": workers,
                "worker_resources": {"num_cpus": threads},
                "transport": transport,
            },
            "tracking": {"enabled": False},
        }
    )


def timed_steps(config: dm.ExperimentConfig, steps: int, warmup: int) -> list[dict[str, float]]:
    """Per-step wall time and slowest-worker compute time of ``steps`` sync steps."""
    with tempfile.TemporaryDirectory() as folder:
        engine = RayEngine(config, RunDir(folder))
        try:
            records = []
            last = time.perf_counter()
            for index, metrics in enumerate(engine.run(0, warmup + steps)):
                now = time.perf_counter()
                if index >= warmup:
                    records.append({"wall": now - last, "compute": metrics["worker_seconds"]})
                last = now
            return records
        finally:
            engine.close()


def overhead(args: argparse.Namespace) -> None:
    config = omniglot_config(args.data, workers=2, transport=args.transport)
    records = timed_steps(config, args.steps, args.warmup)
    walls = [r["wall"] for r in records]
    shares = [(r["wall"] - r["compute"]) / r["wall"] for r in records]
    total_share = 1 - sum(r["compute"] for r in records) / sum(walls)
    print(f"steps measured: {len(records)} (after {args.warmup} warm-up)")
    print(f"step wall time: median {statistics.median(walls):.3f} s")
    print(
        f"slowest worker compute: median {statistics.median(r['compute'] for r in records):.3f} s"
    )
    print(f"overhead share per step: median {100 * statistics.median(shares):.2f}%")
    print(f"overhead share over all steps: {100 * total_share:.2f}%")


def scaling(args: argparse.Namespace) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in (1, 2):
            config = omniglot_config(args.data, workers, transport=args.transport)
            records = timed_steps(config, args.steps, args.warmup)
            rates[workers].append(32 * len(records) / sum(r["wall"] for r in records))
            print(f"{workers} worker(s): {rates[workers][-1]:.2f} tasks/s", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median tasks/s: 1 worker {one:.2f}, 2 workers {two:.2f}")
    print(f"parallel efficiency: {100 * two / (2 * one):.1f}%")


def small(args: argparse.Namespace) -> None:
    walls = {}
    for name in args.engines:
        config = sinusoid_config(name, f"train.steps={args.steps}")
        with tempfile.TemporaryDirectory() as folder:
            began = time.perf_counter()
            result = dm.train(config, run_dir=folder, progress=False)
            walls[name] = time.perf_counter() - began
        print(
            f"{name}: {walls[name]:.1f} s wall, last loss {result.metrics['loss']:.4f}", flush=True
        )
    for name in walls:
        if name != "local" and "local" in walls:
            print(f"{name} / local wall time: {walls[name] / walls['local']:.2f}")


def latency(args: argparse.Namespace) -> None:
    for name in args.engines:
        with tempfile.TemporaryDirectory() as folder:
            engine = build_engine(sinusoid_config(name), RunDir(folder))
            try:
                for _ in engine.run(0, args.warmup):
                    pass
                began = time.perf_counter()
                records = list(engine.run(args.warmup, args.warmup + args.steps))
                seconds = time.perf_counter() - began
            finally:
                engine.close()
        line = f"{name}: {1e3 * seconds / args.steps:.3f} ms per step"
        if name != "local":
            compute = statistics.median(r["worker_seconds"] for r in records)
            line += f", slowest worker's compute {1e3 * compute:.3f} ms (median)"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["overhead", "scaling", "small", "latency"])
    parser.add_argument("--data", default="data/omniglot")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--transport", default="auto", help="engine.transport of overhead and scaling"
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        default=list(SINUSOID_ENGINES),
        choices=list(SINUSOID_ENGINES),
        help="what small and latency run, in this order",
    )
    args = parser.parse_args()
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        commands = {"overhead": overhead, "scaling": scaling, "small": small, "latency": latency}
        commands[args.which](args)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
