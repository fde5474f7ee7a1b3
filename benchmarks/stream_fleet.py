"""A fleet of sinusoid streams on Ray (issue 18): stream steps per second on 1 and 2 workers,
and whether the meta-parameters the fleet learns beat those any single stream learns alone.

    python benchmarks/stream_fleet.py configs/stream_sinusoid.yaml --steps 50 --held-out 50

1. Throughput: ``--streams`` streams of seed 0 (``--steps`` steps each) on ``engine.name: ray``
   with 1, then 2 task workers, ``--repeats`` times in turn on one local Ray (127.0.0.1); the
   fleet's own count of stream steps per second, once the workers' processes are up and (with
   ``--warmup``, the default) have run the same fleet once on other streams, so their first
   calls' imports and builds are not timed. The speedup is the ratio of the medians over the
   repeats.
2. Quality: the C-MAML meta-parameters learned by the 2-worker fleet, and those learned by
   each of ``--streams`` single streams of the same length (seeds 1, 2, ...; one stream each),
   start 4 held-out streams (``--held-out`` steps) of each seed of ``--held-out-seeds``
   (default 1000). Reported per held-out seed and start: the mean
   online MSE of ``frozen_meta`` (those meta-parameters adapted on each previous batch, never
   updated: the meta-parameters alone) and of C-MAML (which goes on meta-learning).
   ``--no-quality`` skips it: the timing alone, as on the lent machine's idle cores
   (``benchmarks/stream_fleet_device.sh``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import ray

from distmeta.config import load_config
from distmeta.engine.fleet import LocalFleet
from distmeta.engine.ray_engine.fleet import RayFleet
from distmeta.runs import load_start


def held_out_mse(config, start, meta, steps: int, seed: int) -> dict[str, float]:
    """Mean online MSE of ``frozen_meta`` and the method on 4 held-out streams from ``meta``."""
    held = config.model_copy(
        update={"stream": config.stream.model_copy(update={"streams": 4, "steps": steps})}
    )
    result = LocalFleet(held, dataclasses.replace(start, meta_params=meta)).run(seed=seed)
    return {
        name: float(np.mean([record.loss[name] for record in result.records]))
        for name in ("frozen_meta", "method")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=50, help="steps of each learning stream")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=50, help="steps of each held-out stream")
    parser.add_argument(
        "--held-out-seeds", type=int, nargs="+", default=[1000], help="held-out streams' seeds"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fleet size, in turn")
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the fleet once on other streams before timing it (steady-state throughput)",
    )
    parser.add_argument("--warmup-seed", type=int, default=999, help="streams of the warm-up run")
    parser.add_argument(
        "--quality",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the timing, the held-out comparison (2., in this process, on its CPU)",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, for every run (repeat)"
    )
    args = parser.parse_args()

    common = ["tracking.enabled=false", f"stream.steps={args.steps}", *args.set]
    base = load_config(args.config, common)
    start = load_start(base)
    out: dict = {"steps": args.steps, "streams": args.streams, "held_out_steps": args.held_out}
    out["overrides"] = args.set
    rates: dict[int, list[float]] = {1: [], 2: []}
    fleet_meta = None
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
    try:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                config = load_config(
                    args.config,
                    [
                        *common,
                        f"stream.streams={args.streams}",
                        "engine.name=ray",
                        f"engine.workers={workers}",
                    ],
                )
                fleet = RayFleet(config, start)
                try:
                    fleet.pool.health(timeout=300)  # worker processes up before the clock starts
                    if args.warmup:  # the workers' first calls import and build (not timed)
                        fleet.run(seed=args.warmup_seed)
                    result = fleet.run(seed=0)
                finally:
                    fleet.close()
                rates[workers].append(result.stream_steps_per_s)
                fleet_meta = result.meta_params["method"]
                line = {"repeat": repeat, "workers": workers, "steps_per_s": rates[workers][-1]}
                print(json.dumps(line), flush=True)
    finally:
        ray.shutdown()
    for workers, measured in rates.items():
        out[f"stream_steps_per_s_{workers}_workers"] = measured
    out["speedup"] = float(np.median(rates[2]) / np.median(rates[1]))
    if not args.quality:
        print(json.dumps(out))
        return
    starts = {"fleet": fleet_meta, "pretrained": start.meta_params}
    for seed in range(1, args.streams + 1):
        starts[f"single_seed{seed}"] = LocalFleet(base, start).run(seed=seed).meta_params["method"]
    out["held_out"] = {}
    for held_seed in args.held_out_seeds:
        scores = {
            name: held_out_mse(base, start, meta, args.held_out, held_seed)
            for name, meta in starts.items()
        }
        out["held_out"][held_seed] = scores
        print(json.dumps({"held_out_seed": held_seed, **scores}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
