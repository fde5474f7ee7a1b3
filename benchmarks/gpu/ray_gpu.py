"""Task workers on a GPU (issue 20): the Ray engine's CUDA path against the local engine.

For the second-order Omniglot Conv4 configs (5-way and 20-way 1-shot, meta-batch 32) and the
sinusoid MAML config, in one process run: the local engine (one process; ``vmap`` over tasks,
which ``execution: auto`` chooses on CUDA), then the Ray engine with 1, 2 and 4 task workers
sharing one GPU (``engine.worker_resources.num_gpus`` 1, 1/2 and 1/4, one CPU each), sync and
then async, the learner on the CPU. Every run starts from the same initial parameters and
takes ``WARMUP`` steps (they include ``engine.transport: auto``'s measured steps and the
start of its gloo group), then the timed steps. Per run:

- tasks/s of the timed steps, against the local engine's;
- sync: the share of the timed steps' wall time that is not the slowest worker's compute
  (which includes building its tasks on its CPU: the local run reports that time alone);
- each worker's device and execution, and its GPU memory: torch's peak in tensors and what
  NVML counts for its process (CUDA context and cache included);
- the parameters after the last step against the local engine's after as many steps: equal
  within float rounding for sync runs and one async worker (no staleness), reported for
  the others.

The sinusoid config runs with ``algorithm.compile: false``: compiling costs tens of seconds
in every worker process, more than this whole measurement's steps. Results are appended to
``results.jsonl`` as each run ends (a run that fails is recorded and the next one starts);
``env.json`` and ``summary.md`` complete them. The runs go in order of what matters most
(``TASKS``' order, sync before async); those not started within ``--deadline-s`` of the
start are recorded as skipped, so the whole call ends in time. It exits 1 if a run failed
or parameters expected equal differ by more than ``EQUAL_WITHIN``.

Without a CUDA device the same flow runs on the CPU, workers with ``num_gpus: 0`` and no
memory figures; ``--tiny`` shrinks the networks, meta-batches and timed steps: the CPU dry
run of the recipe (``benchmarks/gpu/README.md``). Normally started by ``run.sh``::

    python benchmarks/gpu/ray_gpu.py --data data/omniglot --out results/
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import yaml

from distmeta.config import ExperimentConfig, apply_overrides, parse_config
from distmeta.data.arrow import ImageRows, write_image_set
from distmeta.engine.local import LocalEngine
from distmeta.engine.ray_engine import RayEngine
from distmeta.engine.ray_engine.transport import MEASURED_STEPS
from distmeta.engine.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
WARMUP = MEASURED_STEPS + 2
"""Steps before the timed ones: ``auto``'s measured steps, then two on the transport it
chose (a gloo group forms at the first)."""
WORKERS = (1, 2, 4)
MODES = ("sync", "async")
MIB = 2**20
EQUAL_WITHIN = 1e-3
"""Largest difference from the local engine's parameters, over the norm of the local
engine's whole update, that counts as float rounding. On a CPU the CPU dry run found the
engines bit for bit equal but for the sinusoid on 4 workers (1.8e-7: the workers' sums
added in another order); on CUDA the workers' smaller batches can also take other cuDNN
algorithms, whose convolutions run in TF32 by default (``cudnn_allow_tf32`` in env.json).
On the Conv4 no bound of this kind holds after many Adam steps: its convolution biases feed
batch norm, get rounding as their gradient, and Adam moves them a full step whatever its
size; two local runs one float32 ulp apart are 0.29 of the update apart after 23 steps
(``benchmarks/rounding_drift.py``; BENCHMARKS.md, "The GPU run")."""


@dataclass(frozen=True)
class Task:
    config: str
    """The shipped config, under configs/."""
    overrides: tuple[str, ...]
    """What this measurement changes in it."""
    steps: int
    """Timed steps (a few seconds of the local engine's on an H200, by BENCHMARKS.md)."""
    tiny: tuple[str, ...]
    """``--tiny``: a network and meta-batch small enough for a dry run on 2 CPU cores."""


TASKS = {  # in the order they run: the deadline cuts the last ones
    "omniglot5": Task(
        "omniglot_5w1s_maml.yaml",
        ("train.meta_batch_size=32",),
        100,
        ("model.hidden=8", "train.meta_batch_size=4"),
    ),
    "sinusoid": Task(
        "sinusoid_maml.yaml", ("algorithm.compile=false",), 300, ("train.meta_batch_size=4",)
    ),
    "omniglot20": Task(
        "omniglot_20w1s_maml.yaml",
        ("train.meta_batch_size=32",),
        40,
        ("model.hidden=8", "train.meta_batch_size=4", "algorithm.inner_steps=1"),
    ),
}
TINY_STEPS = 3


def experiment(name: str, data: Path, tiny: bool, *overrides: str) -> ExperimentConfig:
    """The config of ``TASKS[name]`` with its and the run's overrides."""
    task = TASKS[name]
    raw = yaml.safe_load((REPO / "configs" / task.config).read_text())
    extra = [*task.overrides, *(task.tiny if tiny else ())]
    if raw["task"]["name"] == "fewshot":
        extra.append(f"task.path={data}")
    extra += ["tracking.enabled=false", "engine.step_timeout_s=60", *overrides]
    return parse_config(apply_overrides(raw, extra))


def synthetic_omniglot(folder: Path, classes: int = 964, drawers: int = 20) -> Path:
    """A prepared image set shaped as Omniglot's background set (``classes`` characters of
    ``drawers`` 28x28 drawings, 30 alphabets), of random strokes: what the measurement runs on
    where no data was carried. Timings and the engines' agreement do not depend on what the
    pixels show; ``env.json`` records ``"data": "synthetic"``."""
    generator = np.random.default_rng(0)
    count = classes * drawers
    pixels = np.where(generator.random((count, 28, 28, 1)) < 0.15, 0, 255).astype(np.uint8)
    character = [f"character{c % 40 + 1:02d}" for c in range(classes) for _ in range(drawers)]
    alphabet = [f"Alphabet_{c // 40:02d}" for c in range(classes) for _ in range(drawers)]
    drawer = [d + 1 for _ in range(classes) for d in range(drawers)]
    files = [f"synthetic/{index:05d}.png" for index in range(count)]
    path = folder / "images_background.arrow"
    write_image_set(
        path,
        ImageRows(alphabet, character, drawer, files, pixels),
        dataset="omniglot",
        source="synthetic",
        source_sha256=None,
        content_sha256="0" * 64,
        invert=True,
        held_out=False,
    )
    return path


def worker_overrides(workers: int, cuda: bool) -> list[str]:
    """Ray engine settings: on CUDA each worker holds 1/``workers`` of the GPU and a CPU;
    without one, no GPU and a share of the CPUs Ray has (a dry run on few cores)."""
    if cuda:
        resources = [f"engine.worker_resources.num_gpus={1 / workers}"]
        resources.append("engine.worker_resources.num_cpus=1")
    else:
        cpus = min(1.0, ray.cluster_resources()["CPU"] / workers)
        resources = [
            "engine.worker_resources.num_gpus=0",
            f"engine.worker_resources.num_cpus={cpus}",
        ]
    return ["engine.name=ray", f"engine.workers={workers}", *resources]


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([params[name].detach().cpu().double().flatten() for name in sorted(params)])


def compare(params: dict, reference: dict, initial: dict) -> dict[str, Any]:
    """How far ``params`` are from the local engine's ``reference`` after as many steps:
    the largest element's difference, and the difference's norm over that of the local
    engine's whole update from ``initial``."""
    ours, theirs = _flat(params), _flat(reference)
    diff = ours - theirs
    return {
        "params_bitwise_equal": bool(torch.equal(ours, theirs)),
        "params_max_abs_diff": float(diff.abs().max()),
        "params_diff_over_update": float(diff.norm() / (theirs - _flat(initial)).norm()),
    }


def nvml_mib(pids: list[int]) -> list[float | None] | str:
    """GPU memory NVML counts for each process (CUDA context and cache included), in MiB;
    the error instead where NVML cannot be read (the figure is then left out)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception as error:  # no pynvml, or NVML refused: a missing figure, not a failure
        return f"{type(error).__name__}: {error}"
    used = {process.pid: process.usedGpuMemory for process in running}
    return [used[pid] / MIB if used.get(pid) is not None else None for pid in pids]


def run_local(config: ExperimentConfig, steps: int, cuda: bool) -> tuple[dict, dict, dict]:
    """The local engine's record, and its parameters before and after ``WARMUP + steps``."""
    engine = LocalEngine(config)
    exp = engine.experiment
    initial = engine.params()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    for _ in engine.run(0, WARMUP):
        pass
    _sync(cuda)
    warmup = time.perf_counter() - began
    began = time.perf_counter()
    for _ in engine.run(WARMUP, WARMUP + steps):
        pass
    _sync(cuda)
    wall = time.perf_counter() - began
    sampled = range(WARMUP, WARMUP + min(steps, 20))
    began = time.perf_counter()
    for step in sampled:
        exp.plan.batch(exp.source, step)
    sample_s = (time.perf_counter() - began) / len(sampled)
    record = {
        "engine": "local",
        "device": str(exp.device),
        "execution": exp.algorithm.resolved_execution(exp.device),
        "warmup_s": warmup,
        "tasks_per_s": steps * config.train.meta_batch_size / wall,
        "step_ms": 1e3 * wall / steps,
        "sample_ms": 1e3 * sample_s,
        "peak_mib": torch.cuda.max_memory_allocated() / MIB if cuda else None,
    }
    params = engine.params()
    engine.close()
    del engine, exp
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record, initial, params


def run_ray(
    config: ExperimentConfig, steps: int, cuda: bool, reference: tuple[dict, dict] | None
) -> dict[str, Any]:
    """One Ray engine run's record (see the module's docstring)."""
    sync = config.engine.mode == "sync"
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        engine = RayEngine(config, RunDir(folder))
        try:
            start_s = time.perf_counter() - began
            began = time.perf_counter()
            for _ in engine.run(0, WARMUP):
                pass
            warmup = time.perf_counter() - began
            began = time.perf_counter()
            records = list(engine.run(WARMUP, WARMUP + steps))
            wall = time.perf_counter() - began
            params = engine.params()
            placement = [
                {key: entry[key] for key in ("index", "device", "execution", "pid")}
                for entry in engine.pool.placement
            ]
            if cuda:
                memory = ray.get([worker.device_memory.remote() for worker in engine.pool.workers])
                nvml = nvml_mib([entry["pid"] for entry in placement])
                for index, entry in enumerate(placement):
                    entry["peak_mib"] = memory[index]["peak"] / MIB
                    entry["reserved_mib"] = memory[index]["reserved"] / MIB
                    entry["nvml_mib"] = nvml if isinstance(nvml, str) else nvml[index]
            record: dict[str, Any] = {
                "engine": "ray",
                "transport": engine.transport,
                "start_s": start_s,
                "warmup_s": warmup,
                "tasks_per_s": steps * config.train.meta_batch_size / wall,
                "step_ms": 1e3 * wall / steps,
                "placement": placement,
            }
        finally:
            engine.close()
    if sync:
        compute = [r["worker_seconds"] for r in records]
        record["compute_ms"] = 1e3 * statistics.median(compute)
        record["not_compute_share"] = 1 - sum(compute) / wall
    else:
        record["rejected"] = sum(r["rejected_count"] for r in records)
        record["staleness_max"] = max(r["staleness_max"] for r in records)
    if reference is not None:
        initial, final = reference
        record["params_expected_equal"] = sync or config.engine.workers == 1
        record.update(compare(params, final, initial))
    return record


def start_ray(cuda: bool) -> dict[str, Any]:
    """A local Ray on 127.0.0.1 for every run. Where Ray does not detect the GPU torch sees,
    it is told (and the record says so)."""
    options = {
        "address": "local",
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "object_store_memory": 2**30,
    }
    ray.init(**options)
    detected = ray.cluster_resources().get("GPU", 0.0)
    if cuda and detected < 1:
        ray.shutdown()
        ray.init(**options, num_gpus=torch.cuda.device_count())
    return {"ray_detected_gpus": detected, "ray_resources": ray.cluster_resources()}


def environment(cuda: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if cuda:
        info["gpu_total_mib"] = torch.cuda.mem_get_info()[1] / MIB
    return info


def _line(entry: dict[str, Any]) -> str:
    """One result as one line of the log."""
    head = f"{entry['mode']:>5} {entry['task']:<10} workers={entry['workers']}"
    if "error" in entry or "skipped" in entry:
        return f"{head}: {entry.get('error') or entry['skipped']}"
    text = f"{head}: {entry['tasks_per_s']:8.1f} tasks/s"
    if "vs_local" in entry:
        text += f" ({entry['vs_local']:.2f}x local)"
    if "transport" in entry:
        text += f", {entry['transport']}, start {entry['start_s']:.1f} s"
    if "not_compute_share" in entry:
        text += f", not compute {100 * entry['not_compute_share']:.1f} %"
    if "params_diff_over_update" in entry:
        text += f", params diff {entry['params_diff_over_update']:.1e} of the update"
    peaks = [w.get("peak_mib") for w in entry.get("placement", [])] or [entry.get("peak_mib")]
    if peaks[0] is not None:
        text += f", peak {max(peaks):.0f} MiB per process"
    return text


def summary(entries: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    rows = [
        "| task | mode | workers | tasks/s | x local | transport | not compute | "
        "params diff / update | peak MiB per worker (torch) | NVML MiB per worker | start s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        if "tasks_per_s" not in e:
            rows.append(f"| {e['task']} | {e['mode']} | {e['workers']} | "
                        f"{e.get('error') or e.get('skipped')} |||||||")  # fmt: skip
            continue
        workers = e.get("placement", [])
        peak = [w["peak_mib"] for w in workers if w.get("peak_mib") is not None]
        nvml = [w["nvml_mib"] for w in workers if isinstance(w.get("nvml_mib"), float)]
        share = e.get("not_compute_share")
        diff = e.get("params_diff_over_update")
        cells = [
            e["task"],
            e["mode"],
            str(e["workers"]),
            f"{e['tasks_per_s']:.1f}",
            f"{e['vs_local']:.2f}" if "vs_local" in e else "",
            e.get("transport", e.get("execution", "")),
            f"{100 * share:.1f} %" if share is not None else "",
            f"{diff:.1e}" if diff is not None else "",
            f"{max(peak):.0f}" if peak else (f"{e['peak_mib']:.0f}" if e.get("peak_mib") else ""),
            f"{max(nvml):.0f}" if nvml else "",
            f"{e['start_s']:.1f}" if "start_s" in e else "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "omniglot")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--workers", nargs="+", type=int, default=list(WORKERS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tiny", action="store_true", help="dry-run sizes (see TASKS)")
    parser.add_argument("--deadline-s", type=float, default=380.0)
    parser.add_argument(
        "--steps", type=int, help="timed steps of every task (default: each task's own)"
    )
    args = parser.parse_args()
    began = time.perf_counter()
    cuda = torch.cuda.is_available()
    args.out.mkdir(parents=True, exist_ok=True)
    info = environment(cuda)
    if not any(args.data.glob("*.arrow")):
        args.data = Path(tempfile.mkdtemp(prefix="synthetic-omniglot-"))  # not in $OUT
        synthetic_omniglot(args.data)
        info["data"] = "synthetic"
        print(f"no prepared Omniglot carried: synthetic images in {args.data}")
    else:
        info["data"] = str(args.data)
    print(("CUDA: " if cuda else "no CUDA device, a CPU dry run: ") + json.dumps(info))
    info.update(start_ray(cuda))
    (args.out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    results = (args.out / "results.jsonl").open("a")
    entries: list[dict[str, Any]] = []

    def keep(entry: dict[str, Any]) -> None:
        entry["elapsed_s"] = time.perf_counter() - began
        entries.append(entry)
        results.write(json.dumps(entry) + "\n")
        results.flush()
        print(_line(entry), flush=True)

    def attempt(head: dict[str, Any], measure) -> dict[str, Any] | None:
        if time.perf_counter() - began > args.deadline_s:
            keep({**head, "skipped": f"not started: past --deadline-s {args.deadline_s:g}"})
            return None
        try:
            return measure()
        except Exception as error:  # one failed run must not cost the rest of the GPU lease
            traceback.print_exc()
            keep({**head, "error": f"{type(error).__name__}: {error}".splitlines()[0]})
            return None

    steps = {
        name: args.steps or (TINY_STEPS if args.tiny else TASKS[name].steps) for name in args.tasks
    }
    local: dict[str, dict] = {}
    references: dict[str, tuple[dict, dict]] = {}
    for name in args.tasks:
        head = {"task": name, "mode": "local", "workers": 0}
        config = experiment(name, args.data, args.tiny, "engine.name=local")
        done = attempt(head, lambda c=config, n=name: run_local(c, steps[n], cuda))
        if done is not None:
            record, initial, final = done
            local[name], references[name] = record, (initial, final)
            keep({**head, **record})
    for mode in args.modes:
        for name in args.tasks:
            for workers in args.workers:
                head = {"task": name, "mode": mode, "workers": workers}
                overrides = [*worker_overrides(workers, cuda), f"engine.mode={mode}"]
                config = experiment(name, args.data, args.tiny, *overrides)
                reference = references.get(name)
                record = attempt(
                    head, lambda c=config, n=name, r=reference: run_ray(c, steps[n], cuda, r)
                )
                if record is not None:
                    if name in local:
                        record["vs_local"] = record["tasks_per_s"] / local[name]["tasks_per_s"]
                    keep({**head, **record})
    ray.shutdown()
    results.close()
    table = summary(entries)
    (args.out / "summary.md").write_text(table)
    print(f"\n{info['device']}, {time.perf_counter() - began:.0f} s\n{table}")
    failed = [e for e in entries if "error" in e]
    unequal = [
        e
        for e in entries
        if e.get("params_expected_equal") and e["params_diff_over_update"] > EQUAL_WITHIN
    ]
    if failed or unequal:
        raise SystemExit(f"{len(failed)} runs failed, {len(unequal)} differ from the local engine")


if __name__ == "__main__":
    main()
