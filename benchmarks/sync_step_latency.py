"""Wall time per sync step of the sinusoid paper config (40-40 MLP, meta-batch 25) on each
engine and ``engine.transport``, after a warm-up (which includes ``torch.compile``), with the
slowest worker's compute per step: what the ``small`` target of issue 3 is made of.

    python benchmarks/sync_step_latency.py --engines local tasks compiled collective
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

from distmeta.config import apply_overrides, parse_config
from distmeta.engine.rundir import RunDir
from distmeta.engine.trainer import build_engine

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["local", "tasks", "compiled", "collective"],
        choices=["local", "tasks", "compiled", "collective"],
        help="local, or the ray engine (2 workers x 1 CPU) with this transport; in this order",
    )
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "configs" / "sinusoid_maml.yaml").read_text())
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        for name in args.engines:
            engine = ["engine.name=local"]
            if name != "local":
                engine = [
                    "engine.name=ray",
                    "engine.workers=2",
                    "engine.worker_resources.num_cpus=1",
                    f"engine.transport={name}",
                ]
            config = parse_config(apply_overrides(raw, [*engine, "tracking.enabled=false"]))
            with tempfile.TemporaryDirectory() as folder:
                runner = build_engine(config, RunDir(folder))
                try:
                    for _ in runner.run(0, args.warmup):
                        pass
                    began = time.perf_counter()
                    records = list(runner.run(args.warmup, args.warmup + args.steps))
                    seconds = time.perf_counter() - began
                finally:
                    runner.close()
            line = f"{name}: {1e3 * seconds / args.steps:.3f} ms per step"
            if name != "local":
                compute = statistics.median(r["worker_seconds"] for r in records)
                line += f", slowest worker's compute {1e3 * compute:.3f} ms (median)"
            print(line, flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
