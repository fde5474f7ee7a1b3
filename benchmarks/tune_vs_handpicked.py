"""Does a search beat the paper's hand-picked setting at the same total compute?

1. The hand-picked config (``--baseline``; default ``configs/sinusoid_maml.yaml``, 70,000
   steps) is trained once. The figures in BENCHMARKS.md were measured when that file was the
   paper's one-step setting on 25 tasks, whose compute the search's matches; since 2026-12-04
   it takes two inner steps on 50 tasks (about four times the compute).
2. The search (``--search``; default ``configs/tune_sinusoid.yaml``: 8 trials of 70,000 / 8
   steps, ASHA) runs with ``distmeta.tune.run_search``: its trials together train at most as
   many steps as the hand-picked run.
3. Both are measured on the same ``--tasks`` fresh tasks (seed ``--eval-seed``, which neither
   the training nor the search's validation saw) after ``--adapt-steps`` adaptation steps:
   the hand-picked run's final parameters, and the best trial's (its own run folder, trained
   within the search's budget).
4. With ``--retrain``, the best config is also trained with the hand-picked run's number of
   steps (extra compute) and measured the same way.

Torch runs one intra-op thread in this process (``--threads``), as each trial does (one CPU
per trial), so both sides compute alike; trials run two at a time on a 2-core machine.

    . ../shared/offline-env.sh
    python benchmarks/tune_vs_handpicked.py --retrain                   # sinusoid, MSE
    python benchmarks/tune_vs_handpicked.py --baseline configs/omniglot_5w1s_cpu.yaml \\
        --search configs/tune_omniglot.yaml --tasks 600 --adapt-steps 3 # Omniglot, accuracy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import ray
import torch

import distmeta as dm
from distmeta.config import load_config
from distmeta.engine.layout import ParamLayout
from distmeta.engine.rundir import RunDir
from distmeta.tune import run_search


def measure(
    run_dir: str, tasks: int, seed: int, steps: int, at_step: int | None = None
) -> dict[str, float]:
    """Query loss (and accuracy) after ``steps`` adaptation steps, with 95% intervals, of the
    final parameters or of the checkpoint of training step ``at_step``."""
    run = dm.load_run(run_dir)
    if at_step is not None:
        learner = RunDir(run_dir).load_state(RunDir(run_dir).checkpoint_name(at_step))
        learner = learner["engine"]["learner"]
        layout = ParamLayout(
            tuple(learner["layout"]["names"]), tuple(map(tuple, learner["layout"]["shapes"]))
        )
        params = {
            k: v.to(run.params[k].dtype) for k, v in layout.unflatten(learner["theta"]).items()
        }
        run = dataclasses.replace(run, params=params, step=at_step)
    result = dm.evaluate(run, tasks=tasks, seed=seed, steps=steps)
    out = {"loss": result.loss[-1], "loss_ci95": result.loss_ci95[-1]}
    if result.accuracy is not None:
        out["accuracy"] = result.accuracy[-1]
        out["accuracy_ci95"] = result.accuracy_ci95[-1]
    return out


def train(config, run_dir: str) -> float:
    started = time.perf_counter()
    dm.train(config, run_dir=run_dir, progress=False)
    return time.perf_counter() - started


def describe(name: str, metrics: dict[str, float], extra: str) -> str:
    text = f"{name:<28} loss {metrics['loss']:.4f} ± {metrics['loss_ci95']:.4f}"
    if "accuracy" in metrics:
        text += (
            f"   accuracy {100 * metrics['accuracy']:.2f}% ± {100 * metrics['accuracy_ci95']:.2f}"
        )
    return f"{text}   {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="configs/sinusoid_maml.yaml")
    parser.add_argument("--search", default="configs/tune_sinusoid.yaml")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--eval-seed", type=int, default=1_000_003)
    parser.add_argument("--adapt-steps", type=int, default=1)
    parser.add_argument(
        "--baseline-run",
        help="a finished run of --baseline to measure instead of training it again (its "
        "checkpoints must include the step the best run reaches for that comparison)",
    )
    parser.add_argument("--retrain", action="store_true", help="also train the best config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--json", help="write the numbers to this file")
    parser.add_argument(
        "--address", default="local", help="Ray to use (default: a new local instance)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ray.init(address=args.address, _node_ip_address="127.0.0.1", include_dashboard=False)

    root = Path(args.out or tempfile.mkdtemp(prefix="tune-bench-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    untracked = ["tracking.enabled=false"]
    search = load_config(args.search, untracked)
    # Checkpoints where the trials report: the hand-picked run is also measured at the step
    # the best trial reached (the same compute per run).
    baseline = load_config(
        args.baseline, [*untracked, f"train.checkpoint_every={search.tune.report_every}"]
    )
    print(f"runs in {root}", flush=True)

    def score(run_dir: str, at_step: int | None = None) -> dict[str, float]:
        return measure(run_dir, args.tasks, args.eval_seed, args.adapt_steps, at_step)

    numbers: dict[str, dict] = {}
    handpicked = args.baseline_run or str(root / "handpicked")
    seconds = math.nan
    if args.baseline_run is None:
        seconds = train(baseline, handpicked)
    numbers["handpicked"] = {
        **score(handpicked),
        "steps": baseline.train.steps,
        "wall_s": seconds,
    }
    print(describe("hand-picked", numbers["handpicked"], f"{seconds:.0f} s"), flush=True)

    started = time.perf_counter()
    result = run_search(search, str(root / "search"), config_file=args.search, progress=False)
    seconds = time.perf_counter() - started
    used = result.steps
    best = result.best
    numbers["searched"] = {
        **score(best.run_dir),
        "steps": best.step,
        "search_steps": used,
        "wall_s": seconds,
        "best": {k: v for k, v in best.values.items()},
        "trials": [
            {"name": t.name, "status": t.status, "step": t.step, **t.values, **t.metrics}
            for t in result.trials
        ],
    }
    print(
        describe(
            "searched (best run)",
            numbers["searched"],
            f"{len(result.trials)} trials"
            + (" and the best one continued" if best.status == "continued" else "")
            + f", {used} steps in all "
            f"({used / baseline.train.steps:.2f}x hand-picked), {seconds:.0f} s; best "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in best.values.items()
            ),
        ),
        flush=True,
    )

    if best.status == "continued":
        trial = next(t for t in result.trials if f"{t.name}-continued" == best.name)
        numbers["best_trial_before_continuation"] = {
            **score(trial.run_dir),
            "steps": trial.step,
        }
        print(
            describe(
                f"its trial at step {trial.step}", numbers["best_trial_before_continuation"], ""
            ),
            flush=True,
        )

    folder = RunDir(handpicked)
    if folder.exists(folder.checkpoint_name(best.step)):
        numbers["handpicked_at_best_step"] = {
            **score(handpicked, best.step),
            "steps": best.step,
        }
        print(
            describe(f"hand-picked at step {best.step}", numbers["handpicked_at_best_step"], ""),
            flush=True,
        )

    if args.retrain:
        config = load_config(
            result.best_config, [*untracked, f"train.steps={baseline.train.steps}"]
        )
        seconds = train(config, str(root / "retrained"))
        numbers["retrained"] = {
            **score(str(root / "retrained")),
            "steps": baseline.train.steps,
            "wall_s": seconds,
        }
        print(
            describe("searched, retrained", numbers["retrained"], f"{seconds:.0f} s"),
            flush=True,
        )

    key = "accuracy" if "accuracy" in numbers["handpicked"] else "loss"
    better = max if key == "accuracy" else min
    winner = better(numbers, key=lambda name: numbers[name][key])
    assert all(math.isfinite(n[key]) for n in numbers.values())
    print(f"best {key}: {winner}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
