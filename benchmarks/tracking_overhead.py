"""What MLflow tracking costs a training run, at one metric batch per step.

The same training (by default sinusoid MAML with the paper's 40-40 MLP and meta-batch 25;
``--config`` takes any experiment file) runs with ``log_every: 1`` and a checkpoint every 100
steps, with and without :class:`~distmeta.tracking.MLflowTracker`, alternating, several times
in this one process. The table shows medians of:

- ``steady ms/step``: wall time per step over the second half of the run (from the records'
  ``time``), once the tracker's writer process has started;
- ``loop s``: the whole training loop (``TrainResult.wall_time``: steps, records, checkpoints);
- ``CPU s``: CPU time of this process and of the tracker's writer process;
- ``fixed s``: the tracker's cost outside the loop (opening the run; plots, adaptation curve,
  final upload);
- ``calls ms/step``: time spent inside the tracker's ``on_metrics`` and ``on_checkpoint``, the
  part of the cost the training thread pays whatever the machine (the rest is the writer
  process and the shipping thread competing for cores, which a busy machine turns into wall
  time).

Torch runs one intra-op thread (``--threads``): on a small shared machine its idle threads
otherwise spin and make single runs 10-40x slower at random.

    . ../shared/offline-env.sh
    python benchmarks/tracking_overhead.py                      # embedded sqlite store
    python benchmarks/tracking_overhead.py --server             # a local `mlflow server`
    python benchmarks/tracking_overhead.py --config configs/omniglot_5w1s_maml.yaml \\
        --set train.meta_batch_size=8 --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import yaml

import distmeta as dm
from distmeta.config import apply_overrides, parse_config, read_yaml
from distmeta.engine.rundir import MetricsLog, RunDir
from distmeta.tracking import MLflowTracker

SINUSOID = {
    "task": {"name": "sinusoid", "shots": 10, "query": 10},
    "model": {"name": "mlp", "hidden": [40, 40]},
    "algorithm": {"name": "maml"},
    "train": {"meta_batch_size": 25},
    "eval": {"tasks": 100, "inner_steps": 10},
}


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the tracker's writer)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Timed:
    """Forwards to the tracker and sums the time of the calls made inside the training loop."""

    def __init__(self, tracker: MLflowTracker):
        self.tracker = tracker
        self.seconds = 0.0

    def on_start(self, *args) -> None:
        self.tracker.on_start(*args)

    def on_metrics(self, record) -> None:
        started = time.perf_counter()
        self.tracker.on_metrics(record)
        self.seconds += time.perf_counter() - started

    def on_checkpoint(self, *args) -> None:
        started = time.perf_counter()
        self.tracker.on_checkpoint(*args)
        self.seconds += time.perf_counter() - started

    def on_end(self, result) -> None:
        self.tracker.on_end(result)


def _one_run(config, run_dir: str, tracked: bool) -> dict[str, float]:
    started, cpu = time.perf_counter(), _cpu_seconds()
    calls = 0.0
    if tracked:
        with MLflowTracker(config) as tracker:
            timed = _Timed(tracker)
            result = dm.train(config, run_dir=run_dir, callbacks=[timed], progress=False)
            calls = timed.seconds
    else:
        result = dm.train(config, run_dir=run_dir, progress=False)
    total = time.perf_counter() - started
    records = MetricsLog.read(RunDir(run_dir))
    half = records[len(records) // 2 - 1]
    steady = (records[-1]["time"] - half["time"]) / (records[-1]["step"] - half["step"])
    return {
        "steady ms/step": 1000 * steady,
        "loop s": result.wall_time,
        "CPU s": _cpu_seconds() - cpu,
        "fixed s": total - result.wall_time,
        "calls ms/step": 1000 * calls / result.steps,
    }


@contextmanager
def local_mlflow_server(root: Path):
    """A local ``mlflow server`` (sqlite, one worker) for the duration of the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
    command += ["--artifacts-destination", str(root / "server-artifacts")]
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment file (default: sinusoid MAML 40-40)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=2000, help="steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--server", action="store_true", help="track to a local mlflow server")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    raw = read_yaml(args.config) if args.config else SINUSOID
    forced = [f"train.steps={args.steps}", "train.log_every=1", "train.checkpoint_every=100"]
    raw = apply_overrides(raw, [*args.overrides, *forced, "tracking.experiment=overhead"])
    samples: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="distmeta-bench-") as scratch:
        root = Path(scratch)
        store = (
            local_mlflow_server(root)
            if args.server
            else nullcontext(f"sqlite:///{root / 'mlflow.db'}")
        )
        with store as uri:
            config = parse_config(apply_overrides(raw, [f"tracking.uri={uri}"]))
            _one_run(config, str(root / "warm-up"), tracked=True)  # imports, store tables
            for repeat in range(args.repeats):
                for tracked in (False, True):
                    sample = _one_run(config, str(root / f"run-{repeat}-{int(tracked)}"), tracked)
                    samples[tracked].append(sample)
                    mode = "tracked" if tracked else "untracked"
                    shown = ", ".join(f"{k} {v:.3f}" for k, v in sample.items())
                    print(f"run {repeat} {mode}: {shown}", file=sys.stderr)

    where = "mlflow server (http, sqlite, 1 worker)" if args.server else "embedded sqlite"
    spec = yaml.safe_dump({k: raw[k] for k in ("task", "model", "algorithm", "train")})
    print(f"{args.steps} steps, log_every 1, torch threads {args.threads}, store: {where}")
    print(f"medians of {args.repeats} runs per mode, alternating; config:\n{spec}")
    columns = list(samples[False][0])
    print(f"{'':>10}" + "".join(f"{c:>16}" for c in columns))
    medians = {
        tracked: {c: statistics.median(s[c] for s in rows) for c in columns}
        for tracked, rows in samples.items()
    }
    for tracked in (False, True):
        row = "".join(f"{medians[tracked][c]:16.3f}" for c in columns)
        print(f"{'tracked' if tracked else 'untracked':>10}{row}")
    relative = ("steady ms/step", "loop s", "CPU s")
    change = [medians[True][c] / medians[False][c] - 1 if c in relative else None for c in columns]
    cells = "".join(f"{'':>16}" if x is None else f"{100 * x:15.2f}%" for x in change)
    print(f"{'overhead':>10}{cells}")


if __name__ == "__main__":
    main()
