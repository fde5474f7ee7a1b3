"""Build an experiment from its config: the task source, the model, the algorithm with its
inner rule, and the plan of each step's tasks; for ``distmeta stream``, the streams and the
online learners on them. One registry per kind.

Every process (driver, Ray worker, learner, a loaded run) builds them the same way, so the
same config and seed give the same initial weights and the same tasks everywhere. Adding a
model, a task source, an algorithm or an inner rule is its own file (and config section) plus
one line in the registry of its kind here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from math import prod
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from distmeta.algorithms import (
    L2L,
    MAML,
    InnerRule,
    Joint,
    LSTMRule,
    MetaAlgorithm,
    MetaSGDRule,
    Reptile,
    SGDRule,
)
from distmeta.algorithms.inner import Params
from distmeta.algorithms.online import (
    CMAML,
    FTML,
    FrozenMeta,
    NoAdaptation,
    OnlineLearner,
    OnlineTraining,
)
from distmeta.config import (
    AlgorithmConfig,
    Conv4Config,
    ExperimentConfig,
    FewShotTaskConfig,
    ImageStreamConfig,
    MLPConfig,
    PendulumStreamConfig,
    PendulumTaskConfig,
    QuadraticModelConfig,
    QuadraticTaskConfig,
    SinusoidStreamConfig,
    SinusoidTaskConfig,
    StreamConfig,
)
from distmeta.errors import ConfigError
from distmeta.models import MLP, Conv4, QuadraticVariable
from distmeta.tasks import (
    MetaBatchPlan,
    Quadratic,
    Sinusoid,
    SinusoidStream,
    Stream,
    SwitchingProcess,
    TaskSource,
    TrajectoryPlan,
    task_rng,
)
from distmeta.tasks.switching import DRAWS

__all__ = [
    "ALGORITHMS",
    "BASELINES",
    "INNER_RULES",
    "MODELS",
    "ONLINE_METHODS",
    "PLANS",
    "STREAMS",
    "TASK_SOURCES",
    "Algorithm",
    "Experiment",
    "OnlineStart",
    "Split",
    "TaskShape",
    "build_algorithm",
    "build_experiment",
    "build_learners",
    "build_model",
    "build_online_algorithm",
    "build_stream",
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


def _pendulum(task: PendulumTaskConfig, config: ExperimentConfig, split: Split) -> TaskSource:
    from distmeta.tasks import PendulumDynamics  # brings gymnasium: only for pendulum tasks

    shots, query = _sizes(task, config, split)
    return PendulumDynamics(
        shots=shots,
        query=query,
        gravity=task.gravity,
        mass=task.mass,
        length=task.length,
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
    "pendulum": _pendulum,
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


def _with_options(
    constructor: Callable[[AlgorithmConfig], Callable[..., MetaAlgorithm]],
) -> Callable[[AlgorithmConfig, nn.Module, Any, InnerRule], MetaAlgorithm]:
    """A meta-algorithm whose constructor takes the options only it has from ``spec``."""
    return lambda spec, model, tasks, rule: _meta_algorithm(
        constructor(spec), spec, model, tasks, rule
    )


ALGORITHMS: dict[str, Callable[[AlgorithmConfig, nn.Module, Any, InnerRule], Algorithm]] = {
    "maml": _with_options(lambda spec: partial(MAML, step_loss_weights=spec.step_loss_weights)),
    "fomaml": _with_options(
        lambda spec: partial(MAML, first_order=True, step_loss_weights=spec.step_loss_weights)
    ),
    "reptile": _with_options(lambda spec: Reptile),
    # A stream's joint start is trained from the same file as its meta-learned one; a layer
    # held at zero there (zero_init) would leave a model that adapts nothing unable to predict
    # (and, as a classifier's head, pass no gradient to the rest): joint training learns it.
    "joint": lambda spec, model, tasks, rule: _meta_algorithm(
        Joint, spec.model_copy(update={"zero_init": ()}), model, tasks, rule
    ),
    "l2l": _l2l,
}
"""``algorithm.name`` -> the algorithm, built from the algorithm section, the model, the task
source and the inner rule."""


def _lstm(config: ExperimentConfig) -> LSTMRule:
    spec = config.algorithm.lstm
    try:
        return LSTMRule(
            spec.hidden,
            spec.layers,
            spec.preprocess,
            spec.p,
            spec.scale,
            config.seed,
            spec.momenta,
            spec.direct,
            spec.start,
            spec.start_lr,
            spec.zero_out_bias,
        )
    except ValueError as error:
        raise ConfigError(f"algorithm.lstm: {error}") from None


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


# --- streams and the online learners on them ------------------------------------------------


def _process(spec: StreamConfig) -> SwitchingProcess:
    return SwitchingProcess(spec.alpha, spec.mode_probs)


def _sinusoid_stream(
    spec: SinusoidStreamConfig, config: ExperimentConfig, seed: int, index: int
) -> Stream:
    task = config.task
    return SinusoidStream(
        _process(spec),
        seed,
        index,
        spec.steps,
        points=spec.points,
        amplitude=task.amplitude,
        phase=task.phase,
        x_range=task.x_range,
        ood_amplitude=spec.ood_amplitude,
        ood_frequency=spec.ood_frequency,
        noise_var=spec.noise_var,
        drift=spec.drift,
        dtype=_dtype(config),
    )


def _pendulum_stream(
    spec: PendulumStreamConfig, config: ExperimentConfig, seed: int, index: int
) -> Stream:
    from distmeta.tasks import PendulumStream  # brings gymnasium

    task = config.task
    return PendulumStream(
        _process(spec),
        seed,
        index,
        spec.steps,
        transitions=spec.transitions,
        gravity=task.gravity,
        mass=task.mass,
        length=task.length,
        regimes=spec.regimes,
        ood_gravity=spec.ood_gravity,
        ood_mass=spec.ood_mass,
        ood_length=spec.ood_length,
        ood_regimes=spec.ood_regimes,
        actuator_gains=spec.actuator_gains,
        drift=spec.drift,
        dtype=_dtype(config),
    )


def _image_stream(
    spec: ImageStreamConfig, config: ExperimentConfig, seed: int, index: int
) -> Stream:
    from distmeta.tasks import DigitImages, FewShotImages, ImageStream  # pyarrow, scikit-learn

    task = config.task

    def alphabets(split: str) -> FewShotImages:
        # A pool of classes: its tasks are never sampled whole, images_of draws each step's.
        return FewShotImages(
            task.path,
            ways=spec.ways,
            shots=spec.shots,
            query=1,
            rotations=task.rotations,
            split=split,
            val_fraction=task.val_fraction,
            split_seed=task.split_seed,
            split_by=task.split_by,
            dtype=_dtype(config),
        )

    train, held_out = alphabets("train"), alphabets("val")
    channels, height, width = train.input_shape
    if channels != 1:
        raise ConfigError(
            f"stream: the digits mode is grayscale, task.path holds {channels}-channel images"
        )
    digits = DigitImages((height, width), dtype=_dtype(config))
    try:
        return ImageStream(
            _process(spec),
            seed,
            index,
            spec.steps,
            (train, held_out, digits),
            spec.ways,
            spec.shots,
        )
    except ValueError as error:
        raise ConfigError(f"stream.ways: {error}") from None


STREAMS: dict[str, Callable[[Any, ExperimentConfig, int, int], Stream]] = {
    "sinusoid": _sinusoid_stream,
    "pendulum": _pendulum_stream,
    "images": _image_stream,
}
"""``stream.name`` -> the stream of that section (its in-distribution mode from ``task``)."""


def build_stream(config: ExperimentConfig, seed: int, index: int = 0) -> Stream:
    """Stream ``index`` of ``seed`` as the config's ``stream`` section describes it."""
    if config.stream is None:
        raise ConfigError("stream: the config has no stream section")
    build = _registered(STREAMS, config.stream.name, "stream.name")
    return build(config.stream, config, seed, index)


@dataclass(frozen=True)
class OnlineStart:
    """What every stream's learners start from: the pretrained run's config (its model and
    algorithm), its meta-parameters, and the jointly trained model's parameters. Plain data,
    so it travels to Ray workers."""

    run_config: ExperimentConfig
    meta_params: Params
    joint_params: Params
    meta_lr_factors: dict[str, float] = field(default_factory=dict)
    """The learned rule's meta-parameters at their factor of ``stream.meta_lr``: the one
    ``algorithm.rule_outer_lr`` gave them in meta-training (none without it), so online
    meta-updates keep them at their own rate (Meta-SGD's rates diverge at the network's)."""


def build_online_algorithm(run_config: ExperimentConfig, stream: Stream) -> MetaAlgorithm:
    """The algorithm and model of the pretrained run's config for ``stream``, its tasks run
    one at a time and never compiled: an online step is one task (C-MAML) or a few (FTML),
    where plain autograd beats ``vmap`` (a 40-40 MLP's meta-gradient of one sinusoid task:
    8 against 27 ms on this project's busy 2-core machine) and compiling for each batch size
    would cost more than it saves."""
    spec = run_config.algorithm.model_copy(update={"compile": False, "execution": "loop"})
    run_config = run_config.model_copy(update={"algorithm": spec})
    return build_algorithm(run_config, build_model(run_config, stream), stream)


ONLINE_METHODS: dict[
    str, Callable[[StreamConfig, MetaAlgorithm, np.random.Generator, bool], OnlineLearner]
] = {
    "cmaml": lambda spec, algorithm, rng, told: CMAML(
        algorithm,
        spec.gamma,
        spec.lambda_,
        prolonged=spec.prolonged,
        steps=spec.adapt_steps,
        told_switches=told,
        memory=spec.memory,
        library=spec.library,
        revise=spec.revise,
        jump=spec.jump,
        fitted_test=spec.fitted_test,
        prolong_lr=spec.prolong_lr,
        prolong_steps=spec.prolong_steps,
    ),
    "ftml": lambda spec, algorithm, rng, told: FTML(
        algorithm,
        spec.gamma,
        spec.buffer_tasks,
        spec.buffer_batches,
        spec.meta_batch,
        rng,
        spec.adapt_steps,
        told,
    ),
}
"""``stream.method`` -> the online meta-learner (called with the stream section, the
algorithm, its random draws and whether it is told the switches: the oracle)."""

BASELINES: dict[str, Callable[[StreamConfig, MetaAlgorithm, OnlineStart], OnlineLearner]] = {
    "no_adaptation": lambda spec, algorithm, start: NoAdaptation(algorithm, start.joint_params),
    "frozen_meta": lambda spec, algorithm, start: FrozenMeta(
        algorithm,
        start.meta_params,
        spec.adapt_steps if spec.frozen_steps is None else spec.frozen_steps,
    ),
    "finetune": lambda spec, algorithm, start: OnlineTraining(
        algorithm, start.joint_params, spec.finetune_lr, spec.finetune_steps
    ),
    "online_sgd": lambda spec, algorithm, start: OnlineTraining(
        algorithm, algorithm.init_params(), spec.finetune_lr, spec.finetune_steps
    ),
}
"""The baselines that run beside every online method, by name."""


def build_learners(
    config: ExperimentConfig, start: OnlineStart, stream: Stream, seed: int, index: int = 0
) -> dict[str, OnlineLearner]:
    """Every learner on stream ``index`` of ``seed``: ``method`` (``stream.method``),
    ``oracle`` (the same method told the switches) and the :data:`BASELINES`."""
    spec = config.stream
    if spec is None:
        raise ConfigError("stream: the config has no stream section")
    algorithm = build_online_algorithm(start.run_config, stream)
    make = _registered(ONLINE_METHODS, spec.method, "stream.method")
    learners = {
        "method": make(spec, algorithm, task_rng(seed, 0, index, DRAWS["learner"]), False),
        "oracle": make(spec, algorithm, task_rng(seed, 1, index, DRAWS["learner"]), True),
    }
    learners.update({name: build(spec, algorithm, start) for name, build in BASELINES.items()})
    return learners
