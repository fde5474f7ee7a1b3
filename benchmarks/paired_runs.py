"""Two runs on the same fresh tasks: their query metrics and the difference, task by task.

Overlapping 95% intervals of two runs measured separately do not say whether one is better:
both meet the same tasks, so the per-task difference has a much narrower interval.

    python benchmarks/paired_runs.py RUN_A RUN_B --tasks 600 --seed 1000003 --steps 10
"""

from __future__ import annotations

import argparse
import math

import distmeta as dm
from distmeta.runs import adaptation_curves


def interval(values) -> tuple[float, float]:
    """Mean and 95% half-width."""
    n = values.shape[0]
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1_000_003)
    parser.add_argument("--steps", type=int, default=None, help="adaptation steps")
    args = parser.parse_args()
    curves = {
        name: adaptation_curves(dm.load_run(path), args.tasks, args.seed, args.steps)[:, -1]
        for name, path in (("A", args.run_a), ("B", args.run_b))
    }
    names = ["loss", "accuracy"][: curves["A"].shape[-1]]
    for index, metric in enumerate(names):
        a, b = curves["A"][:, index], curves["B"][:, index]
        scale = 100 if metric == "accuracy" else 1
        for label, values in (("A", a), ("B", b), ("B - A", b - a)):
            mean, half = interval(values)
            print(f"{metric:<9} {label:<6} {scale * mean:+.4f} ± {scale * half:.4f}")


if __name__ == "__main__":
    main()
