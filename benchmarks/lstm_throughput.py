"""Meta-training throughput of a learned optimizer on Ray: two workers against one, same run.

Trains ``configs/lstm_quadratic.yaml`` (meta-batch ``--meta-batch`` trajectories, each worker
advancing its own slots) for ``--steps`` steps with one Ray worker and with two, alternating
``--repeats`` times in this one process run, each a single-threaded worker of 1 CPU, and
reads the steady rate (steps after ``--warmup``) from each run's metrics. The ratio of the
medians is the figure; the target is >= 1.7x. It needs an otherwise idle machine with at
least 2 free cores: on a busy one the second worker waits for a core.

    python benchmarks/lstm_throughput.py --steps 120 --warmup 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def steady_rate(run: Path, warmup: int) -> float:
    """Steps per second between the first logged step at or after ``warmup`` and the last."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["step"] >= warmup)
    last = records[-1]
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--config", default="configs/lstm_quadratic.yaml")
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="lstm-throughput-") as scratch:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                run = Path(scratch) / f"w{workers}-{repeat}"
                overrides = [
                    "engine.name=ray",
                    f"engine.workers={workers}",
                    "engine.transport=tasks",
                    "tracking.enabled=false",
                    f"train.steps={args.steps}",
                    f"train.meta_batch_size={args.meta_batch}",
                    f"train.checkpoint_every={args.steps}",
                    "train.log_every=10",
                ]
                command = [sys.executable, "-m", "distmeta.cli", "train", args.config]
                command += [f"--set={o}" for o in overrides]
                command += ["--run-dir", str(run), "--no-progress"]
                subprocess.run(command, check=True, capture_output=True)
                rates[workers].append(steady_rate(run, args.warmup))
                print(f"repeat {repeat}, {workers} worker(s): {rates[workers][-1]:.3f} steps/s")
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median steps/s: 1 worker {one:.3f}, 2 workers {two:.3f}; ratio {two / one:.2f}x")


if __name__ == "__main__":
    main()
