"""How the tasks of a batch run, chosen by measurement: vectorised or one by one, and how many
at once.

Both choices are exact (the per-task gradients are summed in task order either way); they
differ in speed and memory, and the figures behind each rule are in BENCHMARKS.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["Execution", "TaskThreads", "choose_execution", "choose_task_threads"]

Execution = Literal["auto", "loop", "vmap"]
TaskThreads = int | Literal["auto"]


def choose_execution(model: nn.Module, device: torch.device) -> Literal["loop", "vmap"]:
    """How to run the tasks of a batch, by measurement (see BENCHMARKS.md).

    On CUDA, one vectorised call keeps the device busy: second-order MAML on the Omniglot
    Conv4 (meta-batch 32) ran 10.6x (1 inner step) and 14.2x (5) faster than a plain
    autograd loop over tasks on an H200, where distmeta's own loop, written for CPUs, ran
    slower than the plain one. On a CPU, vectorising pays for small dense models, whose
    per-task operations are too small to amortise Python and dispatch overhead, but
    convolutions under ``vmap`` become grouped convolutions that run at half the speed with
    several times the memory: convolutional models loop over tasks.
    """
    if device.type == "cuda":
        return "vmap"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "loop" if has_conv else "vmap"


def choose_task_threads(device: torch.device, tasks: int) -> int:
    """How many tasks of a looped batch run at once, by measurement (see BENCHMARKS.md).

    On a CPU, torch's threads (``torch.get_num_threads()``) each take a whole task, its
    operations single-threaded, instead of sharing every operation: a few-shot task's
    operations are too small to split well across threads. On CUDA, one task at a time.
    """
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), tasks))
