"""Second-order MAML on the Omniglot Conv4 on a CUDA device: distmeta's loop over tasks, its
``vmap`` over tasks (the whole meta-batch, and in chunks), and a plain autograd loop.

The setup of ``omniglot_maml_speed.py`` (5-way 1-shot, 15 queries per class, meta-batch 32,
inner learning rate 0.4, 1 and 5 inner steps), in float32 on the device. One process runs
the candidates in turn for ``--repeats`` rounds; each measurement is the tasks per second of
``--batches`` meta-batches after a warm-up meta-batch (the device synchronised before each
clock reading) and the most memory torch's CUDA allocator held meanwhile
(``torch.cuda.max_memory_allocated`` after a reset). The plain loop is the yardstick the
CPU benchmark found learn2learn, higher and TorchOpt within 10 % of: per task, autograd with
``create_graph=True`` through ``functional_call`` of an ``nn.Sequential`` with native batch
norm. Before timing, the script checks in float64 on the device that distmeta's ``vmap`` and
loop give the same meta-gradient. GFLOP/s counts the same convolution and matrix-product
FLOPs as the CPU benchmark, against a large fp32 matrix product on the device (TF32 off)::

    python benchmarks/omniglot_maml_gpu.py --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from omniglot_maml_speed import (
    META_BATCH,
    _data,
    _distmeta,
    _sequential_conv4,
    functional_forward,
    plain_meta_gradient,
    task_flops,
)

import distmeta as dm

CANDIDATES: dict[str, dict] = {
    "plain-loop": {},
    "distmeta-loop": {"execution": "loop"},
    "distmeta-vmap": {"execution": "vmap"},
    "distmeta-vmap-chunk8": {"execution": "vmap", "vmap_chunk_size": 8},
    "distmeta-vmap-compile": {"execution": "vmap", "compile": True},
}
"""Candidates; the distmeta ones with the keyword arguments given to ``MAML``."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_loop(k: int, data, device: torch.device) -> Callable[[], None]:
    model = _sequential_conv4(torch).to(device)
    forward = functional_forward(model)
    meta = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def step():
        total = [torch.zeros_like(p) for p in meta]
        for i in range(META_BATCH):
            grads = plain_meta_gradient(forward, meta, k, *(t[i] for t in data))
            for t, g in zip(total, grads, strict=True):
                t.add_(g, alpha=1 / META_BATCH)

    return step


def _measure(name: str, k: int, batches: int, data, device: torch.device) -> dict:
    if name == "plain-loop":
        step = _plain_loop(k, data, device)
    else:
        step = _distmeta(torch, F, k, data, device, **CANDIDATES[name])
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    step()
    _sync(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"tasks_per_s": batches * META_BATCH / elapsed, "peak_mib": peak, "warmup_s": warmup}


def _vmap_equals_loop(device: torch.device) -> float:
    """Largest difference between the vmap and loop meta-gradients (float64, small Conv4,
    2 inner steps), relative to the largest gradient element."""
    torch.manual_seed(0)
    model = dm.models.Conv4(1, 3, hidden=8, image_size=16).double().to(device)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 7, 1, 16, 16, dtype=torch.float64, generator=generator).to(device)
    labels = torch.randint(0, 3, (4, 7), generator=generator).to(device)
    batch = dm.tasks.TaskBatch(images[:, :3], labels[:, :3], images[:, 3:], labels[:, 3:])
    grads = []
    for execution in ("loop", "vmap"):
        algorithm = dm.algorithms.MAML(model, F.cross_entropy, 0.3, 2, execution=execution)
        grads.append(algorithm.meta_gradient(algorithm.init_params(), batch)[0])
    loop, vmapped = grads
    scale = max(float(g.abs().max()) for g in loop.values())
    return max(float((loop[n] - vmapped[n]).abs().max()) for n in loop) / scale


def _machine(steps: list[int], device: torch.device) -> dict:
    """fp32 matrix-product peak (TF32 off) and the FLOPs of one task's meta-gradient."""
    torch.backends.cuda.matmul.allow_tf32 = False
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    rates = []
    for _ in range(5):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        rates.append(2 * size**3 / (time.perf_counter() - started) / 1e9)
    return {"matmul_gflops": statistics.median(rates), "task_flops": task_flops(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES)[:4])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="also write all measurements to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}", flush=True)
    check = _vmap_equals_loop(device)
    print(f"float64 vmap against loop meta-gradient: {check:.1e} of the largest element")
    machine = _machine(args.steps, device)
    data = tuple(t.to(device) for t in _data(torch))
    runs: dict[str, list[dict]] = {}
    for round_ in range(args.repeats):
        for k in args.steps:
            for candidate in args.candidates:
                result = _measure(candidate, k, args.batches, data, device)
                runs.setdefault(f"{candidate} k={k}", []).append(result)
                print(
                    f"round {round_ + 1}/{args.repeats} k={k} {candidate}: "
                    f"{result['tasks_per_s']:.1f} tasks/s, {result['peak_mib']:.0f} MiB, "
                    f"warm-up {result['warmup_s']:.1f} s",
                    flush=True,
                )
    peak = machine["matmul_gflops"]
    print(f"\nfp32 matmul peak {peak:.0f} GFLOP/s; medians of {args.repeats} rounds")
    header = f"{'tasks/s':>8} {'vs plain':>8} {'peak MiB':>8} {'% peak':>7}"
    print(f"{'k':>2} {'candidate':<22} {header}")
    for k in args.steps:
        plain = runs.get(f"plain-loop k={k}")
        base = statistics.median(r["tasks_per_s"] for r in plain) if plain else None
        for candidate in args.candidates:
            results = runs[f"{candidate} k={k}"]
            rate = statistics.median(r["tasks_per_s"] for r in results)
            memory = statistics.median(r["peak_mib"] for r in results)
            ratio = f"{rate / base:.2f}x" if base else "-"
            share = 100 * rate * machine["task_flops"][k] / 1e9 / peak
            print(f"{k:>2} {candidate:<22} {rate:>8.1f} {ratio:>8} {memory:>8.0f} {share:>6.2f}%")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": name, "check": check, "machine": machine, "runs": runs})
        )


if __name__ == "__main__":
    main()
