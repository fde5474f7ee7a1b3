"""PNG plots of a run: the learning curve (training loss by step) and the adaptation curve
(loss on fresh tasks after 0..k adaptation steps).

Drawn with matplotlib's object API on an Agg canvas, so no display and no global pyplot state
are touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distmeta.runs import EvalResult

__all__ = ["plot_adaptation_curve", "plot_learning_curve"]


def _figure(panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * panels, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, panels, squeeze=False)[0]


def plot_learning_curve(records: Sequence[dict[str, Any]], path: str | Path, title: str) -> None:
    """Training loss (and accuracy, when recorded) of ``records`` (``metrics.jsonl``) by step."""
    names = [name for name in ("loss", "accuracy") if any(name in r for r in records)]
    figure, axes = _figure(len(names))
    for axis, name in zip(axes, names, strict=True):
        points = [(r["step"], r[name]) for r in records if name in r]
        axis.plot([s for s, _ in points], [v for _, v in points], color="C0")
        axis.set_xlabel("meta-training step")
        axis.set_ylabel(f"query {name} after adaptation")
        if name == "loss" and all(v > 0 for _, v in points):
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path)


def plot_adaptation_curve(result: EvalResult, path: str | Path, title: str) -> None:
    """Mean query loss (and accuracy) on fresh tasks after each number of adaptation steps,
    with the 95% interval of the mean."""
    curves = [("loss", result.loss, result.loss_ci95)]
    if result.accuracy is not None and result.accuracy_ci95 is not None:
        curves.append(("accuracy", result.accuracy, result.accuracy_ci95))
    figure, axes = _figure(len(curves))
    for axis, (name, mean, ci) in zip(axes, curves, strict=True):
        low = [m - c for m, c in zip(mean, ci, strict=True)]
        high = [m + c for m, c in zip(mean, ci, strict=True)]
        axis.plot(result.steps, mean, marker="o", color="C1")
        axis.fill_between(result.steps, low, high, color="C1", alpha=0.25, linewidth=0)
        axis.set_xlabel("adaptation steps")
        axis.set_ylabel(f"query {name} ({result.tasks} tasks)")
        if len(result.steps) <= 20:
            axis.set_xticks(result.steps)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path)
