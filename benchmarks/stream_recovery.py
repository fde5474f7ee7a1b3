"""What the recovery count of a stream measures (issue 18's targets: on the sinusoid, C-MAML
back to its level in at most a fifth of the steps ``finetune`` needs; on the pendulum, a regime
recovered faster on its second visit than on its first).

    python benchmarks/stream_recovery.py RUN_DIR [RUN_DIR ...]

Each ``RUN_DIR`` is a finished ``distmeta stream`` run (``config.yaml``, ``records.npz``).
For every learner of the run, and on a sinusoid for an *ideal* and a *fitted* learner on
the same streams, the script splits the switches by
:func:`distmeta.runs.stream_metrics.recoveries` into those that recovered and those that
never did (counted at the whole length of their task), and reports, as means over the run's
seeds:

- ``recovery_steps``: the report's figure;
- ``never_recovered``: the share of switches that never got back within 10 % of the level
  before them, and ``from_never``: the part of ``recovery_steps`` that those switches add
  alone (their task lengths over all switches);
- ``steps_if_recovered``: the mean count over the switches that did recover;
- ``after_1`` to ``after_4``: the loss 1 to 4 steps after a switch over the level before
  it (the median over the seed's switches): how close each batch of the new task brings
  the learner to the level the count asks for;
- ``mode0``, ``mode1``, ``mode2``: the mean loss in each mode (0 in distribution, 1 and 2
  out of it);
- where tasks come back (pendulum regimes), the same split on the first and on the second
  visit of each task that came back (``first:...``, ``second:...``), over the same tasks as
  the report's ``recovery_by_visit``, and the difference between the two visits paired by
  seed (``first_minus_second:steps`` of the recovery count, ``first_minus_second:loss_after``
  of the loss over the report's window after the switch; positive where second visits do
  better), and for each learner but ``no_adaptation`` its ``first_minus_second:steps`` minus
  ``no_adaptation``'s, paired by seed (``..._beyond_no_adaptation``): a model that never
  changes remembers nothing, so its difference between visits is the count's own.

On a sinusoid stream the ideal learner predicts each step with the true function of the task
one step earlier (no noise): it knows a task exactly once it has seen one batch of it, and
only a switch step surprises it. Its level is the noise's (0.05) on every task, so a switch
never lands it on a harder task: what it takes shows what the count asks of a learner apart
from the order of the tasks' difficulties. Beside it, a *fitted* learner knows the family but
not the task: it predicts each step with the sinusoid fitted by least squares to the last
``stream.memory`` batches of the task in force one step earlier (C-MAML's memory; told where
each task began, as the oracle is told its switches), its frequency the best of a grid over
the modes' frequencies. It shows what the count asks of a learner that must estimate a task
from its noisy batches, and how far a model with the family's form would get.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from distmeta.config import load_config
from distmeta.engine.fleet import StreamRecord
from distmeta.experiment import build_stream
from distmeta.runs import read_records
from distmeta.runs.stream_metrics import (
    LEVEL_STEPS,
    Recovery,
    interval,
    recoveries,
    visit_pairs,
)
from distmeta.tasks.sinusoid_stream import SinusoidStream

IDEAL = "ideal"
FITTED = "fitted"
FITTED_FREQUENCIES = np.concatenate([[1.0], np.linspace(1.5, 2.5, 201)])
"""The frequencies the fitted learner chooses among: the in-distribution one and the second
out-of-distribution mode's range."""
MEMORYLESS = "no_adaptation"
AFTER_STEPS = 4
"""Steps after a switch whose loss over the level before it is reported (``after_k``)."""
PARTS = ("recovery_steps", "never_recovered", "from_never", "steps_if_recovered")


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


def fitted_loss(stream: SinusoidStream, memory: int) -> np.ndarray:
    """The loss of predicting each step with the sinusoid fitted by least squares to the last
    ``memory`` batches of the task in force one step earlier: its frequency the best of a grid
    over the modes' frequencies (1, and 1.5 to 2.5), its amplitude and phase exact for it."""
    batches = [stream.batch(step) for step in range(len(stream))]
    xs = np.stack([batch.x.squeeze(-1).double().numpy() for batch in batches])
    ys = np.stack([batch.y.squeeze(-1).double().numpy() for batch in batches])
    segment = stream.schedule.segment
    losses = np.empty(len(stream))
    losses[0] = float(np.mean(ys[0] ** 2))  # nothing seen: predict zero
    for step in range(1, len(stream)):
        known = step - 1
        first = known
        while first > 0 and segment[first - 1] == segment[known] and known - first + 1 < memory:
            first -= 1
        x, y = xs[first:step].ravel(), ys[first:step].ravel()
        sin, cos = np.sin(FITTED_FREQUENCIES[:, None] * x), np.cos(FITTED_FREQUENCIES[:, None] * x)
        ss, sc, cc = (sin * sin).sum(1), (sin * cos).sum(1), (cos * cos).sum(1)
        sy, cy = sin @ y, cos @ y
        det = ss * cc - sc * sc
        a, b = (cc * sy - sc * cy) / det, (ss * cy - sc * sy) / det
        best = int(np.argmin(-(a * sy + b * cy)))  # the residual is |y|^2 minus this
        guess = a[best] * np.sin(FITTED_FREQUENCIES[best] * xs[step])
        guess += b[best] * np.cos(FITTED_FREQUENCIES[best] * xs[step])
        losses[step] = float(np.mean((guess - ys[step]) ** 2))
    return losses


def split(found: list[Recovery]) -> dict[str, float]:
    """One seed's switches: the mean count, the share never recovered, the part of the count
    those add alone, and the mean count of the rest (NaN where a part is empty)."""
    if not found:
        return dict.fromkeys(PARTS, math.nan)
    steps = np.array([r.steps for r in found], dtype=float)
    never = np.array([not r.recovered for r in found], dtype=bool)
    return {
        "recovery_steps": steps.mean(),
        "never_recovered": never.mean(),
        "from_never": steps[never].sum() / len(steps),
        "steps_if_recovered": steps[~never].mean() if (~never).any() else math.nan,
    }


def ratios_after(record: StreamRecord, name: str) -> np.ndarray:
    """``[switches, AFTER_STEPS]``: the loss ``k = 1..AFTER_STEPS`` steps after each switch
    of one stream over the level before it, as :func:`recoveries` defines that level (NaN
    past the task's end)."""
    loss = record.loss[name]
    starts = np.flatnonzero(np.r_[True, record.switch[1:]])
    ends = np.r_[starts[1:], len(record)]
    ratios = np.full((len(starts) - 1, AFTER_STEPS), np.nan)
    for number in range(1, len(starts)):
        start, end = starts[number], ends[number]
        level = loss[max(starts[number - 1], start - LEVEL_STEPS) : start].mean()
        after = loss[start + 1 : min(start + 1 + AFTER_STEPS, end)]
        ratios[number - 1, : len(after)] = after / level
    return ratios


def breakdown(
    records: dict[int, list[StreamRecord]], name: str, window: int
) -> dict[str, list[float]]:
    """The split of :func:`split` (overall, and by visit where tasks come back), the ratios
    after a switch and the mean loss per mode, one value per seed."""
    per_seed: dict[str, list[float]] = {}
    for seed_records in records.values():
        per_record = [recoveries(record, name, window) for record in seed_records]
        parts = {"": split([r for found in per_record for r in found])}
        pairs = [pair for found in per_record for pair in visit_pairs(found)]
        if pairs:
            parts["first:"] = split([first for first, _ in pairs])
            parts["second:"] = split([second for _, second in pairs])
            for key in ("steps", "loss_after"):
                gain = np.mean([getattr(a, key) - getattr(b, key) for a, b in pairs])
                per_seed.setdefault(f"first_minus_second:{key}", []).append(gain)
        for prefix, values in parts.items():
            for key, value in values.items():
                per_seed.setdefault(prefix + key, []).append(value)
        ratios = np.concatenate([ratios_after(record, name) for record in seed_records])
        for k, median in enumerate(np.nanmedian(ratios, axis=0), start=1):
            per_seed.setdefault(f"after_{k}", []).append(median)
        for mode in range(3):
            losses = [record.loss[name][record.mode == mode] for record in seed_records]
            per_seed.setdefault(f"mode{mode}", []).append(np.concatenate(losses).mean())
    return per_seed


def beyond_memoryless(per_learner: dict[str, dict[str, list[float]]]) -> None:
    """Add to each learner, where tasks come back, its ``first_minus_second:steps`` minus
    that of ``no_adaptation`` (paired by seed): ``no_adaptation`` never changes, so whatever
    it gains or loses between visits is the count's, not memory's."""
    key = "first_minus_second:steps"
    baseline = per_learner.get(MEMORYLESS, {}).get(key)
    if baseline is None:
        return
    for name, values in per_learner.items():
        if name != MEMORYLESS and key in values:
            gains = zip(values[key], baseline, strict=True)
            values[f"{key}_beyond_{MEMORYLESS}"] = [a - b for a, b in gains]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        config = load_config(run_dir / "config.yaml")
        if config.stream is None:
            raise SystemExit(f"{run_dir}: not a stream run")
        records = read_records(run_dir)
        if config.stream.name == "sinusoid":
            for seed, seed_records in records.items():
                for record in seed_records:
                    stream = build_stream(config, seed, record.index)
                    record.loss[IDEAL] = ideal_loss(stream)
                    record.loss[FITTED] = fitted_loss(stream, config.stream.memory)
        window = config.stream.switch_window
        names = [*next(iter(records.values()))[0].loss]
        out = {
            "run": str(run_dir),
            "alpha": config.stream.alpha,
            "seeds": sorted(records),
            "learners": {},
        }
        per_learner = {name: breakdown(records, name, window) for name in names}
        beyond_memoryless(per_learner)
        for name, per_seed in per_learner.items():
            out["learners"][name] = {k: vars(interval(v)) for k, v in per_seed.items()}
        print(json.dumps(out))


if __name__ == "__main__":
    main()
