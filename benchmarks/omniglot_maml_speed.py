"""Second-order MAML speed on the MAML paper's Omniglot network, against other libraries.

The network of Finn et al. (2017): four blocks of [3x3 convolution with 64 filters, batch norm
on the current batch's statistics, ReLU, 2x2 max-pooling] and a linear head, on 28x28
grayscale images; 5-way 1-shot tasks with 15 queries per class, meta-batch 32, inner learning
rate 0.4, 1 and 5 inner steps, second order. Every candidate computes the mean meta-gradient
of the same meta-batch (synthetic images with fixed seeds: speed does not depend on pixels):

- ``learn2learn``: ``learn2learn.algorithms.MAML`` (``clone``, ``adapt``, ``backward`` per
  task), the model an ``nn.Sequential`` with ``nn.BatchNorm2d(track_running_stats=False)``;
- ``higher``: ``higher.innerloop_ctx`` with ``torch.optim.SGD``, the same model;
- ``torchopt``: TorchOpt's functional API (``torchopt.sgd``, ``apply_updates``) over
  ``torch.func.functional_call`` of the same model;
- ``distmeta``: ``distmeta.algorithms.MAML(Conv4, F.cross_entropy, 0.4, k).meta_gradient`` with
  the execution that it chooses itself on this device, and the variants in ``VARIANTS``.

Each measurement runs in its own process (so that each peak resident memory is its own), and
the candidates take turns (A B C A B C ...) for ``repeats`` rounds; the table shows medians
(and the best) over rounds of the tasks per second of ``batches`` meta-batches after one
warm-up meta-batch, and medians of the peak resident set size (``ru_maxrss``) and of its
growth from after imports, model and data. GFLOP/s counts the convolution and matrix-product
FLOPs of one task's meta-gradient (``torch.utils.flop_counter.FlopCounterMode`` on the plain
autograd computation of the ``higher``/learn2learn model, the same for every candidate), and
the fp32 matrix-product peak is a large ``sgemm`` measured in the same run with the same
threads. On a shared machine a measurement during which other processes kept the cores busy
is repeated (``--quiet``, ``--tries``): their load slows multi-threaded runs many times over.

Needs the benchmark-only environment of ``benchmarks/setup_baselines.sh``::

    bash benchmarks/setup_baselines.sh            # into benchmarks/.venv
    benchmarks/.venv/bin/python benchmarks/omniglot_maml_speed.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

WAYS, SHOTS, QUERIES, META_BATCH, INNER_LR, IMAGE = 5, 1, 15, 32, 0.4, 28

BASELINES = ("learn2learn", "higher", "torchopt")
VARIANTS: dict[str, dict] = {
    "distmeta": {},
    "distmeta-one-task": {"task_threads": 1},
    "distmeta-vmap": {"execution": "vmap"},
    "distmeta-vmap-chunk4": {"execution": "vmap", "vmap_chunk_size": 4},
}
"""distmeta candidates: the keyword arguments given to ``distmeta.algorithms.MAML``."""


@dataclass
class Settings:
    steps: list[int] = field(default_factory=lambda: [1, 5])
    """Inner steps; one table row per candidate and value."""
    repeats: int = 5
    """Rounds of all candidates; the table shows medians over rounds."""
    batches: int = 3
    """Timed meta-batches per measurement, after one warm-up meta-batch."""
    threads: int = 2
    """``torch.set_num_threads`` in every measuring process."""
    candidates: list[str] = field(default_factory=lambda: [*BASELINES, *VARIANTS])
    """Which candidates to run."""
    quiet: float = 0.05
    """Repeat a measurement while other processes used more than this share of the cores."""
    tries: int = 4
    """At most this many runs of one measurement."""


# --- the measuring process -----------------------------------------------------------------


def _data(torch):
    generator = torch.Generator().manual_seed(0)
    support_x = torch.randn(META_BATCH, WAYS * SHOTS, 1, IMAGE, IMAGE, generator=generator)
    query_x = torch.randn(META_BATCH, WAYS * QUERIES, 1, IMAGE, IMAGE, generator=generator)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(META_BATCH, -1)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES).expand(META_BATCH, -1)
    return support_x, support_y, query_x, query_y


def _sequential_conv4(torch):
    """The baselines' network: the same layers and parameter order as ``distmeta``'s Conv4."""
    from torch import nn

    torch.manual_seed(0)
    layers, channels = [], 1
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = 64
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, WAYS))


def _import_learn2learn_maml():
    """``learn2learn.algorithms.maml`` without the package ``__init__``s, which import
    torchvision, gym and the data sets; the module itself needs only torch."""
    for name in ("learn2learn", "learn2learn.algorithms"):
        spec = importlib.util.find_spec(name)
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = package
    return importlib.import_module("learn2learn.algorithms.maml")


def _learn2learn(torch, F, k: int, data) -> Callable[[], None]:
    maml = _import_learn2learn_maml().MAML(_sequential_conv4(torch), lr=INNER_LR)
    sx, sy, qx, qy = data

    def step():
        maml.zero_grad()
        for i in range(META_BATCH):
            learner = maml.clone()
            for _ in range(k):
                learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
            (F.cross_entropy(learner(qx[i]), qy[i]) / META_BATCH).backward()

    return step


def _higher(torch, F, k: int, data) -> Callable[[], None]:
    import higher

    model = _sequential_conv4(torch)
    inner = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    sx, sy, qx, qy = data

    def step():
        model.zero_grad()
        for i in range(META_BATCH):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, opt):
                for _ in range(k):
                    opt.step(F.cross_entropy(fmodel(sx[i]), sy[i]))
                (F.cross_entropy(fmodel(qx[i]), qy[i]) / META_BATCH).backward()

    return step


def _torchopt(torch, F, k: int, data) -> Callable[[], None]:
    import torchopt

    model = _sequential_conv4(torch)
    names = [name for name, _ in model.named_parameters()]
    meta = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    inner = torchopt.sgd(INNER_LR)
    sx, sy, qx, qy = data

    def forward(params, x):
        return torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))

    def step():
        total = [torch.zeros_like(p) for p in meta]
        for i in range(META_BATCH):
            params, state = meta, inner.init(meta)
            for _ in range(k):
                loss = F.cross_entropy(forward(params, sx[i]), sy[i])
                grads = torch.autograd.grad(loss, params, create_graph=True)
                updates, state = inner.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            loss = F.cross_entropy(forward(params, qx[i]), qy[i])
            for t, g in zip(total, torch.autograd.grad(loss, meta), strict=True):
                t.add_(g, alpha=1 / META_BATCH)

    return step


def _distmeta(torch, F, k: int, data, device: str = "cpu", **options) -> Callable[[], None]:
    """One meta-batch's meta-gradient by distmeta's MAML (``data`` already on ``device``)."""
    import distmeta as dm

    torch.manual_seed(0)
    model = dm.models.Conv4(1, WAYS, 64, IMAGE).to(device)
    algorithm = dm.algorithms.MAML(model, F.cross_entropy, INNER_LR, k, **options)
    params = algorithm.init_params()
    batch = dm.tasks.TaskBatch(*data)

    def step():
        algorithm.meta_gradient(params, batch)

    return step


def _measure(name: str, k: int, batches: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    data = _data(torch)
    if name in VARIANTS:
        step = _distmeta(torch, F, k, data, **VARIANTS[name])
    else:
        step = {"learn2learn": _learn2learn, "higher": _higher, "torchopt": _torchopt}[name](
            torch, F, k, data
        )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    step()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(batches):
        step()
    elapsed = time.perf_counter() - started
    return {
        "tasks_per_s": batches * META_BATCH / elapsed,
        "warmup_s": warmup,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_mib": rss_before,
    }


def _machine(steps: list[int], threads: int) -> dict:
    """fp32 matrix-product peak with ``threads`` threads, and FLOPs of one task."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        rates.append(2 * 4096**3 / (time.perf_counter() - started) / 1e9)
    flops = {str(k): count for k, count in task_flops(steps).items()}
    return {"matmul_gflops": statistics.median(rates), "task_flops": flops}


def task_flops(steps: list[int]) -> dict[int, int]:
    """Convolution and matrix-product FLOPs of one task's second-order meta-gradient (plain
    autograd on the baselines' network), for each number of inner steps."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = _sequential_conv4(torch)
    forward = functional_forward(model)
    task = [t[0] for t in _data(torch)]
    flops = {}
    for k in steps:
        with FlopCounterMode(display=False) as counter:
            plain_meta_gradient(forward, list(model.parameters()), k, *task)
        flops[k] = counter.get_total_flops()
    return flops


def functional_forward(model) -> Callable:
    """``forward(params, x)``: ``model`` called with a list of tensors as its parameters."""
    import torch

    names = [name for name, _ in model.named_parameters()]

    def forward(params, x):
        return torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))

    return forward


def plain_meta_gradient(forward: Callable, meta: list, k: int, sx, sy, qx, qy) -> tuple:
    """One task's second-order MAML meta-gradient with plain autograd: ``k`` SGD steps on
    the support set recorded with ``create_graph=True``, then the query loss's gradient with
    respect to ``meta``."""
    import torch
    import torch.nn.functional as F

    fast = meta
    for _ in range(k):
        loss = F.cross_entropy(forward(fast, sx), sy)
        grads = torch.autograd.grad(loss, fast, create_graph=True)
        fast = [p - INNER_LR * g for p, g in zip(fast, grads, strict=True)]
    return torch.autograd.grad(F.cross_entropy(forward(fast, qx), qy), meta)


# --- the driver ----------------------------------------------------------------------------


def _busy_seconds() -> float:
    """CPU seconds that all processes have spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as file:
        fields = [int(v) for v in file.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_for_quiet(quiet: float, patience: float = 120.0) -> None:
    """Wait (at most ``patience`` seconds) for a second in which the machine's cores were
    busy less than ``quiet`` of the time."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        busy = _busy_seconds()
        time.sleep(1.0)
        if (_busy_seconds() - busy) / os.cpu_count() <= quiet:
            return


def _child(arguments: list[str], quiet: float, tries: int) -> dict:
    """Run a measuring process; repeat it (up to ``tries`` times, each after waiting for a
    quiet moment) while other processes used more than ``quiet`` of the machine's cores during
    the run. On a shared machine, OpenMP threads that wait at a barrier for a thread the
    scheduler gave to another process make a run 2 to 100 times slower: such a run measures
    the neighbours, not the candidate."""
    for attempt in range(1, tries + 1):
        _wait_for_quiet(quiet)
        busy, own = _busy_seconds(), os.times()
        started = time.perf_counter()
        output = subprocess.run(
            [sys.executable, __file__, *arguments], capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - started
        after = os.times()
        own_cpu = (after.children_user - own.children_user) + (
            after.children_system - own.children_system
        )
        foreign = max(0.0, _busy_seconds() - busy - own_cpu) / (wall * os.cpu_count())
        if output.returncode != 0:
            raise RuntimeError(f"{' '.join(arguments)} failed:\n{output.stderr[-3000:]}")
        result = json.loads(output.stdout.strip().splitlines()[-1])
        result.update(foreign_load=foreign, attempts=attempt)
        if foreign <= quiet:
            break
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=Settings().steps)
    parser.add_argument("--repeats", type=int, default=Settings.repeats)
    parser.add_argument("--batches", type=int, default=Settings.batches)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument("--candidates", nargs="+", default=Settings().candidates)
    parser.add_argument("--quiet", type=float, default=Settings.quiet)
    parser.add_argument("--tries", type=int, default=Settings.tries)
    parser.add_argument("--json", help="also write all measurements to this file")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "K"), help=argparse.SUPPRESS)
    parser.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, k = args.child
        print(json.dumps(_measure(name, int(k), args.batches, args.threads)))
        return
    if args.machine:
        print(json.dumps(_machine(args.steps, args.threads)))
        return

    common = ["--batches", str(args.batches), "--threads", str(args.threads)]
    machine = _child(["--machine", "--steps", *map(str, args.steps), *common], args.quiet, 8)
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.repeats):
        for k in args.steps:
            for name in args.candidates:
                result = _child(["--child", name, str(k), *common], args.quiet, args.tries)
                runs.setdefault((name, k), []).append(result)
                print(
                    f"round {round_ + 1}/{args.repeats} k={k} {name}: "
                    f"{result['tasks_per_s']:.2f} tasks/s, {result['peak_mib']:.0f} MiB "
                    f"(other processes {100 * result['foreign_load']:.0f}% of the cores, "
                    f"run {result['attempts']})",
                    file=sys.stderr,
                    flush=True,
                )
    peak = machine["matmul_gflops"]
    print(
        f"\nthreads {args.threads}, fp32 matmul peak {peak:.0f} GFLOP/s (4096^2 sgemm); medians "
        f"(and best) of {args.repeats} rounds x {args.batches} meta-batches of {META_BATCH} tasks; "
        "busy: most that other processes used of the cores in a kept run"
    )
    print(
        f"{'k':>2} {'candidate':<22} {'tasks/s':>7} {'(best)':>7} {'vs l2l':>6} {'peak MiB':>8} "
        f"{'+setup':>7} {'GFLOP/s':>7} {'% peak':>6} {'warm-up':>7} {'busy':>5}"
    )
    for k in args.steps:
        flops = machine["task_flops"][str(k)]
        base = runs.get(("learn2learn", k))
        base_rate = statistics.median(r["tasks_per_s"] for r in base) if base else None
        for name in args.candidates:
            results = runs[(name, k)]
            rate = statistics.median(r["tasks_per_s"] for r in results)
            gflops = rate * flops / 1e9
            ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
            peak_mib = statistics.median(r["peak_mib"] for r in results)
            setup_mib = statistics.median(r["setup_mib"] for r in results)
            print(
                f"{k:>2} {name:<22} {rate:>7.2f} {max(r['tasks_per_s'] for r in results):>7.2f} "
                f"{ratio:>6} {peak_mib:>8.0f} {peak_mib - setup_mib:>+7.0f} {gflops:>7.1f} "
                f"{100 * gflops / peak:>5.1f}% "
                f"{statistics.median(r['warmup_s'] for r in results):>6.1f}s "
                f"{100 * max(r['foreign_load'] for r in results):>4.0f}%"
            )
        print(f"   ({flops / 1e9:.2f} GFLOP per task's meta-gradient at k={k})")
    print(
        "peak MiB: peak resident memory of the measuring process; +setup: its growth from "
        "after imports, model and data"
    )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {
                    "machine": machine,
                    "runs": {f"{n}/k={k}": r for (n, k), r in runs.items()},
                },
                file,
                indent=1,
            )


if __name__ == "__main__":
    main()
