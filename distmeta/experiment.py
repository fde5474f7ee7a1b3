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

from distmeta.algorithms import (
    L2L,
    MAML,
    InnerRule,
    LSTMRule,
    MetaAlgorithm,
    MetaSGDRule,
    Reptile,
    SGDRule,
)
from distmeta.config import (
    AlgorithmConfig,
    Conv4Config,
    ExperimentConfig,
    FewShotTaskConfig,
    MLPConfig,
    QuadraticModelConfig,
    QuadraticTaskConfig,
    SinusoidTaskConfig,
)
from distmeta.errors import ConfigError
from distmeta.models import MLP, Conv4, QuadraticVariable
from distmeta.tasks import MetaBatchPlan, Quadratic, Sinusoid, TaskSource, TrajectoryPlan

__all__ = [
    "ALGORITHMS",
    "INNER_RULES",
    "MODELS",
    "PLANS",
    "TASK_SOURCES",
    "Algorithm",
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

Algorithm = MetaAlgorithm | L2L
"""What ``algorithm.name`` builds: an algorithm that answers ``meta_gradient(params, batch)``."""


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
    algorithm: Algorithm
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


def _quadratic(task: QuadraticTaskConfig, config: ExperimentConfig, split: Split) -> Quadratic:
    return Quadratic(task.problems, task.dims, task.init_std, task.redraw_at, dtype=_dtype(config))


TASK_SOURCES: dict[str, Callable[[Any, ExperimentConfig, Split], TaskSource]] = {
    "sinusoid": _sinusoid,
    "fewshot": _fewshot,
    "quadratic": _quadratic,
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


def _quadratic_variable(spec: QuadraticModelConfig, tasks: Any) -> nn.Module:
    # The schema pairs this model with the quadratic task, which says how many problems.
    return QuadraticVariable(tasks.problems, tasks.output_size)


MODELS: dict[str, Callable[[Any, TaskShape], nn.Module]] = {
    "mlp": _mlp,
    "conv4": _conv4,
    "quadratic": _quadratic_variable,
}
"""``model.name`` -> the network of that section, sized for the tasks."""


# --- algorithms and inner rules -----------------------------------------------------------


def _meta_algorithm(
    make: Callable[..., MetaAlgorithm],
    spec: AlgorithmConfig,
    model: nn.Module,
    tasks: TaskShape,
    rule: InnerRule,
) -> MetaAlgorithm:
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


def _l2l(spec: AlgorithmConfig, model: nn.Module, tasks: Any, rule: InnerRule) -> L2L:
    unroll = spec.unroll
    return L2L(
        model,
        tasks,
        rule,
        unroll=unroll.length,
        horizon=unroll.horizon,
        meta_loss=unroll.meta_loss,
        second_order=unroll.second_order,
        execution=spec.execution,
        task_threads=spec.task_threads,
    )


ALGORITHMS: dict[str, Callable[[AlgorithmConfig, nn.Module, Any, InnerRule], Algorithm]] = {
    "maml": partial(_meta_algorithm, MAML),
    "fomaml": partial(_meta_algorithm, partial(MAML, first_order=True)),
    "reptile": partial(_meta_algorithm, Reptile),
    "l2l": _l2l,
}
"""``algorithm.name`` -> the algorithm, built from the algorithm section, the model, the task
source and the inner rule."""


def _lstm(config: ExperimentConfig) -> LSTMRule:
    spec = config.algorithm.lstm
    return LSTMRule(spec.hidden, spec.layers, spec.preprocess, spec.p, spec.scale, config.seed)


INNER_RULES: dict[str, Callable[[ExperimentConfig], InnerRule]] = {
    "sgd": lambda config: SGDRule(config.algorithm.inner_lr),
    "metasgd": lambda config: MetaSGDRule(config.algorithm.inner_lr),
    "lstm": _lstm,
}
"""``algorithm.inner_rule`` -> the rule, built from the config (a learned rule's initial
weights from the run's seed)."""

PLANS: dict[str, type[MetaBatchPlan]] = {"l2l": TrajectoryPlan}
"""``algorithm.name`` -> the plan of its steps, where it is not a plain meta-batch of tasks
(:class:`~distmeta.tasks.MetaBatchPlan`)."""


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


def build_algorithm(config: ExperimentConfig, model: nn.Module, tasks: TaskShape) -> Algorithm:
    """The configured algorithm with its inner rule, for ``model`` and the tasks (or problems)
    of ``tasks``."""
    spec = config.algorithm
    make = _registered(ALGORITHMS, spec.name, "algorithm.name")
    rule = _registered(INNER_RULES, spec.inner_rule, "algorithm.inner_rule")(config)
    return make(spec, model, tasks, rule)


def build_experiment(config: ExperimentConfig, device: torch.device | None = None) -> Experiment:
    """Source, model, algorithm and plan of ``config``; the model is moved to ``device``."""
    device = device or resolve_device(config.engine.device)
    source = build_task_source(config)
    model = build_model(config, source).to(device)
    algorithm = build_algorithm(config, model, source)
    make_plan = PLANS.get(config.algorithm.name, MetaBatchPlan)
    plan = make_plan(config.seed, config.train.meta_batch_size)
    return Experiment(config, source, model, algorithm, plan, device, _dtype(config))
