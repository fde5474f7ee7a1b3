"""A learned inner rule (the LSTM optimizer, or Meta-SGD's rates) against MAML with SGD.

Sinusoid regression with K=10 support points, the 40-40 MLP, five inner steps in
meta-training and at evaluation: MAML meta-trains the initialisation with plain SGD (rate
0.01, the paper's), or the initialisation together with the LSTM rule (Ravi & Larochelle
style; ``--rule metasgd``: Meta-SGD's learned per-parameter rates, started at SGD's 0.01),
for the same number of meta-training steps and tasks. Each run is evaluated on 1,000 fresh
tasks (``distmeta eval``: the query MSE after 0..5 steps, with its 95 % interval); the table
gives the MSE after five steps per seed and the mean difference over seeds with a 95 %
t-interval.

    python benchmarks/lstm_maml_inner.py --seeds 1 2 --steps 300 --meta-batch 10
    python benchmarks/lstm_maml_inner.py --seeds 1 2 --steps 300 --meta-batch 10 \
        --lstm-set "algorithm.lstm.momenta=[0.5,0.9,0.99]" --lstm-set algorithm.lstm.direct=true \
        --name momenta          # the rule with momentum features and a direct path
    python benchmarks/lstm_maml_inner.py --seeds 100 101 --steps 1000 --rule metasgd \
        --rule-set algorithm.rule_outer_lr=1e-4 --name r1e-4   # the rates at their own outer rate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from distmeta.runs.stream_metrics import interval

CONFIG = "configs/sinusoid_maml.yaml"
RULES = {
    "sgd": ["algorithm.inner_rule=sgd", "algorithm.inner_lr=0.01"],
    "lstm": ["algorithm.inner_rule=lstm", "algorithm.lstm.scale=0.01"],
    "metasgd": ["algorithm.inner_rule=metasgd", "algorithm.inner_lr=0.01"],
}


def distmeta(*args: str) -> str:
    command = ["nice", "-n", "19", sys.executable, "-m", "distmeta.cli", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=10)
    parser.add_argument("--root", default="runs/bench-lstm")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="every run")
    parser.add_argument("--rule", choices=["lstm", "metasgd"], default="lstm")
    parser.add_argument(
        "--rule-set",
        "--lstm-set",
        dest="rule_overrides",
        action="append",
        default=[],
        help="the learned rule's runs only, e.g. algorithm.lstm.direct=true",
    )
    parser.add_argument("--name", default="", help="suffix of the learned rule's run folders")
    args = parser.parse_args()
    rules = {"sgd": RULES["sgd"], args.rule: RULES[args.rule] + args.rule_overrides}
    common = [
        "task.query=40",
        "algorithm.inner_steps=5",
        "algorithm.compile=false",
        # The shipped config's later additions (a rate decay from step 40,000, two weighted
        # inner steps), off: these runs are short and take five plain steps.
        "algorithm.outer_lr_decay=null",
        "algorithm.step_loss_weights=null",
        f"train.steps={args.steps}",
        f"train.meta_batch_size={args.meta_batch}",
        f"train.checkpoint_every={args.steps}",
        "eval.inner_steps=5",
        "tracking.enabled=false",
        *args.overrides,
    ]
    final: dict[str, list[float]] = {rule: [] for rule in rules}
    for seed in args.seeds:
        for rule, sets in rules.items():
            label = f"{rule}-{args.name}" if args.name and rule == args.rule else rule
            run = Path(args.root) / f"maml-{label}-{args.steps}-seed{seed}"
            if not (run / "final.pt").exists():
                began = time.perf_counter()
                overrides = [f"--set={o}" for o in [f"seed={seed}", *common, *sets]]
                distmeta("train", CONFIG, *overrides, "--run-dir", str(run), "--no-progress")
                print(f"{rule} seed {seed}: trained in {time.perf_counter() - began:.0f} s")
            result = json.loads(distmeta("eval", str(run), "--json").strip().splitlines()[-1])
            final[rule].append(result["loss"][5])
            print(
                f"{rule} seed {seed}: MSE after 0/1/5 steps "
                f"{result['loss'][0]:.3f} / {result['loss'][1]:.3f} / "
                f"{result['loss'][5]:.3f} ± {result['loss_ci95'][5]:.3f}",
                flush=True,
            )
    gaps = [s - learned for s, learned in zip(final["sgd"], final[args.rule], strict=True)]
    gap = interval(gaps)
    print(
        f"MSE after 5 steps, sgd - {args.rule}: {gap.mean:.3f} ± {gap.ci95:.3f} (per seed {gaps})"
    )


if __name__ == "__main__":
    main()
