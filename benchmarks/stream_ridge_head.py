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
means over seeds with 95 % intervals (``distmeta.runs.stream_metrics.summarize``, the
report's own figures). The ridge last layer is the posterior mean of a Gaussian prior with
mean the start's last layer and precision ``kappa`` times the identity:
:func:`closed_form_losses`, which ``benchmarks/stream_alpaca_head.py`` shares with a
meta-learned prior.
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
from distmeta.runs.stream_metrics import summarize
from distmeta.tasks.sinusoid_stream import SinusoidStream

RIDGE = "ridge_head"
VALIDATION_SEEDS = range(100, 105)
MEMORIES = (10, 50)
KAPPAS = (0.001, 0.01, 0.03, 0.1, 1.0)
REPORTED = ("method", "oracle", "frozen_meta", "finetune", RIDGE)

Features = Callable[[torch.Tensor], torch.Tensor]


def stream_arrays(stream: SinusoidStream) -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch of the stream: inputs ``[steps, points, 1]`` (the stream's dtype) and
    targets ``[steps, points]`` in float64."""
    batches = [stream.batch(step) for step in range(len(stream))]
    xs = torch.stack([batch.x for batch in batches])
    return xs, torch.stack([batch.y.squeeze(-1) for batch in batches]).double()


def told_beginnings(stream: SinusoidStream) -> np.ndarray:
    """Where each task of the stream began (the oracle's knowledge)."""
    return np.r_[True, stream.schedule.switch[1:]]


def closed_form_losses(
    phi: torch.Tensor,
    ys: torch.Tensor,
    begins: np.ndarray,
    memory: int,
    mean: torch.Tensor,
    precision: torch.Tensor,
) -> np.ndarray:
    """The loss at each step of predicting with a last layer on the features ``phi``
    (``[steps, points, d]``, float64): the posterior mean under a Gaussian prior (``mean``,
    ``precision``) given the batches since the latest task beginning among ``begins``
    before the step, at most ``memory`` of them (the first step: the prior mean)."""
    losses = np.empty(len(phi))
    losses[0] = float((phi[0] @ mean - ys[0]).square().mean())
    latest = 0
    for step in range(1, len(phi)):
        if begins[step - 1]:
            latest = step - 1
        first = max(latest, step - memory)
        seen, y = phi[first:step].reshape(-1, len(mean)), ys[first:step].reshape(-1)
        weights = torch.linalg.solve(seen.T @ seen + precision, seen.T @ y + precision @ mean)
        losses[step] = float((phi[step] @ weights - ys[step]).square().mean())
    return losses


def start_features(pretrained: str) -> tuple[Features, torch.Tensor]:
    """The pretrained MLP's hidden layers as features (with a constant, float64), and its
    last layer (weights then bias)."""
    model = load_run(pretrained).model
    body, last = model.net[:-1], model.net[-1]

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            hidden = body(x.float()).double()
        return torch.cat([hidden, torch.ones_like(hidden[..., :1])], dim=-1)

    return features, torch.cat([last.weight.detach().view(-1), last.bias.detach()]).double()


def ridge_loss(
    stream: SinusoidStream, features: Features, prior: torch.Tensor, memory: int, kappa: float
) -> np.ndarray:
    """:func:`closed_form_losses` of the ridge head, told where each task began."""
    xs, ys = stream_arrays(stream)
    ridge = kappa * torch.eye(len(prior), dtype=prior.dtype)
    return closed_form_losses(features(xs), ys, told_beginnings(stream), memory, prior, ridge)


def validate(run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        config = load_config(run_dir / "config.yaml")
        features, prior = start_features(config.stream.pretrained)
        prepared = []  # each stream's features, targets and task beginnings, made once
        for seed in VALIDATION_SEEDS:
            stream = build_stream(config, seed, 0)
            xs, ys = stream_arrays(stream)
            prepared.append((features(xs), ys, told_beginnings(stream)))
        for memory in MEMORIES:
            for kappa in KAPPAS:
                ridge = kappa * torch.eye(len(prior), dtype=prior.dtype)
                means = [
                    closed_form_losses(phi, ys, told, memory, prior, ridge).mean()
                    for phi, ys, told in prepared
                ]
                print(
                    f"alpha {config.stream.alpha}, memory {memory}, kappa {kappa:g}: "
                    f"mean MSE {np.mean(means):.4f} (seeds {', '.join(f'{m:.3f}' for m in means)})",
                    flush=True,
                )


def report(run_dir: Path, memory: int, kappa: float) -> None:
    config = load_config(run_dir / "config.yaml")
    features, prior = start_features(config.stream.pretrained)
    records = read_records(run_dir)
    for seed, seed_records in records.items():
        for record in seed_records:
            stream = build_stream(config, seed, record.index)
            record.loss[RIDGE] = ridge_loss(stream, features, prior, memory, kappa)
    print(f"{run_dir}, alpha {config.stream.alpha}, memory {memory}, kappa {kappa:g}")
    modes = SinusoidStream.mode_names
    for name in REPORTED:
        summary = summarize(list(records.values()), name, modes, config.stream.switch_window)
        figures = {
            "recovery_steps": summary.recovery_steps,
            "mean_loss": summary.mean_loss,
            **{f"mode{number}": summary.modes[mode] for number, mode in enumerate(modes)},
        }
        for key, spread in figures.items():
            print(f"  {name} {key}: {spread.mean:.4f} ± {spread.ci95:.4f}")


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
