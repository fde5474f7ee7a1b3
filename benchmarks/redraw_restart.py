"""What an optimizer carries across the redraw of the non-stationary quadratic.

Issue 19's redraw target counts, for each optimizer, the steps after the redraw until the
mean loss is back at its own value just before the redraw. This script asks what part of
that count is recovery and what part is the optimizer's start: on the test problems of
runs that ``benchmarks/lstm_optimizer.py`` trained and evaluated with ``task.redraw_at``
(``eval.json`` in the run folder gives the learned optimizer's chosen checkpoint and tuned
Adam's rate), each optimizer runs twice on the same problems: as it is (its state carried
across the redraw), and *restarted* at the redraw (a new optimizer of the same kind and
rate, its state fresh, from where the parameters are). It prints, per run, the loss just
before the redraw, the steps from step 0 to it, and the steps back to it after the redraw,
carried and restarted, with the loss one step into each start.

    python benchmarks/redraw_restart.py runs/bench-lstm-log/lstm_quadratic-redraw-log-seed1 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distmeta.experiment import build_task_source
from distmeta.runs.finished import load_run
from distmeta.runs.optimizers import MakeOptimizer, learned_optimizer, loss_curves, steps_to


class RestartedAt:
    """An optimizer whose state is thrown away before its ``step``-th step (counted from 0):
    from there a new one of the same kind continues from the current parameters."""

    def __init__(self, make: MakeOptimizer, params: list[torch.Tensor], step: int):
        self.make, self.params, self.restart_step = make, params, step
        self.optimizer, self.steps_taken = make(params), 0

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        if self.steps_taken == self.restart_step:
            self.optimizer = self.make(self.params)
        self.optimizer.step()
        self.steps_taken += 1


def measure(run_dir: Path, tasks: int) -> dict[str, dict[str, float | int | None]]:
    """Loss before the redraw, steps from 0 to it and back to it, carried and restarted."""
    saved = json.loads((run_dir / "eval.json").read_text())
    redraw = saved["redraw_at"]
    run = load_run(run_dir)
    chosen = saved["curves"]["learned"]["step"]
    if chosen != run.step:
        run = run.at_checkpoint(chosen)
    seed = run.config.eval.seed if run.config.eval.seed is not None else run.config.seed + 1
    family = build_task_source(run.config, split="eval")
    adam_lr = saved["curves"]["adam"]["lr"]
    kinds: dict[str, MakeOptimizer] = {
        "learned": learned_optimizer(run),
        "adam": lambda ps: torch.optim.Adam(ps, lr=adam_lr),
    }
    optimizers: dict[str, MakeOptimizer] = {}
    for name, make in kinds.items():
        optimizers[name] = make
        optimizers[f"{name}, restarted"] = lambda ps, make=make: RestartedAt(make, ps, redraw)
    names = [(seed, 0, i) for i in range(tasks)]
    curves = loss_curves(run.model, family, names, optimizers, 2 * saved["horizon"])
    means = {label: curve.mean(dim=0).tolist() for label, curve in curves.items()}
    rows = {}
    for label, loss in means.items():
        level = loss[redraw - 1]
        rows[label] = {
            "before": level,
            "from_0": steps_to(loss, 0, level),
            "back": steps_to(loss, redraw, level),
            "first_step": loss[1],
            "first_after": loss[redraw + 1],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tasks", type=int, default=100, help="test problems per run")
    args = parser.parse_args()
    print(
        f"{'run':<40} {'optimizer':<20} {'loss before':>11} {'from 0':>6} {'back':>5}"
        f" {'loss @1':>8} {'loss one step after':>20}"
    )
    for run_dir in args.runs:
        for label, row in measure(run_dir, args.tasks).items():
            print(
                f"{run_dir.name:<40} {label:<20} {row['before']:11.4f} {row['from_0']!s:>6}"
                f" {row['back']!s:>5} {row['first_step']:8.3f} {row['first_after']:20.3f}"
            )


if __name__ == "__main__":
    main()
