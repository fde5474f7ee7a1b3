"""Build the task source, model and algorithm of an experiment from its config.

Every process (driver, Ray worker, learner, a loaded run) builds them the same way, so the
same config and seed give the same initial weights and the same tasks everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Literal

import torch
from torch import nn

from distmeta.algorithms import MAML, MetaAlgorithm, MetaSGD, Reptile
from distmeta.config import ExperimentConfig
from distmeta.errors import ConfigError
from distmeta.models import MLP, Conv4
from distmeta.tasks import FewShotImages, Sinusoid, TaskSource

__all__ = [
    "Experiment",
    "build_algorithm",
    "build_experiment",
    "build_model",
    "build_task_source",
    "evaluation_config",
    "resolve_device",
]

Split = Literal["train", "eval"]


@dataclass
class Experiment:
    """The objects one config describes, on one device."""

    config: ExperimentConfig
    source: TaskSource
    model: nn.Module
    algorithm: MetaAlgorithm
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when this process sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device: cuda was asked for but this process sees no GPU")
    return torch.device(name)


def _dtype(config: ExperimentConfig) -> torch.dtype:
    return getattr(torch, config.train.dtype)


def evaluation_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` as evaluation builds its model and algorithm: with ``eval.ways`` classes and
    the ``eval.inner_lr`` adaptation rate, where those are set."""
    task, algorithm = {}, {}
    if config.eval.ways is not None:
        task["ways"] = config.eval.ways
    if config.eval.inner_lr is not None:
        algorithm["inner_lr"] = config.eval.inner_lr
    return config.model_copy(
        update={
            "task": config.task.model_copy(update=task),
            "algorithm": config.algorithm.model_copy(update=algorithm),
        }
    )


def build_task_source(config: ExperimentConfig, split: Split = "train") -> TaskSource:
    """The configured task source.

    ``split="eval"`` uses the evaluation ways, shots and query size and, for few-shot images,
    the classes of ``task.eval_split`` (never the training classes).
    """
    task = config.task
    evaluating = split == "eval"
    shots = config.eval.shots if evaluating and config.eval.shots is not None else task.shots
    query = config.eval.query if evaluating and config.eval.query is not None else task.query
    if task.name == "fewshot":
        ways = config.eval.ways if evaluating and config.eval.ways is not None else task.ways
        return FewShotImages(
            task.path,
            ways=ways,
            shots=shots,
            query=query,
            rotations=task.rotations,
            split=task.eval_split if evaluating else "train",
            val_fraction=task.val_fraction,
            split_seed=task.split_seed,
            split_by=task.split_by,
            reflections=task.reflections and not evaluating,
            shift=0 if evaluating else task.shift,
            dtype=_dtype(config),
        )
    if task.name == "sinusoid":
        return Sinusoid(
            shots=shots,
            query=query,
            amplitude=task.amplitude,
            phase=task.phase,
            x_range=task.x_range,
            dtype=_dtype(config),
        )
    raise AssertionError(f"unhandled task {task.name}")  # the schema admits no other name


def build_model(config: ExperimentConfig, source: TaskSource) -> nn.Module:
    """The configured network, sized for the task source, with the run's seed."""
    spec = config.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if spec.name == "mlp":
            model = MLP(prod(source.input_shape), spec.hidden, source.output_size)
        else:
            channels, height, width = source.input_shape
            if height != width:
                raise ConfigError(
                    f"model: conv4 needs square images, the task gives {height}x{width}"
                )
            model = Conv4(channels, source.output_size, spec.hidden, image_size=height)
    return model.to(_dtype(config))


def build_algorithm(
    config: ExperimentConfig, model: nn.Module, source: TaskSource
) -> MetaAlgorithm:
    spec = config.algorithm
    common = {
        "inner_lr": spec.inner_lr,
        "inner_steps": spec.inner_steps,
        "execution": spec.execution,
        "compile": spec.compile,
        "zero_init": spec.zero_init,
        "task_threads": spec.task_threads,
    }
    loss_fn = source.loss_fn()
    try:
        # The schema checked every field but zero_init, whose names only the model knows.
        if spec.name in ("maml", "fomaml"):
            return MAML(model, loss_fn, first_order=spec.name == "fomaml", **common)
        if spec.name == "reptile":
            return Reptile(model, loss_fn, **common)
        return MetaSGD(model, loss_fn, **common)
    except ValueError as error:
        raise ConfigError(f"algorithm.zero_init: {error}") from error


def build_experiment(config: ExperimentConfig, device: torch.device | None = None) -> Experiment:
    """Source, model and algorithm of ``config``; the model is moved to ``device``."""
    device = device or resolve_device(config.engine.device)
    source = build_task_source(config)
    model = build_model(config, source).to(device)
    algorithm = build_algorithm(config, model, source)
    return Experiment(config, source, model, algorithm, device, _dtype(config))
