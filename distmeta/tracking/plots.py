"""PNG plots of a run: the learning curve (training loss by step), the adaptation curve
(loss on fresh tasks after 0..k adaptation steps), and a stream's loss over time.

Drawn with matplotlib's object API on an Agg canvas, so no display and no global pyplot state
are touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distmeta.runs import EvalResult, StreamReport

__all__ = ["plot_adaptation_curve", "plot_learning_curve", "plot_stream"]

_SMOOTHING = 10
"""Steps of the running mean drawn for a stream's per-step loss."""
_MODE_COLOURS = ("#e8f0fa", "#fbe9e7", "#fff4d6")


def _figure(panels: int, stacked: bool = False):
    """A figure of ``panels`` axes side by side, or ``stacked`` wide ones (long series)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = (11.0, 3.6 * panels) if stacked else (5.5 * panels, 3.8)
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = (
        figure.subplots(panels, 1, squeeze=False)
        if stacked
        else figure.subplots(1, panels, squeeze=False).T
    )
    return figure, grid[:, 0]


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


def _running_mean(values: np.ndarray, width: int) -> np.ndarray:
    """The mean of each value and the ``width - 1`` before it (fewer at the start)."""
    sums = np.cumsum(np.r_[0.0, values])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - width, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_stream(report: StreamReport, path: str | Path, title: str) -> None:
    """Every learner's loss (and accuracy) over time on the first stream of the first seed,
    as a running mean over 10 steps; each task's mode as a band of colour, the true switches
    as thin lines, and the switches the method declared as marks along the top."""
    record = report.results[0].records[0]
    panels = ["loss"] + (["accuracy"] if record.accuracy else [])
    figure, axes = _figure(len(panels), stacked=True)
    steps = np.arange(len(record))
    starts = np.flatnonzero(np.r_[True, record.switch[1:]])
    ends = np.r_[starts[1:], len(record)]
    for axis, panel in zip(axes, panels, strict=True):
        for begin, end in zip(starts, ends, strict=True):
            axis.axvspan(begin, end, color=_MODE_COLOURS[record.mode[begin]], linewidth=0)
        for switch in starts[1:]:
            axis.axvline(switch, color="0.6", linewidth=0.4)
        for number, (name, values) in enumerate(getattr(record, panel).items()):
            label = report.config.stream.method if name == "method" else name
            width = 1.6 if name in ("method", "oracle") else 0.9
            axis.plot(
                steps,
                _running_mean(values, _SMOOTHING),
                color=f"C{number}",
                linewidth=width,
                label=label,
            )
        declared = np.flatnonzero(
            record.declared("method") if "method" in record.detected else np.zeros(0, dtype=bool)
        )
        if declared.size:
            axis.plot(
                declared,
                np.full(declared.size, 1.0),
                "v",
                markersize=3,
                color="C0",
                transform=axis.get_xaxis_transform(),
                clip_on=False,
                label="switches declared",
            )
        if panel == "loss" and record.loss and all((v > 0).all() for v in record.loss.values()):
            axis.set_yscale("log")
        axis.set_xlabel("stream step")
        axis.set_ylabel(f"online {panel} (running mean of {_SMOOTHING})")
        axis.grid(alpha=0.3)
    handles = [
        _patch(colour, name) for colour, name in zip(_MODE_COLOURS, report.mode_names, strict=False)
    ]
    axes[0].legend(handles=axes[0].get_legend_handles_labels()[0] + handles, fontsize=7, ncol=2)
    figure.suptitle(title)
    figure.savefig(path)


def _patch(colour: str, label: str):
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, edgecolor="0.7", label=label)
