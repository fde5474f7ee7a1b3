"""Live heap memory of one task's second-order MAML meta-gradient on the Omniglot Conv4.

Peak resident memory (what ``omniglot_maml_speed.py`` reports) also counts what the allocator
keeps after a free and what another thread's arena holds; this measures what the computation
itself holds. One thread computes the meta-gradient of a few 5-way 1-shot tasks (15 queries
per class); after every ATen operation (a ``TorchDispatchMode``, so the backward passes'
operations too) glibc's ``mallinfo2`` gives the bytes in use, and the script prints the
largest rise above the bytes in use before the call, and the operation at which it came.
Linux with glibc only::

    python benchmarks/omniglot_live_memory.py --steps 1 5
"""

from __future__ import annotations

import argparse
import ctypes

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import distmeta as dm

WAYS, QUERIES, IMAGE, INNER_LR = 5, 15, 28, 0.4


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def _in_use_mib() -> float:
    """Bytes handed out by malloc: from its arenas and as separate mappings."""
    info = _libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


class _PeakInUse(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.peak, self.at, self.count = 0.0, "", 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += 1
        in_use = _in_use_mib()
        if in_use > self.peak:
            self.peak, self.at = in_use, f"{func} (operation {self.count})"
        return out


def measure(inner_steps: int, tasks: int) -> tuple[float, str]:
    """Largest rise of the bytes in use during one meta-gradient, in MiB, and where."""
    generator = torch.Generator().manual_seed(0)
    support_x = torch.randn(tasks, WAYS, 1, IMAGE, IMAGE, generator=generator)
    query_x = torch.randn(tasks, WAYS * QUERIES, 1, IMAGE, IMAGE, generator=generator)
    support_y = torch.arange(WAYS).expand(tasks, -1)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES).expand(tasks, -1)
    batch = dm.tasks.TaskBatch(support_x, support_y, query_x, query_y)
    model = dm.models.Conv4(1, WAYS, 64, IMAGE)
    algorithm = dm.algorithms.MAML(model, F.cross_entropy, INNER_LR, inner_steps, task_threads=1)
    params = algorithm.init_params()
    with _PeakInUse():  # warm-up: the allocator's pools, oneDNN's caches, the mode's own
        algorithm.meta_gradient(params, batch)
    before = _in_use_mib()
    with _PeakInUse() as mode:
        algorithm.meta_gradient(params, batch)
    return mode.peak - before, mode.at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--tasks", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for steps in args.steps:
        rise, at = measure(steps, args.tasks)
        print(f"k={steps}: peak {rise:.1f} MiB above the start, at {at}")


if __name__ == "__main__":
    main()
