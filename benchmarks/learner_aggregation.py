"""Where a single learner stops keeping up: aggregation time and bytes per sync step.

For P parameters, a worker's result is two float64 vectors (the exact sum and its residual,
16 P bytes). This script measures, on this machine, the time to merge two results exactly
(``merge_results``) and to apply one outer Adam step, for P from 100k to 100M, and checks on
one size that merging W results costs W - 1 pairwise merges. From those it tabulates, for
W = 2..256 workers:

- flat reduction: the learner receives W results (16 P W bytes) and merges them serially;
- tree reduction: pairwise merges run on the workers' nodes in ceil(log2 W) rounds, the
  learner receives one result (16 P bytes) and only applies it.

Usage::

    python benchmarks/learner_aggregation.py --max-params 100000000
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.engine.ray_engine.messages import SliceResult, merge_results

WORKERS = (2, 4, 8, 16, 32, 64, 128, 256)


def result(params: int, start: int, rng: np.random.Generator) -> SliceResult:
    grad = rng.standard_normal(params)
    return SliceResult(0, start, start + 1, 0, grad, np.zeros(params), {"loss": 1.0}, 0.0)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=int, default=100_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = [p for p in (100_000, 1_000_000, 10_000_000, 100_000_000) if p <= args.max_params]
    print(f"torch threads: {torch.get_num_threads()}")
    merge_s, apply_s = {}, {}
    for params in sizes:
        a, b = result(params, 0, rng), result(params, 1, rng)
        merge_s[params] = median_seconds(lambda a=a, b=b: merge_results([a, b]), args.repeats)
        learner = Learner(ParamLayout(("w",), ((params,),)), torch.zeros(params), "adam", 1e-3)
        gradient = torch.from_numpy(rng.standard_normal(params).astype(np.float32))
        apply_s[params] = median_seconds(lambda g=gradient, lr=learner: lr.apply(g), args.repeats)
        print(
            f"P={params:>11,}: merge 2 results {1e3 * merge_s[params]:9.2f} ms, "
            f"Adam step {1e3 * apply_s[params]:9.2f} ms, one result {16 * params / 2**20:8.1f} MiB",
            flush=True,
        )
    check = sizes[min(1, len(sizes) - 1)]
    parts = [result(check, i, rng) for i in range(8)]
    serial = median_seconds(lambda: merge_results(parts), args.repeats)
    print(
        f"check at P={check:,}: merging 8 results {1e3 * serial:.1f} ms = "
        f"{serial / merge_s[check]:.1f} pairwise merges (model: 7)"
    )
    print()
    print("aggregation per step by workers W: flat = the learner merges W results and applies;")
    print("tree = the learner only applies, after log2(W) rounds of merges on the workers' nodes")
    print("(critical path = those rounds + the apply); MiB = bytes into the learner per step")
    header = ("P", "W", "flat ms", "tree learner", "tree path ms", "flat MiB", "tree MiB")
    print("{:>12} {:>4} {:>10} {:>12} {:>12} {:>10} {:>10}".format(*header))
    for params in sizes:
        for workers in WORKERS:
            flat = (workers - 1) * merge_s[params] + apply_s[params]
            tree = math.ceil(math.log2(workers)) * merge_s[params] + apply_s[params]
            mib = 16 * params / 2**20
            print(
                f"{params:>12,} {workers:>4} {1e3 * flat:>10.1f} {1e3 * apply_s[params]:>12.1f} "
                f"{1e3 * tree:>12.1f} {workers * mib:>10.1f} {mib:>10.1f}"
            )


if __name__ == "__main__":
    main()
