"""Data-path benchmark of the episodic sampler on a prepared image set (issue 4 targets).

1. Throughput: tasks per second that ``FewShotImages`` delivers (5-way 1-shot 15-query, meta-batch
   32, and 20-way 1-shot 15-query, meta-batch 16), against the tasks per second that MAML on
   Conv4 consumes in this process. Target: at least 20 times faster.
2. Memory: N processes sample from the same memory-mapped file at once; each reports, from
   ``/proc/self/smaps``, the file's pages it holds privately and shared with the others, and
   the growth of its private memory (USS) from before opening the file to after sampling. A
   control group of N processes samples a copy of the first 40 classes (the same images and
   tasks, 2% of the data), so that the difference of the two growths is what the data set's
   size costs each process, apart from fixed per-process costs and the working memory of a
   meta-batch. Target: each process adds no more than 10% of the file's size.

Usage::

    python benchmarks/fewshot_sampler.py --path data/omniglot --workers 2 4
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from distmeta.algorithms import MAML
from distmeta.data import ImageRows, ImageSet, resolve_image_set, write_image_set
from distmeta.models import Conv4
from distmeta.tasks import FewShotImages

_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def tasks_per_second(source: FewShotImages, meta_batch: int, batches: int) -> float:
    """Sampling rate over ``batches`` meta-batches (after one warm-up batch)."""
    source.sample(0, 0, range(meta_batch))
    started = time.perf_counter()
    for step in range(1, batches + 1):
        source.sample(0, step, range(meta_batch))
    return batches * meta_batch / (time.perf_counter() - started)


def training_tasks_per_second(source: FewShotImages, meta_batch: int, steps: int) -> float:
    """Rate at which second-order MAML on Conv4 (64 filters) computes meta-gradients."""
    model = Conv4(source.input_shape[0], source.output_size, 64, source.input_shape[1])
    algorithm = MAML(model, source.loss_fn(), inner_lr=0.4, inner_steps=1)
    params = algorithm.init_params()
    batch = source.sample(0, 0, range(meta_batch))
    algorithm.meta_gradient_sum(params, batch)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        algorithm.meta_gradient_sum(params, batch)
    return steps * meta_batch / (time.perf_counter() - started)


def _memory(path: Path | None = None) -> dict[str, int]:
    """Bytes of ``_FIELDS`` for the whole process, or for the mappings of file ``path``."""
    totals = dict.fromkeys(_FIELDS, 0)
    if path is None:
        lines, inside = Path("/proc/self/smaps_rollup").read_text().splitlines(), True
    else:
        lines, inside = Path("/proc/self/smaps").read_text().splitlines(), False
    for line in lines:
        head = line.split()
        if path is not None and "-" in head[0] and not head[0].endswith(":"):
            inside = line.endswith(str(path))  # a mapping's header line
        elif inside and head[0].rstrip(":") in totals:
            totals[head[0].rstrip(":")] += int(head[1]) * 1024
    return totals


def _private(memory: dict[str, int]) -> int:
    return memory["Private_Clean"] + memory["Private_Dirty"]


def _worker(path: str, batches: int, barrier, results) -> None:
    """One process: open the set, sample, and report memory while all hold the mapping."""
    torch.set_num_threads(1)
    before = _memory()
    source = FewShotImages(path, ways=5, shots=1, query=15)
    batch = source.sample(0, 0, range(32))
    del batch
    gc.collect()
    opened = _memory()
    for step in range(1, batches + 1):  # every page of the file is read many times over
        source.sample(step, step, range(32))
    gc.collect()
    barrier.wait()  # all processes have mapped and read the whole file
    after = _memory()
    mapping = _memory(source.path)
    results.put(
        {
            "private_added": _private(after) - _private(before),
            "private_added_by_sampling": _private(after) - _private(opened),
            "file_private": _private(mapping),
            "file_shared": mapping["Shared_Clean"] + mapping["Shared_Dirty"],
            "file_rss": mapping["Rss"],
            "file_pss": mapping["Pss"],
        }
    )
    barrier.wait()  # keep the mapping until every process has measured


def control_copy(path: Path, folder: Path, classes: int = 40) -> Path:
    """A prepared set holding the first ``classes`` classes of ``path``."""
    images = ImageSet(path)
    rows = np.flatnonzero(images.class_id < classes)
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().take(pa.array(rows))
    columns = {name: table.column(name).to_pylist() for name in ("alphabet", "character")}
    copy = ImageRows(
        columns["alphabet"],
        columns["character"],
        table.column("drawer").to_pylist(),
        table.column("file").to_pylist(),
        images.images(rows),
    )
    info = images.info
    settings = {"source_sha256": None, "invert": info.invert, "held_out": False}
    out = folder / "control.arrow"
    write_image_set(
        out, copy, dataset="control", source=info.source, content_sha256="-", **settings
    )
    return out


def memory_per_worker(path: Path, workers: int, batches: int) -> list[dict[str, int]]:
    """Memory reports of ``workers`` processes sampling the same file at the same time."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_worker, args=(str(path), batches, barrier, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="data/omniglot", help="prepared image set")
    parser.add_argument("--batches", type=int, default=300, help="meta-batches per measurement")
    parser.add_argument("--train-steps", type=int, default=3, help="MAML steps timed (0: skip)")
    parser.add_argument("--workers", type=int, nargs="*", default=[2, 4])
    args = parser.parse_args()
    path = resolve_image_set(args.path).resolve()
    size = path.stat().st_size
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = {
        "5w1s15q_mb32": tasks_per_second(FewShotImages(path, 5, 1, 15), 32, args.batches),
        "20w1s15q_mb16": tasks_per_second(FewShotImages(path, 20, 1, 15), 16, args.batches),
    }
    for name, rate in rates.items():
        print(json.dumps({"sampler": name, "tasks_per_s": round(rate, 1)}))
    if args.train_steps:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            source = FewShotImages(path, 5, 1, 15)
            consumed = training_tasks_per_second(source, 32, args.train_steps)
            ratio = rates["5w1s15q_mb32"] / consumed
            print(
                json.dumps(
                    {
                        "maml_conv4_5w1s15q_mb32_threads": threads,
                        "tasks_per_s": round(consumed, 2),
                        "sampler_speedup": round(ratio, 1),
                        "target_20x_met": ratio >= 20,
                    }
                )
            )
    with tempfile.TemporaryDirectory() as folder:
        control = control_copy(path, Path(folder))
        for workers in args.workers:
            reports = memory_per_worker(path, workers, args.batches)
            baseline = memory_per_worker(control, workers, args.batches)
            fixed = statistics.median(r["private_added"] for r in baseline)
            by_data = max(r["private_added"] for r in reports) - fixed
            print(
                json.dumps(
                    {
                        "workers": workers,
                        "file_bytes": size,
                        "per_worker": reports,
                        "control_private_added": [r["private_added"] for r in baseline],
                        "max_private_added_by_data_set": by_data,
                        "max_private_added_by_data_set_pct_of_file": round(100 * by_data / size, 2),
                        "max_file_private_pages_pct_of_file": round(
                            100 * max(r["file_private"] for r in reports) / size, 2
                        ),
                        "target_10pct_met": by_data <= 0.1 * size,
                    }
                )
            )


if __name__ == "__main__":
    main()
