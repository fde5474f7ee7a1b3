"""Learning curve of a training run against wall time: held-out accuracy at every checkpoint.

For the Omniglot CPU target (issue 4): train ``configs/omniglot_5w1s_cpu.yaml`` with the local
engine on a quiet machine, then evaluate each of its checkpoints on the same fresh tasks of the
held-out split (unseen alphabets for that config)::

    distmeta train configs/omniglot_5w1s_cpu.yaml --run-dir runs/omniglot-cpu --no-progress \\
        --set tracking.enabled=false
    python benchmarks/omniglot_cpu_curve.py runs/omniglot-cpu --tasks 600

Each row: the step, the training wall time when that checkpoint was written (``time`` of the
run's ``metrics.jsonl`` record at that step), and loss/accuracy with the 95% interval after
the config's evaluation adaptation steps. The last row is the run's final parameters (when it
finished).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distmeta.engine.rundir import FINAL_FILE, RunDir
from distmeta.runs import evaluate, load_run


def wall_times(run_dir: Path) -> dict[int, float]:
    """Training seconds at each logged step of the run."""
    times = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "time" in record:
            times[int(record["step"])] = float(record["time"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--every", type=int, default=1, help="evaluate every Nth checkpoint")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the run's config for evaluation, as for distmeta eval",
    )
    args = parser.parse_args()

    torch.set_num_threads(2)
    folder = RunDir(args.run_dir)
    times = wall_times(args.run_dir)
    checkpoints: list[int | None] = list(folder.checkpoint_steps()[:: args.every])
    if folder.exists(FINAL_FILE):
        checkpoints.append(None)  # the final parameters
    rows = []
    print(f"{'step':>6} {'wall s':>8} {'loss':>7} {'accuracy':>9} {'ci95':>6}", flush=True)
    for checkpoint in checkpoints:
        run = load_run(args.run_dir, args.overrides, step=checkpoint)
        step = run.step
        result = evaluate(run, tasks=args.tasks, seed=args.seed)
        row = {
            "step": step,
            "wall_s": times.get(step),
            "loss": result.loss[-1],
            "accuracy": result.accuracy[-1],
            "accuracy_ci95": result.accuracy_ci95[-1],
        }
        rows.append(row)
        wall = f"{row['wall_s']:8.0f}" if row["wall_s"] is not None else f"{'-':>8}"
        print(
            f"{step:6d} {wall} {row['loss']:7.3f} {100 * row['accuracy']:8.2f}% "
            f"{100 * row['accuracy_ci95']:5.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
