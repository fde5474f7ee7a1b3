"""Build an experiment from its config: the task source, the model, the algorithm with its
inner rule, and the plan of each step's tasks. One registry per kind.

Every process (driver, Ray worker, learner, a loaded run) builds them the same way, so the
same config and seed give the same initial weights and the same tasks everywhere. Adding a
model, a task source, an algorithm or an inner rule is its own file (and config section) plus
one line in the registry of its kind here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from math import prod
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn

from distmeta.algorithms import MAML, InnerRule, MetaAlgorithm, MetaSGDRule, Reptile, SGDRule
from distmeta.config import (
    AlgorithmConfig,
    Conv4Config,
    ExperimentConfig,
    FewShotTaskConfig,
    MLPConfig,
    SinusoidTaskConfig,
)
from distmeta.errors import ConfigError
from distmeta.models import MLP, Conv4
from distmeta.tasks import MetaBatchPlan, Sinusoid, TaskSource

__all__ = [
    "ALGORITHMS",
    "INNER_RULES",
    "MODELS",
    "TASK_SOURCES",
    "Experiment",
    "Split",
    "TaskShape",
    "build_algorithm",
    "build_experiment",
    "build_model",
    "build_task_source",
    "resolve_device",
]

Split = Literal["train", "eval"]
_Built = TypeVar("_Built")


class TaskShape(Protocol):
    """What a model needs to know of its tasks (a task source, or an exported model's spec)."""

    kind: str
    input_shape: tuple[int, ...]
    output_size: int

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]: ...


@dataclass
class Experiment:
    """The objects one config describes, on one device."""

    config: ExperimentConfig
    source: TaskSource
    model: nn.Module
    algorithm: MetaAlgorithm
    plan: MetaBatchPlan
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


def _registered(registry: Mapping[str, _Built], name: str, field: str) -> _Built:
    """``registry[name]``, or a :class:`ConfigError` naming ``field`` and the known names."""
    if name not in registry:
        raise ConfigError(f"{field}: unknown {name!r} (known: {', '.join(sorted(registry))})")
    return registry[name]


# --- task sources -------------------------------------------------------------------------


def _sinusoid(task: SinusoidTaskConfig, config: ExperimentConfig, split: Split) -> TaskSource:
    shots, query = _sizes(task, config, split)
    return Sinusoid(
        shots=shots,
        query=query,
        amplitude=task.amplitude,
        phase=task.phase,
        x_range=task.x_range,
        dtype=_dtype(config),
    )


def _fewshot(task: FewShotTaskConfig, config: ExperimentConfig, split: Split) -> TaskSource:
    from distmeta.tasks import FewShotImages  # brings pyarrow: only for image tasks

    evaluating = split == "eval"
    shots, query = _sizes(task, config, split)
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


def _sizes(task: Any, config: ExperimentConfig, split: Split) -> tuple[int, int]:
    """Support and query size of a task of ``split``: evaluation may set its own."""
    evaluating = split == "eval"
    shots = config.eval.shots if evaluating and config.eval.shots is not None else task.shots
    query = config.eval.query if evaluating and config.eval.query is not None else task.query
    return shots, query


TASK_SOURCES: dict[str, Callable[[Any, ExperimentConfig, Split], TaskSource]] = {
    "sinusoid": _sinusoid,
    "fewshot": _fewshot,
}
"""``task.name`` -> the source of that section."""


# --- models -------------------------------------------------------------------------------


def _mlp(spec: MLPConfig, tasks: TaskShape) -> nn.Module:
    return MLP(prod(tasks.input_shape), spec.hidden, tasks.output_size)


def _conv4(spec: Conv4Config, tasks: TaskShape) -> nn.Module:
    channels, height, width = tasks.input_shape
    if height != width:
        raise ConfigError(f"model: conv4 needs square images, the task gives {height}x{width}")
    return Conv4(channels, tasks.output_size, spec.hidden, image_size=height)


MODELS: dict[str, Callable[[Any, TaskShape], nn.Module]] = {"mlp": _mlp, "conv4": _conv4}
"""``model.name`` -> the network of that section, sized for the tasks."""


# --- algorithms and inner rules -----------------------------------------------------------

ALGORITHMS: dict[str, Callable[[AlgorithmConfig], Callable[..., MetaAlgorithm]]] = {
    "maml": lambda spec: partial(MAML, step_loss_weights=spec.step_loss_weights),
    "fomaml": lambda spec: partial(
        MAML, first_order=True, step_loss_weights=spec.step_loss_weights
    ),
    "reptile": lambda spec: Reptile,
}
"""``algorithm.name`` -> the algorithm's constructor with the options only it takes (called
then with the model, the loss and the options every algorithm takes)."""

INNER_RULES: dict[str, Callable[[AlgorithmConfig], InnerRule]] = {
    "sgd": lambda spec: SGDRule(spec.inner_lr),
    "metasgd": lambda spec: MetaSGDRule(spec.inner_lr),
}
"""``algorithm.inner_rule`` -> the rule, built from the algorithm section."""


def build_task_source(config: ExperimentConfig, split: Split = "train") -> TaskSource:
    """The configured task source.

    ``split="eval"`` uses the evaluation ways, shots and query size and, for few-shot images,
    the classes of ``task.eval_split`` (never the training classes).
    """
    build = _registered(TASK_SOURCES, config.task.name, "task.name")
    return build(config.task, config, split)


def build_model(config: ExperimentConfig, tasks: TaskShape) -> nn.Module:
    """The configured network, sized for ``tasks``, with the run's seed."""
    build = _registered(MODELS, config.model.name, "model.name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build(config.model, tasks)
    return model.to(_dtype(config))


def build_algorithm(config: ExperimentConfig, model: nn.Module, tasks: TaskShape) -> MetaAlgorithm:
    """The configured algorithm with its inner rule, for ``model`` and the loss of ``tasks``."""
    spec = config.algorithm
    make = _registered(ALGORITHMS, spec.name, "algorithm.name")(spec)
    rule = _registered(INNER_RULES, spec.inner_rule, "algorithm.inner_rule")(spec)
    try:
        # The schema checked every field but zero_init, whose names only the model knows.
        return make(
            model,
            tasks.loss_fn(),
            inner_steps=spec.inner_steps,
            inner_rule=rule,
            execution=spec.execution,
            compile=spec.compile,
            zero_init=spec.zero_init,
            task_threads=spec.task_threads,
        )
    except ValueError as error:
        raise ConfigError(f"algorithm.zero_init: {error}") from error


def build_experiment(config: ExperimentConfig, device: torch.device | None = None) -> Experiment:
    """Source, model, algorithm and plan of ``config``; the model is moved to ``device``."""
    device = device or resolve_device(config.engine.device)
    source = build_task_source(config)
    model = build_model(config, source).to(device)
    algorithm = build_algorithm(config, model, source)
    plan = MetaBatchPlan(config.seed, config.train.meta_batch_size)
    return Experiment(config, source, model, algorithm, plan, device, _dtype(config))
