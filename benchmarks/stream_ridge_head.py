"""An offline look at a last layer solved in closed form on the meta-learned features.

Issue 18's sinusoid recovery target at alpha 0.98 is within reach of a learner that fits the
sinusoid family to a task's batches, and not of C-MAML, whose 40-40 MLP is 5.7 times its
level one batch after a switch (BENCHMARKS.md, stop 46). ALPaCA, MOCA's base learner, fits
a task in closed form: Bayesian linear regression on meta-learned features. This script
measures the cheapest form of that idea on a sinusoid stream run: the pretrained start's
hidden layers (``stream.pretrained``, an MLP) as fixed features, and a last layer solved by
ridge regression on the last ``--memory`` batches of the task in force one step earlier,
pulled toward the start's own last layer by ``--kappa``. Like the oracle it is told where
each task began; nothing is meta-trained for it.

    python benchmarks/stream_ridge_head.py validate RUN_DIR [RUN_DIR ...]
    python benchmarks/stream_ridge_head.py report RUN_DIR --memory 50 --kappa 0.03

``validate`` prints the mean MSE on the validation streams (seeds 100-104, built from each
run's config) for every memory and kappa of the grid; ``report`` scores the chosen setting on
the run's own streams beside its learners: mean MSE, MSE per mode and the recovery count,
means over seeds with 95 % intervals.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from distmeta.config import load_config
from distmeta.experiment import build_stream
from distmeta.runs import read_records
from distmeta.runs.finished import load_run
from distmeta.runs.stream_metrics import interval, recoveries
from distmeta.tasks.sinusoid_stream import SinusoidStream

RIDGE = "ridge_head"
VALIDATION_SEEDS = range(100, 105)
MEMORIES = (10, 50)
KAPPAS = (0.001, 0.01, 0.03, 0.1, 1.0)
REPORTED = ("method", "oracle", "frozen_meta", "finetune", RIDGE)

Features = Callable[[np.ndarray], np.ndarray]


def start_features(pretrained: str) -> tuple[Features, np.ndarray]:
    """The pretrained MLP's hidden layers as features (with a constant), and its last layer."""
    model = load_run(pretrained).model
    body, last = model.net[:-1], model.net[-1]

    def features(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            hidden = body(torch.as_tensor(x, dtype=torch.float32).view(-1, 1)).double().numpy()
        return np.concatenate([hidden, np.ones((len(hidden), 1))], axis=1)

    prior = torch.cat([last.weight.detach().view(-1), last.bias.detach()]).double().numpy()
    return features, prior


def ridge_loss(
    stream: SinusoidStream, features: Features, prior: np.ndarray, memory: int, kappa: float
) -> np.ndarray:
    """The loss of predicting each step with the last layer that minimises
    ``|Phi w - y|^2 + kappa |w - prior|^2`` over the last ``memory`` batches of the task in
    force one step earlier (the first step: the prior)."""
    batches = [stream.batch(step) for step in range(len(stream))]
    xs = np.stack([batch.x.squeeze(-1).double().numpy() for batch in batches])
    ys = np.stack([batch.y.squeeze(-1).double().numpy() for batch in batches])
    phi = features(xs.ravel()).reshape(*xs.shape, -1)
    segment = stream.schedule.segment
    losses = np.empty(len(stream))
    losses[0] = float(np.mean((phi[0] @ prior - ys[0]) ** 2))
    regulariser = kappa * np.eye(len(prior))
    for step in range(1, len(stream)):
        known = step - 1
        first = known
        while first > 0 and segment[first - 1] == segment[known] and known - first + 1 < memory:
            first -= 1
        seen, y = phi[first:step].reshape(-1, len(prior)), ys[first:step].ravel()
        weights = np.linalg.solve(seen.T @ seen + regulariser, seen.T @ y + kappa * prior)
        losses[step] = float(np.mean((phi[step] @ weights - ys[step]) ** 2))
    return losses


def validate(run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        config = load_config(run_dir / "config.yaml")
        features, prior = start_features(config.stream.pretrained)
        streams = [build_stream(config, seed, 0) for seed in VALIDATION_SEEDS]
        for memory in MEMORIES:
            for kappa in KAPPAS:
                means = [ridge_loss(s, features, prior, memory, kappa).mean() for s in streams]
                print(
                    f"alpha {config.stream.alpha}, memory {memory}, kappa {kappa:g}: "
                    f"mean MSE {np.mean(means):.4f} (seeds {', '.join(f'{m:.3f}' for m in means)})",
                    flush=True,
                )


def report(run_dir: Path, memory: int, kappa: float) -> None:
    config = load_config(run_dir / "config.yaml")
    features, prior = start_features(config.stream.pretrained)
    per_seed: dict[str, list[float]] = {}
    for seed, records in read_records(run_dir).items():
        for record in records:
            stream = build_stream(config, seed, record.index)
            record.loss[RIDGE] = ridge_loss(stream, features, prior, memory, kappa)
        for name in REPORTED:
            window = config.stream.switch_window
            found = [r for record in records for r in recoveries(record, name, window)]
            per_seed.setdefault(f"{name} recovery_steps", []).append(
                np.mean([r.steps for r in found])
            )
            losses = np.concatenate([record.loss[name] for record in records])
            per_seed.setdefault(f"{name} mean_loss", []).append(losses.mean())
            for mode in range(3):
                in_mode = [record.loss[name][record.mode == mode] for record in records]
                per_seed.setdefault(f"{name} mode{mode}", []).append(np.concatenate(in_mode).mean())
    print(f"{run_dir}, alpha {config.stream.alpha}, memory {memory}, kappa {kappa:g}")
    for key, values in per_seed.items():
        spread = interval(values)
        print(f"  {key}: {spread.mean:.4f} ± {spread.ci95:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("validate", "report"))
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--memory", type=int, default=50)
    parser.add_argument("--kappa", type=float, default=0.03)
    args = parser.parse_args()
    if args.mode == "validate":
        validate(args.run_dirs)
    else:
        for run_dir in args.run_dirs:
            report(run_dir, args.memory, args.kappa)


if __name__ == "__main__":
    main()
