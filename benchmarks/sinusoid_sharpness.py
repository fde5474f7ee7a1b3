"""Is a sinusoid run's initialisation too sharp for its inner rate? (issue 17)

Gradient descent at rate ``lr`` overshoots along any direction whose curvature exceeds
``2 / lr``. For a trained sinusoid run this prints the largest eigenvalue of each task's
support-loss Hessian at the learned initialisation (exact: the full Hessian in float64), how
many of 100 fresh tasks exceed ``2 / lr``, and, for the largest-amplitude tasks, the support
loss and that eigenvalue along ``--steps`` steps of the run's own inner loop::

    python benchmarks/sinusoid_sharpness.py RUN_DIR --seed 4242
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.func import functional_call, grad, hessian

from distmeta.experiment import build_task_source
from distmeta.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--seed", type=int, default=4242, help="seed of the evaluation tasks")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trajectories", type=int, default=5, help="largest amplitudes")
    args = parser.parse_args()

    run = load_run(args.run_dir)
    lr = run.config.algorithm.inner_lr
    source = build_task_source(run.config, split="eval")
    model = run.model.double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [run.params[name].shape for name in names]
    sizes = [run.params[name].numel() for name in names]
    start = torch.cat([run.params[name].double().reshape(-1) for name in names])

    def loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return torch.mean((functional_call(model, params, (x,)) - y) ** 2)

    def sharpness(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(torch.linalg.eigvalsh(hessian(loss)(flat, x, y)).max())

    tasks = []
    for index in range(args.tasks):
        chunk, position = divmod(index, 100)
        amplitude, _ = source.parameters_of(args.seed, chunk, position)
        batch = source.sample(args.seed, chunk, [position]).to("cpu", torch.float64)
        tasks.append((amplitude, batch.support_x[0], batch.support_y[0]))
    at_start = sorted(sharpness(start, x, y) for _, x, y in tasks)
    above = sum(value > 2 / lr for value in at_start)
    print(
        f"initialisation: largest Hessian eigenvalue median {at_start[len(at_start) // 2]:.1f}, "
        f"max {at_start[-1]:.1f}; above 2/lr = {2 / lr:g} for {above} of {len(tasks)} tasks"
    )
    for amplitude, x, y in sorted(tasks, key=lambda task: -task[0])[: args.trajectories]:
        flat, losses, values = start.clone(), [], []
        for _ in range(args.steps + 1):
            losses.append(float(loss(flat, x, y)))
            if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
                break
            values.append(sharpness(flat, x, y))
            flat = flat - lr * grad(loss)(flat, x, y)
        print(f"amplitude {amplitude:.2f}: support loss " + " ".join(f"{v:.3g}" for v in losses))
        print("                 eigenvalue   " + " ".join(f"{v:.0f}" for v in values))


if __name__ == "__main__":
    main()
