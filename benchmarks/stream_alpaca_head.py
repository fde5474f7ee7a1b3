"""An offline look at ALPaCA beside C-MAML on a sinusoid stream run.

ALPaCA (Harrison et al. 2018), the base learner of MOCA, one of issue 18's anchors: a
network's features ``phi(x)`` and a Gaussian prior over a last layer on them (mean ``K0``,
precision ``L0 L0^T``), meta-trained so that the last layer's posterior mean, solved in
closed form from a task's points, predicts the task's other points. Here it is meta-trained
on in-distribution sinusoids only, as C-MAML's start is (amplitude in [0.1, 5], phase in
[0, pi], frequency 1, x in [-5, 5], noise variance 0.05; context sizes 1 to 100 points,
40 query points, 25 tasks per step, Adam at 1e-3), then scored on the streams of finished
``distmeta stream`` runs, three ways:

- ``alpaca_told``: the last layer solved on the last ``--memory`` batches of the task in force
  one step earlier, told where each task began (as the oracle is told its switches);
- ``alpaca``: the same, the task's beginning taken from C-MAML's own declared switches as
  they are known when the step is predicted (no revisions): an online learner;
- ``hybrid``: at each step the prediction of ``alpaca`` or of C-MAML, whichever had the lower
  loss on the step before: also online, since both losses are known by then.

Everything this script adds reads only what was known before each step's labels, but it is
an analysis of recorded runs, not a learner of the package. The closed-form prediction is
``closed_form_losses`` of its sibling ``benchmarks/stream_ridge_head.py`` (the same posterior
mean with a meta-learned prior), imported as the scripts run from ``benchmarks/``.

    python benchmarks/stream_alpaca_head.py validate RUN_DIR [RUN_DIR ...]
    python benchmarks/stream_alpaca_head.py report RUN_DIR [RUN_DIR ...] --memory 50

``validate`` prints the learners' mean MSE on the given runs for every memory of the grid;
``report`` prints, for the chosen memory, mean MSE, MSE per mode and the recovery count of
these learners beside the run's own, means over seeds with 95 % intervals, each with its
difference from C-MAML's paired by seed.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from stream_ridge_head import closed_form_losses, stream_arrays
from torch import nn

from distmeta.config import ExperimentConfig, load_config
from distmeta.engine.fleet import StreamRecord
from distmeta.experiment import build_stream
from distmeta.runs import read_records
from distmeta.runs.stream_metrics import interval, summarize
from distmeta.tasks.sinusoid_stream import SinusoidStream

MEMORIES = (10, 50)
ADDED = ("alpaca_told", "alpaca", "hybrid")
REPORTED = ("method", "oracle", "finetune", *ADDED)


class Alpaca(nn.Module):
    """Features from a 40-40 MLP (with a constant) and a Gaussian prior over a last layer."""

    def __init__(self, width: int = 40):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.prior_mean = nn.Parameter(torch.zeros(width + 1))
        self.prior_root = nn.Parameter(torch.eye(width + 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.body(x)
        return torch.cat([hidden, torch.ones_like(hidden[..., :1])], dim=-1)

    def prior_precision(self) -> torch.Tensor:
        return self.prior_root @ self.prior_root.T

    def last_layer(self, phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The posterior mean of the last layer given features ``[..., n, d]`` and targets
        ``[..., n]``."""
        precision = self.prior_precision()
        gram = phi.transpose(-1, -2) @ phi + precision
        moment = phi.transpose(-1, -2) @ y.unsqueeze(-1) + (precision @ self.prior_mean)[:, None]
        return torch.linalg.solve(gram, moment).squeeze(-1)


def in_distribution_tasks(
    tasks: int, points: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sinusoids of the stream's in-distribution mode: ``x [tasks, points, 1]``, ``y``."""
    amplitude = 0.1 + 4.9 * torch.rand(tasks, 1, generator=generator)
    phase = math.pi * torch.rand(tasks, 1, generator=generator)
    x = -5 + 10 * torch.rand(tasks, points, generator=generator)
    noise = math.sqrt(0.05) * torch.randn(tasks, points, generator=generator)
    return x.unsqueeze(-1), amplitude * torch.sin(x - phase) + noise


def meta_train(steps: int, seed: int) -> Alpaca:
    """ALPaCA meta-trained on the query MSE of the posterior mean, context sizes 1 to 100."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Alpaca()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    began = time.perf_counter()
    for _ in range(steps):
        context = int(torch.randint(1, 101, (1,), generator=generator))
        x, y = in_distribution_tasks(25, context + 40, generator)
        phi = model.features(x)
        weights = model.last_layer(phi[:, :context], y[:, :context])
        prediction = (phi[:, context:] @ weights.unsqueeze(-1)).squeeze(-1)
        loss = (prediction - y[:, context:]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"ALPaCA: {steps} meta-steps in {time.perf_counter() - began:.0f} s", flush=True)
    return model


def prepared_streams(
    model: Alpaca, config: ExperimentConfig, records: dict[int, list[StreamRecord]]
) -> list[tuple[StreamRecord, torch.Tensor, torch.Tensor]]:
    """Each record with its stream's ALPaCA features (float64) and targets, made once for
    every memory tried."""
    prepared = []
    for seed, seed_records in records.items():
        for record in seed_records:
            xs, ys = stream_arrays(build_stream(config, seed, record.index))
            with torch.no_grad():
                prepared.append((record, model.features(xs).double(), ys))
    return prepared


def add_learners(
    model: Alpaca, prepared: list[tuple[StreamRecord, torch.Tensor, torch.Tensor]], memory: int
) -> None:
    """Add the three learners of the module description to each record."""
    with torch.no_grad():
        mean, precision = model.prior_mean.double(), model.prior_precision().double()
    for record, phi, ys in prepared:
        told = np.r_[True, record.switch[1:]]
        detected = np.r_[True, record.detected["method"][1:]]
        record.loss["alpaca_told"] = closed_form_losses(phi, ys, told, memory, mean, precision)
        alpaca = closed_form_losses(phi, ys, detected, memory, mean, precision)
        record.loss["alpaca"] = alpaca
        cmaml = record.loss["method"]
        pick = np.r_[False, alpaca[:-1] <= cmaml[:-1]]
        record.loss["hybrid"] = np.where(pick, alpaca, cmaml)


def figures_by_seed(
    records: dict[int, list[StreamRecord]], name: str, switch_window: int, full: bool
) -> dict[str, list[float]]:
    """Learner ``name``'s mean MSE per seed (the report's own figures,
    ``distmeta.runs.stream_metrics.summarize``), and with ``full`` its MSE per mode and
    recovery count."""
    modes = SinusoidStream.mode_names
    figures: dict[str, list[float]] = {}
    for seed_records in records.values():
        summary = summarize([seed_records], name, modes, switch_window)
        figures.setdefault("mean MSE", []).append(summary.mean_loss.mean)
        if full:
            for number, mode in enumerate(modes):
                figures.setdefault(f"mode {number}", []).append(summary.modes[mode].mean)
            figures.setdefault("recovery steps", []).append(summary.recovery_steps.mean)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("validate", "report"))
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--memory", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20000, help="ALPaCA's meta-steps")
    parser.add_argument("--seed", type=int, default=0, help="ALPaCA's meta-training seed")
    args = parser.parse_args()
    model = meta_train(args.steps, args.seed)
    report = args.mode == "report"
    memories = (args.memory,) if report else MEMORIES
    names = REPORTED if report else ("method", *ADDED)
    for run_dir in args.run_dirs:
        config = load_config(run_dir / "config.yaml")
        records = read_records(run_dir)
        prepared = prepared_streams(model, config, records)
        for memory in memories:
            add_learners(model, prepared, memory)
            print(f"{run_dir}, alpha {config.stream.alpha}, memory {memory}", flush=True)
            window = config.stream.switch_window
            cmaml = figures_by_seed(records, "method", window, report)
            for name in names:
                figures = figures_by_seed(records, name, window, report)
                cells = []
                for key, values in figures.items():
                    spread = interval(values)
                    cells.append(f"{key} {spread.mean:.4f} ± {spread.ci95:.4f}")
                    if name != "method":
                        paired = interval(np.subtract(values, cmaml[key]).tolist())
                        cells[-1] += f" (minus C-MAML's: {paired.mean:+.4f} ± {paired.ci95:.4f})"
                print(f"  {name}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
