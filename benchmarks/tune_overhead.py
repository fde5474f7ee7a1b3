"""What Ray Tune adds to a trial: start, reports with validation and checkpoints, teardown.

One training of about ``--seconds`` (sinusoid MAML, the paper's 40-40 MLP and meta-batch 25;
``--config`` takes any experiment file) runs twice, alternating ``--repeats`` times:

- ``plain``: ``distmeta train`` in a new process, with a checkpoint every ``steps /
  --reports`` steps (what the trial itself writes), one torch thread;
- ``tune``: ``distmeta.tune.run_search`` with one trial of the same config (a one-value grid,
  fifo scheduler, one CPU, so one torch thread), reporting with each checkpoint: the whole
  search as its caller sees it (config checks, the trial's actor and process start, its
  imports, ``--reports`` validations on ``--val-tasks`` tasks and Tune checkpoints, the result
  files, ``trials.csv`` and ``best.yaml``).

Overhead = tune / plain - 1, split (from the run folders' records) into the part outside the
training loop (the trial's start: its process, imports and engine; the final report; the
search's files) and the part inside it (the reports, and any slower steps), with the
validation's share measured on its own.
MLflow is off on both sides (its cost is benchmarks/tracking_overhead.py's). Ray is started
once, before any timing (a new local instance; ``--address`` joins another).

    . ../shared/offline-env.sh
    python benchmarks/tune_overhead.py                  # ~2-minute trials, 10 reports
    python benchmarks/tune_overhead.py --seconds 30 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
import yaml

import distmeta as dm
from distmeta.config import apply_overrides, parse_config, read_yaml
from distmeta.engine.rundir import MetricsLog, RunDir
from distmeta.tune import checkpoint_metrics, run_search

SINUSOID = {
    "task": {"name": "sinusoid", "shots": 10, "query": 10},
    "model": {"name": "mlp", "hidden": [40, 40]},
    "algorithm": {"name": "maml", "compile": True},
    "train": {"meta_batch_size": 25, "log_every": 100},
    "eval": {"tasks": 100, "query": 100, "inner_steps": 1},
}


def base_raw(args) -> dict:
    raw = read_yaml(args.config) if args.config else yaml.safe_load(yaml.safe_dump(SINUSOID))
    raw = apply_overrides(raw, args.overrides)
    raw.pop("tune", None)
    raw["tracking"] = {"enabled": False}
    return raw


def with_steps(raw: dict, steps: int, reports: int) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(raw))
    raw.setdefault("train", {}).update({"steps": steps, "checkpoint_every": steps // reports})
    return raw


def loop_seconds(run_dir: str) -> float:
    """The training loop's time in a run folder (its last record's ``time``)."""
    return MetricsLog.read(RunDir(run_dir))[-1]["time"]


def plain(raw: dict, root: Path) -> tuple[float, float]:
    """Seconds of ``distmeta train`` in a new process (start, imports, model built and
    compiled, trained, checkpoints written), as a trial's process does it; and of its loop."""
    folder = tempfile.mkdtemp(prefix="plain-", dir=root)
    config = Path(folder) / "plain.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "distmeta.cli", "train", str(config)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--run-dir", f"{folder}/run", "--no-progress"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as Ray gives a 1-CPU trial
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"distmeta train failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, loop_seconds(f"{folder}/run")


def tuned(raw: dict, reports: int, val_tasks: int, root: Path):
    steps = raw["train"]["steps"]
    # The trial's own value of outer_lr: the trial trains exactly the plain config.
    lr = parse_config(raw).algorithm.outer_lr
    search = {
        **raw,
        "tune": {
            "space": {"algorithm.outer_lr": {"type": "grid", "values": [lr]}},
            "search": "grid",
            "scheduler": "fifo",
            "report_every": steps // reports,
            "val_tasks": val_tasks,
            "trial_resources": {"num_cpus": 1},
        },
    }
    config = parse_config(search)
    folder = Path(tempfile.mkdtemp(prefix="tune-", dir=root)) / "search"
    started = time.perf_counter()
    result = run_search(config, str(folder), progress=False)
    return time.perf_counter() - started, result


def validation_seconds(trial_run: str, val_tasks: int, repeats: int = 5) -> float:
    folder = RunDir(trial_run)
    step = folder.checkpoint_steps()[-1]
    checkpoint_metrics(folder, step, val_tasks)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        checkpoint_metrics(folder, step, val_tasks)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment YAML (default: sinusoid MAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per trial")
    parser.add_argument("--reports", type=int, default=10)
    parser.add_argument("--val-tasks", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--address", default="local")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ray.init(address=args.address, _node_ip_address="127.0.0.1", include_dashboard=False)
    root = Path(tempfile.mkdtemp(prefix="tune-overhead-"))

    raw = base_raw(args)
    # Steps per second once the model is compiled (compilation is in both timings anyway).
    calibration = parse_config(
        with_steps({**raw, "train": {**raw.get("train", {}), "log_every": 100}}, 1500, 1)
    )
    history = dm.train(calibration, run_dir=tempfile.mkdtemp(dir=root), progress=False).history
    times = {record["step"]: record["time"] for record in history}
    per_step = (times[1500] - times[500]) / 1000
    steps = int(args.seconds / per_step) // args.reports * args.reports
    raw = with_steps(raw, steps, args.reports)
    print(
        f"{steps} steps ({per_step * 1e3:.2f} ms/step), {args.reports} reports, runs in {root}",
        flush=True,
    )

    plains, tunes, plain_loops, tune_loops = [], [], [], []
    for repeat in range(args.repeats):
        took, loop = plain(raw, root)
        plains.append(took)
        plain_loops.append(loop)
        took, result = tuned(raw, args.reports, args.val_tasks, root)
        trial = result.trials[0]
        assert trial.status == "completed" and trial.step == steps, trial
        tunes.append(took)
        tune_loops.append(loop_seconds(trial.run_dir))
        print(
            f"repeat {repeat + 1}: plain {plains[-1]:.1f} s (loop {plain_loops[-1]:.1f}), "
            f"tune {tunes[-1]:.1f} s (trial's loop {tune_loops[-1]:.1f}): "
            f"{100 * (tunes[-1] / plains[-1] - 1):+.1f}%",
            flush=True,
        )

    validation = validation_seconds(trial.run_dir, args.val_tasks)
    median = statistics.median
    plain_s, tune_s = median(plains), median(tunes)
    extra = tune_s - plain_s
    # Outside the loop: the trial's start (process, imports, engine), the final report, the
    # search's own files; inside: the reports, and whatever slows the steps in the trial.
    outside = median(t - loop for t, loop in zip(tunes, tune_loops, strict=True)) - median(
        p - loop for p, loop in zip(plains, plain_loops, strict=True)
    )
    inside = median(tune_loops) - median(plain_loops)
    print(
        f"median: plain {plain_s:.1f} s, tune {tune_s:.1f} s: overhead {extra:.1f} s "
        f"= {100 * extra / plain_s:.1f}% of the training\n"
        f"  outside the training loop (start, end, files): {outside:.1f} s\n"
        f"  inside it ({args.reports - 1} reports; the steps): {inside:.1f} s, of which "
        f"validation on {args.val_tasks} tasks {1e3 * validation:.0f} ms per report"
    )


if __name__ == "__main__":
    main()
