"""What a prequential record says about each learner: online loss overall and per mode,
recovery after switches, regret against the oracle, switch detection, and 95 % intervals
over seeds.

Definitions (every number is over steps scored before their labels were revealed):

- ``mean_loss`` / ``mean_accuracy``: over every step of every stream; ``modes``: over the
  steps of each mode.
- ``recovery_steps``: after each switch, the steps until the loss, averaged over the next
  :data:`RECOVERY_SMOOTHING` steps, is back within 10 % of its level before the switch (the
  mean over the last :data:`LEVEL_STEPS` steps of the previous task); a task that ends
  first counts its whole length (a lower bound: ``recovered`` is the share that did
  recover).
- ``loss_after_switch``: the mean loss over the first ``stream.switch_window`` steps of each
  new task.
- ``regret``: the cumulative regret against the oracle at the end of a stream, the sum over
  steps of the learner's loss minus the oracle's.
- ``switch_detection``: precision, recall and F1 of the steps a learner declared a switch
  against the true switches (step 0 excluded: nothing came before it).
- ``nonfinite_steps``: the steps whose loss is infinite or NaN (a learner that diverged),
  summed over the streams of a seed. A NaN loss counts as infinite in the means above, so
  any such step makes them infinite; the count says how many there were, as
  ``distmeta eval`` counts diverged tasks.
- ``recovery_by_visit`` and ``loss_after_switch_by_visit``: recovery, and the loss after
  the switch, on the first and on the second visit of each task that comes back (streams
  whose tasks recur: pendulum regimes), over the tasks whose two visits both began at a
  switch, so both means are over the same tasks (easy tasks come back sooner, and pooling
  every second visit would credit that to learning). The loss after the switch compares a
  task's two visits directly; the recovery count also depends on the task left (its
  level), which differs between the two.

Each number is computed per seed (all streams of the seed pooled), then averaged over seeds
with a 95 % Student-t interval (0 for a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from distmeta.engine.fleet import StreamRecord

__all__ = [
    "LEVEL_STEPS",
    "RECOVERY_SMOOTHING",
    "RECOVERY_TOLERANCE",
    "Interval",
    "LearnerSummary",
    "Recovery",
    "detection_scores",
    "interval",
    "recoveries",
    "summarize",
    "visit_pairs",
]

LEVEL_STEPS = 10
"""Steps before a switch whose mean loss is the level to recover."""
RECOVERY_SMOOTHING = 3
"""Steps after a switch averaged into the loss compared with that level."""
RECOVERY_TOLERANCE = 0.10
"""Recovered: within this fraction above the level before the switch."""
_CURVE_BINS = 20


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and the half-width of its 95 % interval."""

    mean: float
    ci95: float


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95 % Student-t half-width of per-seed values. NaN marks a seed where the
    number is undefined (a mode the seed's streams never visited) and is left out; an
    infinite value (a learner that diverged) makes the mean infinite. One value, or none
    finite, has a half-width of 0."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    mean = float(array.mean()) if array.size else math.nan
    if array.size < 2 or not np.isfinite(array).all():
        return Interval(mean, 0.0)
    half = stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size)
    return Interval(mean, float(half))


@dataclass(frozen=True)
class Recovery:
    """One switch's recovery: steps taken (or the task's length if it never recovered),
    whether it recovered, the task it switched to and which visit of it this was (1 for a
    first visit), and the mean loss over the window of steps that starts at the switch."""

    steps: int
    recovered: bool
    task: int
    visit: int
    loss_after: float


def recoveries(record: StreamRecord, name: str, window: int) -> list[Recovery]:
    """Recovery of learner ``name`` after every switch of one stream, and its mean loss over
    the ``window`` steps from each switch on."""
    loss = record.loss[name]
    starts = np.flatnonzero(np.r_[True, record.switch[1:]])
    ends = np.r_[starts[1:], len(record)]
    seen: dict[int, int] = {}
    found = []
    for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
        task = int(record.task[start])
        seen[task] = seen.get(task, 0) + 1
        if number == 0:
            continue
        level = loss[max(starts[number - 1], start - LEVEL_STEPS) : start].mean()
        steps, recovered = int(end - start), False
        for k in range(end - start):
            smoothed = loss[start + k : min(start + k + RECOVERY_SMOOTHING, end)].mean()
            if smoothed <= (1 + RECOVERY_TOLERANCE) * level:
                steps, recovered = k, True
                break
        after = float(loss[start : start + window].mean())
        found.append(Recovery(steps, recovered, task, seen[task], after))
    return found


def detection_scores(records: Sequence[StreamRecord], name: str) -> tuple[float, float, float]:
    """Precision, recall and F1 of learner ``name``'s declared switches over ``records``, its
    revisions applied (:meth:`StreamRecord.declared`; precision is 1 when it declared none,
    recall 1 when there were none)."""
    declared = np.concatenate([r.declared(name)[1:] for r in records])
    truth = np.concatenate([r.switch[1:] for r in records])
    hits = int((declared & truth).sum())
    precision = hits / declared.sum() if declared.any() else 1.0
    recall = hits / truth.sum() if truth.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


@dataclass
class LearnerSummary:
    """One learner over every seed: each number as an :class:`Interval` over seeds."""

    mean_loss: Interval
    modes: dict[str, Interval]
    recovery_steps: Interval
    recovered: Interval
    loss_after_switch: Interval
    regret: Interval
    nonfinite_steps: Interval
    loss_over_time: list[float]
    """Mean loss in each of 20 equal spans of the stream (all streams and seeds)."""
    mean_accuracy: Interval | None = None
    modes_accuracy: dict[str, Interval] | None = None
    switch_detection: dict[str, Interval] | None = None
    recovery_by_visit: dict[str, Interval] | None = None
    loss_after_switch_by_visit: dict[str, Interval] | None = None

    def to_dict(self) -> dict:
        """Plain data for JSON: ``mean_loss``, ``mean_loss_ci95``, ``modes`` (means per mode)
        and ``modes_ci95``, and so on; a value that is not finite becomes ``"inf"`` or
        ``"nan"``."""
        out: dict = {}
        for key, value in vars(self).items():
            if value is None:
                continue
            if isinstance(value, Interval):
                out[key], out[f"{key}_ci95"] = _plain(value.mean), _plain(value.ci95)
            elif isinstance(value, dict):
                out[key] = {k: _plain(v.mean) for k, v in value.items()}
                out[f"{key}_ci95"] = {k: _plain(v.ci95) for k, v in value.items()}
            else:
                out[key] = [_plain(v) for v in value]
        return out


def visit_pairs(found: Sequence[Recovery]) -> list[tuple[Recovery, Recovery]]:
    """The first and the second visit of each task of one stream that came back, for the
    tasks whose first visit also began at a switch (not the stream's first task)."""
    first = {f.task: f for f in found if f.visit == 1}
    return [(first[f.task], f) for f in found if f.visit == 2 and f.task in first]


def _mean(values: Sequence[float]) -> float:
    """The mean of ``values``; NaN (undefined) when there are none."""
    return float(np.mean(values)) if values else math.nan


def _diverged_as_infinite(loss: np.ndarray) -> np.ndarray:
    """A NaN loss is a learner that diverged, infinitely wrong: as ``inf`` it makes the
    seed's means infinite, where a NaN mean would read as undefined and :func:`interval`
    would leave the seed out (a diverged seed silently dropped from the report)."""
    return np.where(np.isnan(loss), np.inf, loss)


def _plain(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def summarize(
    seeds: Sequence[Sequence[StreamRecord]],
    name: str,
    mode_names: Sequence[str],
    switch_window: int,
    oracle: str = "oracle",
) -> LearnerSummary:
    """Learner ``name``'s summary over ``seeds`` (each the records of one seed's streams).

    Args:
        seeds: Per seed, the full records of its streams.
        name: The learner.
        mode_names: Names of the modes, in-distribution first.
        switch_window: Steps after a switch averaged into ``loss_after_switch``.
        oracle: The learner regret is measured against.
    """
    per_seed: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        per_seed.setdefault(key, []).append(value)

    for records in seeds:
        losses = [_diverged_as_infinite(r.loss[name]) for r in records]
        loss = np.concatenate(losses)
        mode = np.concatenate([r.mode for r in records])
        add("mean_loss", float(loss.mean()))
        for number, mode_name in enumerate(mode_names):
            add(
                f"mode:{mode_name}",
                float(loss[mode == number].mean()) if (mode == number).any() else math.nan,
            )
        per_record = [recoveries(r, name, switch_window) for r in records]
        found = [item for items in per_record for item in items]
        add("recovery_steps", _mean([f.steps for f in found]))
        add("recovered", _mean([f.recovered for f in found]))
        add("loss_after_switch", _mean([f.loss_after for f in found]))
        returns = [pair for items in per_record for pair in visit_pairs(items)]
        for label, visits in (
            ("first", [first for first, _ in returns]),
            ("second", [second for _, second in returns]),
        ):
            add(f"visit:{label}", _mean([f.steps for f in visits]))
            add(f"after_visit:{label}", _mean([f.loss_after for f in visits]))
        regret = [
            float((own - r.loss[oracle]).sum()) for own, r in zip(losses, records, strict=True)
        ]
        add("regret", float(np.mean(regret)))
        add("nonfinite_steps", float((~np.isfinite(loss)).sum()))
        if records[0].accuracy:
            accuracy = np.concatenate([r.accuracy[name] for r in records])
            add("mean_accuracy", float(accuracy.mean()))
            for number, mode_name in enumerate(mode_names):
                chosen = accuracy[mode == number]
                add(f"accuracy:{mode_name}", float(chosen.mean()) if chosen.size else math.nan)
        if name in records[0].detected:
            for key, value in zip(
                ("precision", "recall", "f1"), detection_scores(records, name), strict=True
            ):
                add(f"detect:{key}", value)

    def grouped(prefix: str) -> dict[str, Interval]:
        return {
            key.removeprefix(prefix): interval(values)
            for key, values in per_seed.items()
            if key.startswith(prefix)
        }

    curve = np.mean([r.loss[name] for records in seeds for r in records], axis=0)
    summary = LearnerSummary(
        mean_loss=interval(per_seed["mean_loss"]),
        modes=grouped("mode:"),
        recovery_steps=interval(per_seed["recovery_steps"]),
        recovered=interval(per_seed["recovered"]),
        loss_after_switch=interval(per_seed["loss_after_switch"]),
        regret=interval(per_seed["regret"]),
        nonfinite_steps=interval(per_seed["nonfinite_steps"]),
        loss_over_time=[
            float(part.mean()) for part in np.array_split(curve, min(_CURVE_BINS, len(curve)))
        ],
    )
    if any(not math.isnan(value) for value in per_seed["visit:second"]):
        summary.recovery_by_visit = grouped("visit:")
        summary.loss_after_switch_by_visit = grouped("after_visit:")
    if "mean_accuracy" in per_seed:
        summary.mean_accuracy = interval(per_seed["mean_accuracy"])
        summary.modes_accuracy = grouped("accuracy:")
    if "detect:f1" in per_seed:
        summary.switch_detection = grouped("detect:")
    return summary
