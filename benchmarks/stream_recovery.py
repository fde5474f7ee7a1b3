"""What the recovery count of a sinusoid stream measures (issue 18's target: C-MAML back to its
level in at most a fifth of the steps ``finetune`` needs).

    python benchmarks/stream_recovery.py RUN_DIR [RUN_DIR ...]

Each ``RUN_DIR`` is a finished ``distmeta stream`` run (``config.yaml``, ``records.npz``).
For every learner of the run, and for an *ideal* learner on the same streams, the script
splits the switches by :func:`distmeta.runs.stream_metrics.recoveries` into those that
recovered and those that never did (counted at the whole length of their task), and reports,
as means over the run's seeds:

- ``recovery_steps``: the report's figure;
- ``never_recovered``: the share of switches that never got back within 10 % of the level
  before them, and ``from_never``: the part of ``recovery_steps`` that those switches add
  alone (their task lengths over all switches);
- ``steps_if_recovered``: the mean count over the switches that did recover;
- ``mode0``, ``mode1``, ``mode2``: the mean loss in each mode (0 in distribution, 1 and 2
  out of it).

The ideal learner predicts each step with the true function of the task one step earlier (no
noise): it knows a task exactly once it has seen one batch of it, and only a switch step
surprises it. Its level is the noise's (0.05) on every task, so a switch never lands it on a
harder task: what it takes shows what the count asks of a learner apart from the order of
the tasks' difficulties.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distmeta.config import load_config
from distmeta.engine.fleet import StreamRecord
from distmeta.experiment import build_stream
from distmeta.runs import read_records
from distmeta.runs.stream_metrics import interval, recoveries
from distmeta.tasks.sinusoid_stream import SinusoidStream

IDEAL = "ideal"


def ideal_loss(stream: SinusoidStream) -> np.ndarray:
    """The loss of predicting each step with the noiseless function of the step before."""
    losses = np.empty(len(stream))
    for step in range(len(stream)):
        batch = stream.batch(step)
        known = max(step - 1, 0)
        angle = stream.frequency[known] * batch.x.squeeze(-1).double() - stream.phase[known]
        guess = stream.amplitude[known] * torch.sin(angle)
        losses[step] = float((guess - batch.y.squeeze(-1).double()).square().mean())
    return losses


def breakdown(records: dict[int, list[StreamRecord]], name: str, window: int) -> dict:
    """Recovery count, share never recovered and the counts split by it, over seeds."""
    per_seed: dict[str, list[float]] = {
        key: [] for key in ("recovery_steps", "never_recovered", "from_never", "steps_if_recovered")
    }
    for seed_records in records.values():
        found = [r for record in seed_records for r in recoveries(record, name, window)]
        steps = np.array([r.steps for r in found], dtype=float)
        never = np.array([not r.recovered for r in found])
        per_seed["recovery_steps"].append(steps.mean())
        per_seed["never_recovered"].append(never.mean())
        per_seed["from_never"].append(steps[never].sum() / len(steps))
        per_seed["steps_if_recovered"].append(steps[~never].mean())
        for mode in range(3):
            losses = [record.loss[name][record.mode == mode] for record in seed_records]
            per_seed.setdefault(f"mode{mode}", []).append(np.concatenate(losses).mean())
    return {key: vars(interval(values)) for key, values in per_seed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        config = load_config(run_dir / "config.yaml")
        if config.stream is None or config.stream.name != "sinusoid":
            raise SystemExit(f"{run_dir}: not a sinusoid stream run")
        records = read_records(run_dir)
        for seed, seed_records in records.items():
            for record in seed_records:
                record.loss[IDEAL] = ideal_loss(build_stream(config, seed, record.index))
        window = config.stream.switch_window
        names = [*next(iter(records.values()))[0].loss]
        out = {
            "run": str(run_dir),
            "alpha": config.stream.alpha,
            "seeds": sorted(records),
            "learners": {name: breakdown(records, name, window) for name in names},
        }
        print(json.dumps(out))


if __name__ == "__main__":
    main()
