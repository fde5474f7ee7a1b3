"""A learned optimizer against tuned SGD, Adam and RMSprop, over several training seeds.

Meta-trains a shipped learned-optimizer config once per seed (``distmeta train``; a run folder
that already holds ``final.pt`` is reused), then runs ``distmeta eval --json`` on it: each
baseline tuned on the run's validation problems, every optimizer on fresh test problems for
twice the horizon. Prints, per optimizer, the mean over seeds of log10 of the mean loss at the
horizon and at twice it with a 95 % t-interval, the chosen learning rates, divergences, and
(with a redraw) the steps each needs to get back to its own loss before the redraw, the
steps it took to reach that loss from step 0 (how much faster than starting afresh it gets
back), and the steps back to tuned Adam's loss before the redraw (one level for all: a lower
loss before the redraw is further to get back to).

    python benchmarks/lstm_optimizer.py configs/lstm_quadratic.yaml --seeds 1 2 3
    python benchmarks/lstm_optimizer.py configs/lstm_quadratic.yaml --seeds 1 2 3 \
        --set task.redraw_at=50 --name redraw
    python benchmarks/lstm_optimizer.py configs/lstm_sinusoid.yaml --seeds 1 2 3 \
        --eval-set "model.hidden=[40,40]"     # trained on a 20-unit MLP, tested on 40-40
    python benchmarks/lstm_optimizer.py configs/lstm_quadratic.yaml --seeds 1 2 3 \
        --eval-set eval.checkpoint=final      # the final weights, whatever the config says
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from distmeta.runs.optimizers import steps_to
from distmeta.runs.stream_metrics import interval


def slug(override: str) -> str:
    """A file-name part for one ``key=value`` evaluation override."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", override).strip("_")


def distmeta(*args: str) -> str:
    """Run the CLI in a fresh process, at the lowest priority; its stdout."""
    command = ["nice", "-n", "19", sys.executable, "-m", "distmeta.cli", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--eval-set", dest="eval_overrides", action="append", default=[])
    parser.add_argument("--tasks", type=int, default=100, help="test problems per seed")
    parser.add_argument("--name", default="", help="suffix of the run folders")
    parser.add_argument("--root", default="runs/bench-lstm")
    args = parser.parse_args()

    stem = Path(args.config).stem + (f"-{args.name}" if args.name else "")
    results = []
    for seed in args.seeds:
        run = Path(args.root) / f"{stem}-seed{seed}"
        if not (run / "final.pt").exists():
            began = time.perf_counter()
            sets = [
                f"--set={o}" for o in [f"seed={seed}", "tracking.enabled=false", *args.overrides]
            ]
            distmeta("train", args.config, *sets, "--run-dir", str(run), "--no-progress")
            print(f"seed {seed}: trained in {time.perf_counter() - began:.0f} s", flush=True)
        saved = run / f"eval{''.join('-' + slug(o) for o in args.eval_overrides)}.json"
        if not saved.exists():  # an evaluation already made of this run is reused
            sets = [f"--set={o}" for o in args.eval_overrides]
            out = distmeta("eval", str(run), "--json", "--tasks", str(args.tasks), *sets)
            saved.write_text(out.strip().splitlines()[-1])
        result = json.loads(saved.read_text())
        results.append(result)

    horizon = str(results[0]["horizon"])
    twice = str(results[0]["steps"][-1])
    print(
        f"\n{stem}, seeds {args.seeds}, {args.tasks} test problems each; "
        f"log10 of the mean loss (mean over seeds ± 95 % t-interval)"
    )
    print(
        f"{'optimizer':<10} {'@' + horizon:>16} {'@' + twice:>16}  learning rates  diverged@{twice}"
        + (
            "  to its own loss before the redraw: steps back after it, steps from step 0;"
            " steps back to Adam's"
            if results[0].get("redraw_at")
            else ""
        )
    )
    per_seed = []
    for name in results[0]["curves"]:
        curves = [r["curves"][name] for r in results]
        cells = []
        for key in (horizon, twice):
            values = [float(c["log10_final"][key]) for c in curves]
            over_seeds = interval(values)
            cells.append(f"{over_seeds.mean:8.3f} ± {over_seeds.ci95:5.3f}")
            per_seed.append(f"{name} @{key}: " + ", ".join(f"{v:.3f}" for v in values))
        rates = ",".join(
            f"step {c.get('step')}" if c["lr"] is None else f"{c['lr']:g}" for c in curves
        )
        diverged = ",".join(str(c["diverged"][-1]) for c in curves)
        line = f"{name:<10} {cells[0]:>16} {cells[1]:>16}  {rates:<14}  {diverged}"
        if results[0].get("redraw_at"):
            adams = [
                steps_to(c["loss"], r["redraw_at"], r["curves"]["adam"]["loss"][r["redraw_at"] - 1])
                for c, r in zip(curves, results, strict=True)
            ]
            afresh = [
                steps_to(c["loss"], 0, c["loss"][r["redraw_at"] - 1])
                for c, r in zip(curves, results, strict=True)
            ]
            line += "  " + ",".join(str(c["recovery_steps"]) for c in curves)
            line += ", from 0: " + ",".join(str(a) for a in afresh)
            line += "; " + ",".join(str(a) for a in adams)
        print(line)
    print("per seed, in the order of --seeds:\n  " + "\n  ".join(per_seed))
    for key in (horizon, twice):
        learned = [float(r["curves"]["learned"]["log10_final"][key]) for r in results]
        for name in ("sgd", "adam", "rmsprop"):
            gaps = [
                float(r["curves"][name]["log10_final"][key]) - value
                for r, value in zip(results, learned, strict=True)
            ]
            gap = interval(gaps)
            print(f"learned below {name} at @{key} by {gap.mean:.3f} ± {gap.ci95:.3f} log10 units")


if __name__ == "__main__":
    main()
