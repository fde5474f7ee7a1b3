"""How far training drifts from a difference of float rounding: the floor under "equal within
float rounding" when two engines' parameters are compared after many steps.

Two local-engine runs of one config from the same initial parameters, the second's moved by
one float32 ulp each (``torch.nextafter``: a relative change of about 6e-8, what one
reordered sum leaves); after each of ``--steps`` the distance between their parameters over
the norm of the first run's update, the measure ``benchmarks/gpu/ray_gpu.py`` reports::

    python benchmarks/rounding_drift.py configs/omniglot_5w1s_maml.yaml --steps 23
"""

from __future__ import annotations

import argparse
import json

import torch

from distmeta.config import load_config
from distmeta.engine.local import LocalEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=23)
    parser.add_argument("--set", action="append", default=[], help="a config override")
    args = parser.parse_args()
    config = load_config(args.config, ["tracking.enabled=false", *args.set])
    exact, moved = LocalEngine(config), LocalEngine(config)
    a, b = exact.learner.theta, moved.learner.theta  # each engine's flat meta-parameters
    initial = a.clone()
    assert torch.equal(initial, b), "the two runs start apart"
    with torch.no_grad():
        b.copy_(torch.nextafter(b, torch.full_like(b, torch.inf)))
    drift = []
    for step, _ in enumerate(zip(exact.run(0, args.steps), moved.run(0, args.steps), strict=True)):
        drift.append(float((a - b).norm() / (a - initial).norm()))
        print(json.dumps({"step": step + 1, "drift_over_update": drift[-1]}), flush=True)
    print(json.dumps({"config": args.config, "overrides": args.set, "drift": drift}))


if __name__ == "__main__":
    main()
