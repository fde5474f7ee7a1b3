"""The experiment schema: YAML in, a validated :class:`ExperimentConfig` out, clear errors.

Every section refuses unknown keys, wrong types and out-of-range values, and the error names
the dotted path of the field (``algorithm.inner_lr: ...``), so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from distmeta.errors import ConfigError

__all__ = [
    "ASHAConfig",
    "AlgorithmConfig",
    "ContinueBest",
    "Conv4Config",
    "EngineConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FewShotTaskConfig",
    "LSTMRuleConfig",
    "MLPConfig",
    "OuterLRDecay",
    "PBTConfig",
    "QuadraticModelConfig",
    "QuadraticTaskConfig",
    "SearchDimension",
    "SinusoidTaskConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrialResources",
    "TuneConfig",
    "UnrollConfig",
    "WorkerResources",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "parse_config",
    "read_yaml",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered_range(value: tuple[float, float], field: str) -> tuple[float, float]:
    low, high = value
    if not low < high:
        raise ValueError(f"{field} must be [low, high] with low < high, got {list(value)}")
    return value


class SinusoidTaskConfig(_Section):
    """Sinusoid regression (MAML paper): y = A sin(x - phase)."""

    name: Literal["sinusoid"] = "sinusoid"
    """The task source: sinusoid regression."""
    shots: PositiveInt = 10
    """Support points per task (K)."""
    query: PositiveInt = 10
    """Query points per task during meta-training."""
    amplitude: tuple[PositiveFloat, PositiveFloat] = (0.1, 5.0)
    """Range of the amplitude A, drawn uniformly per task."""
    phase: tuple[float, float] = (0.0, math.pi)
    """Range of the phase, drawn uniformly per task."""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """Range of the inputs, drawn uniformly per point."""

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SinusoidTaskConfig:
        _ordered_range(self.amplitude, "amplitude")
        _ordered_range(self.phase, "phase")
        _ordered_range(self.x_range, "x_range")
        return self


class FewShotTaskConfig(_Section):
    """N-way K-shot image classification (Omniglot, mini-ImageNet) from a prepared image set.

    Meta-training draws tasks from the training classes of ``path``; ``distmeta eval`` draws
    them from the classes ``eval_split`` names, so ``--set task.path=<prepared evaluation
    split>`` evaluates on every class of that split.
    """

    name: Literal["fewshot"] = "fewshot"
    """The task source: N-way K-shot image classification."""
    path: str = Field(min_length=1)
    """A prepared ``.arrow`` file or its folder (``distmeta data prepare``), relative to the
    working directory."""
    ways: PositiveInt = 5
    """Classes per task (N)."""
    shots: PositiveInt = 1
    """Support images per class (K)."""
    query: PositiveInt = 15
    """Query images per class."""
    rotations: bool = True
    """Rotations by 0/90/180/270 degrees count as classes (Omniglot protocol); false for
    natural images."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of the file's classes (by character: all rotations together) kept out of
    meta-training for validation."""
    split_seed: NonNegativeInt = 0
    """Seed of the train/validation split of classes (independent of the run's seed)."""
    split_by: Literal["character", "alphabet"] = "character"
    """Hold out single characters, or whole alphabets (validation on unseen alphabets)."""
    reflections: bool = False
    """Meta-training counts the mirror image of each class as a class too (with rotations:
    eight classes per character). Evaluation tasks keep ``rotations`` only."""
    shift: NonNegativeInt = 0
    """Meta-training moves each image by a random 0..``shift`` pixels up or down and left or
    right (edge pixels fill the gap): augmentation against overfitting the training classes.
    Evaluation tasks are never shifted."""
    eval_split: Literal["held_out", "val", "all"] = "held_out"
    """Classes of evaluation tasks: ``held_out`` is every class of a file prepared as held out
    (Omniglot's images_evaluation), else the validation classes."""


class QuadraticTaskConfig(_Section):
    """Batches of quadratic problems ``mean_b ||W_b x_b - y_b||^2`` (Andrychowicz et al., 2016),
    the problems a learned optimizer (``algorithm.name: l2l``) is meta-trained on; the model
    is ``model.name: quadratic`` (the variable ``x``)."""

    name: Literal["quadratic"] = "quadratic"
    """The task source: quadratic problems for a learned optimizer."""
    problems: PositiveInt = 128
    """Independent problems per trajectory, each its own ``x`` (128 in the reference)."""
    dims: PositiveInt = 10
    """Dimension of each problem's ``x``."""
    init_std: NonNegativeFloat = 0.01
    """Standard deviation of the initial ``x``."""
    redraw_at: PositiveInt | None = None
    """Optimizee step from which every ``W`` and ``y`` is drawn anew (a non-stationary
    problem); ``None``: never."""


TaskConfig = Annotated[
    SinusoidTaskConfig | FewShotTaskConfig | QuadraticTaskConfig, Field(discriminator="name")
]


class MLPConfig(_Section):
    """A ReLU multi-layer perceptron; input and output sizes come from the task."""

    name: Literal["mlp"] = "mlp"
    """The network: a ReLU multi-layer perceptron."""
    hidden: tuple[PositiveInt, ...] = (40, 40)
    """Widths of the hidden layers."""


class Conv4Config(_Section):
    """The MAML paper's 4-block convolutional network; channels and ways come from the task."""

    name: Literal["conv4"] = "conv4"
    """The network: four conv blocks and a linear head."""
    hidden: PositiveInt = 64
    """Filters per convolution (64 for Omniglot, 32 for mini-ImageNet)."""


class QuadraticModelConfig(_Section):
    """The variable ``x`` of the quadratic problems (``task.name: quadratic``)."""

    name: Literal["quadratic"] = "quadratic"
    """The optimizee: the quadratic problems' own variable, no network."""


ModelConfig = Annotated[MLPConfig | Conv4Config | QuadraticModelConfig, Field(discriminator="name")]


class OuterLRDecay(_Section):
    """Anneals the outer learning rate: ``outer_lr`` until step ``start``, then down to
    ``final`` x ``outer_lr`` at ``train.steps``. Holding the rate and annealing at the end
    lets a run be extended from any checkpoint before ``start`` with the same result."""

    shape: Literal["cosine", "linear"] = "cosine"
    """How the rate falls from ``start`` to ``train.steps``."""
    start: NonNegativeInt = 0
    """The first step with a lower rate; earlier steps use ``outer_lr``."""
    final: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """The rate reached at ``train.steps``, as a fraction of ``outer_lr``."""


class LSTMRuleConfig(_Section):
    """The learned optimizer of ``algorithm.inner_rule: lstm``: a coordinate-wise LSTM shared by
    every parameter coordinate (Andrychowicz et al., 2016)."""

    hidden: PositiveInt = 20
    """Units per LSTM layer."""
    layers: PositiveInt = 2
    """LSTM layers."""
    preprocess: bool = True
    """Feed each coordinate ``(log|g| / p, sign g)`` instead of the raw gradient (the paper's
    preprocessing: gradients of every magnitude on one scale)."""
    p: PositiveFloat = 10.0
    """Exponent of the preprocessing."""
    scale: PositiveFloat = 0.1
    """Factor on the LSTM's output: the scale of its first updates."""


class UnrollConfig(_Section):
    """Truncated backpropagation through time of ``algorithm.name: l2l``."""

    length: PositiveInt = 20
    """Optimizee steps per unroll (T): one outer step advances every trajectory by one."""
    horizon: PositiveInt = 100
    """Optimizee steps per trajectory (N), a multiple of ``length``."""
    meta_loss: Literal["sum", "query"] = "sum"
    """``sum`` of the optimizee losses along the unroll (the paper), or the ``query`` loss
    after it (few-shot)."""
    second_order: bool = False
    """Differentiate through the gradients the learned optimizer reads (the paper does not)."""

    @model_validator(mode="after")
    def _whole_unrolls(self) -> UnrollConfig:
        if self.horizon % self.length:
            raise ValueError(
                f"horizon ({self.horizon}) must be a multiple of length ({self.length})"
            )
        return self


class AlgorithmConfig(_Section):
    """The meta-learning algorithm, its inner rule and its outer loop.

    The algorithm says how the meta-gradient is formed, the inner rule how a task adapts:
    Meta-SGD is ``name: maml`` with ``inner_rule: metasgd``.
    """

    name: Literal["maml", "fomaml", "reptile", "l2l"] = "maml"
    """``maml`` (second order), ``fomaml`` (first order), ``reptile``, or ``l2l`` (meta-train
    the ``lstm`` rule alone on optimisation trajectories, Andrychowicz et al., 2016)."""
    inner_rule: Literal["sgd", "metasgd", "lstm"] = "sgd"
    """How a task's fast weights move: ``sgd`` (plain gradient descent at ``inner_lr``),
    ``metasgd`` (a learned rate per parameter element, meta-learned with the initialisation)
    or ``lstm`` (a learned optimizer, ``algorithm.lstm``)."""
    inner_lr: PositiveFloat = 0.01
    """Step size of the inner loop (``metasgd``: the initial value of its learned rates)."""
    inner_steps: PositiveInt = 1
    """Inner-loop steps per task during meta-training."""
    outer_lr: PositiveFloat = 0.001
    """Learning rate of the outer optimizer."""
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    """The optimizer that applies the meta-gradient to the meta-parameters."""
    outer_lr_decay: OuterLRDecay | None = None
    """``None`` keeps ``outer_lr`` for the whole run."""
    zero_init: tuple[str, ...] = ()
    """Model parameters (``named_parameters`` names, e.g. ``[head.weight, head.bias]``) that
    every task starts from zero and that are not meta-learned: for a classifier's last layer,
    the zeroing trick of Kao et al. (ICLR 2022)."""
    execution: Literal["auto", "loop", "vmap"] = "auto"
    """How tasks of a batch run: ``auto`` picks by model and device (see BENCHMARKS.md)."""
    task_threads: PositiveInt | Literal["auto"] = "auto"
    """Tasks computed at once when they run one by one (``execution: loop``), each in its own
    thread with single-threaded operations: ``auto`` is torch's thread count on a CPU, 1 on
    CUDA. Memory grows with the tasks in flight."""
    compile: bool = False
    """``torch.compile`` the vectorised batch: tens of seconds once per process, several times
    faster steps for small models on long runs."""
    lstm: LSTMRuleConfig = LSTMRuleConfig()
    """The learned optimizer of ``inner_rule: lstm``."""
    unroll: UnrollConfig = UnrollConfig()
    """Trajectories and unrolls of ``name: l2l``."""

    @field_validator("name", mode="before")
    @classmethod
    def _metasgd_is_a_rule(cls, name: Any) -> Any:
        if name == "metasgd":
            raise ValueError(
                "metasgd is now an inner rule: write algorithm.name: maml and "
                "algorithm.inner_rule: metasgd"
            )
        return name


class TrainConfig(_Section):
    steps: PositiveInt = 70_000
    """Outer steps (meta-batches) of the whole run."""
    meta_batch_size: PositiveInt = 25
    """Tasks per outer step."""
    checkpoint_every: PositiveInt = 1_000
    """Steps between checkpoints (a resumed run continues from the newest)."""
    log_every: PositiveInt = 100
    """Steps between metric records (metrics.jsonl and the tracker)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point type of parameters and tasks."""


class EvalConfig(_Section):
    tasks: PositiveInt = 1_000
    """Fresh tasks ``distmeta eval`` measures."""
    shots: PositiveInt | None = None
    """Support points (per class for classification) of evaluation tasks; ``None`` keeps
    ``task.shots``. Reptile trains with more shots than it is evaluated on."""
    query: PositiveInt | None = None
    """Query points (per class for classification) per evaluation task; ``None`` keeps
    ``task.query``."""
    ways: PositiveInt | None = None
    """Classes per evaluation task; ``None`` keeps ``task.ways``. Another number needs the
    model's output layer in ``algorithm.zero_init`` (not learned, so it is rebuilt at the
    evaluation size): a run meta-trained on 20-way tasks is evaluated on 5-way ones."""
    inner_steps: NonNegativeInt | None = None
    """Adaptation steps at evaluation; ``None`` keeps ``algorithm.inner_steps``."""
    inner_lr: PositiveFloat | None = None
    """Adaptation rate at evaluation; ``None`` keeps ``algorithm.inner_lr``. The first step
    of a head at zero moves it by the rate over the number of support images, so a run
    trained with four times the ways at four times the rate adapts at the trained rate over
    four."""
    seed: NonNegativeInt | None = None
    """Seed of the evaluation tasks; ``None`` uses ``seed + 1`` (tasks never seen in training)."""


class WorkerResources(_Section):
    num_cpus: PositiveFloat = 1.0
    """CPUs each task worker reserves (its torch threads: the whole part)."""
    num_gpus: NonNegativeFloat = 0.0
    """A worker with a GPU computes on CUDA."""
    resources: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    """Ray custom resources each worker needs (e.g. to pin workers to a node type)."""


class EngineConfig(_Section):
    name: Literal["local", "ray"] = "local"
    """``local`` (one process, the default) or ``ray`` (task workers and a learner actor)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the local engine; Ray workers use CUDA exactly when they hold a GPU."""
    workers: PositiveInt = 2
    """Task-worker actors of the ray engine."""
    worker_resources: WorkerResources = WorkerResources()
    """What Ray reserves for each task worker."""
    mode: Literal["sync", "async"] = "sync"
    """``sync`` (one exact step per meta-batch) or ``async`` (bounded staleness)."""
    max_staleness: NonNegativeInt = 2
    """Async mode: results computed on parameters more than this many versions old are
    rejected."""
    address: str | None = None
    """Ray cluster to join (``auto``, ``ray://host:10001``); ``None`` starts a local one."""
    max_task_retries: NonNegativeInt = 2
    """Times one slice is recomputed after a worker failure before the run fails."""
    reduction: Literal["auto", "flat", "tree"] = "auto"
    """How workers' results reach the learner in sync mode: ``flat`` (the learner adds them
    all), ``tree`` (pairwise merges on the workers' nodes, the learner gets one), ``auto``
    (tree for many workers and large models; see BENCHMARKS.md). Exact either way."""
    transport: Literal["auto", "collective", "tasks"] = "auto"
    """How sync steps reach the actors: ``tasks`` (ordinary actor calls through the object
    store, a few milliseconds per step), ``collective`` (the learner runs chunks of steps
    over a torch.distributed gloo group with the workers: a fraction of a millisecond per
    step), ``auto`` (times the first 20 steps as actor calls and moves models up to 1M
    parameters whose steps compute in under 50 ms to ``collective``). A failed collective
    step hands the rest of the segment to actor calls."""
    step_timeout_s: PositiveFloat = 600.0
    """A step that waits longer than this for its workers fails the run with the workers'
    health (e.g. no node left that can host them), instead of waiting forever; workers that
    do not start within it fail the run naming what the cluster has."""


class TrackingConfig(_Section):
    enabled: bool = True
    """Record the run in MLflow."""
    uri: str | None = None
    """MLflow tracking URI; ``None`` is ``MLFLOW_TRACKING_URI`` when set, else
    ``sqlite:///<cwd>/mlflow.db`` (artifacts in ``<cwd>/mlartifacts``)."""
    experiment: str = Field("distmeta", min_length=1)
    """MLflow experiment of the run."""
    run_name: str | None = None
    """MLflow run name; ``None`` lets MLflow choose one."""


class SearchDimension(_Section):
    """One searched config value (``distmeta tune``).

    ``uniform`` and ``loguniform`` draw a float in ``[low, high]`` (``loguniform`` for scales
    such as learning rates: ``low > 0``), ``randint`` an integer in ``[low, high)``, ``choice``
    one of ``values``; ``grid`` tries every one of ``values``.
    """

    type: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    """How the value is drawn."""
    low: float | None = None
    """Lower bound (``uniform``, ``loguniform``, ``randint``)."""
    high: float | None = None
    """Upper bound (exclusive for ``randint``)."""
    values: list[Any] | None = None
    """The candidates of ``choice`` and ``grid``."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchDimension:
        if self.type in ("choice", "grid"):
            if self.low is not None or self.high is not None:
                raise ValueError(f"{self.type} takes values, not low/high")
            if not self.values:
                raise ValueError(f"{self.type} needs a non-empty list of values")
            return self
        if self.values is not None:
            raise ValueError(f"{self.type} takes low and high, not values")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high, got [{self.low:g}, {self.high:g}]")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low:g}")
        if self.type == "randint" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"randint needs integer bounds, got [{self.low:g}, {self.high:g})")
        return self

    def candidates(self) -> list[Any]:
        """The values that bound what a trial can receive (checked against the schema)."""
        if self.values is not None:
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


class TrialResources(_Section):
    """What Ray reserves for a trial's own process; Ray engine workers get their own bundles
    (``engine.worker_resources``)."""

    num_cpus: PositiveFloat = 1.0
    """Fractions let several trials share a core (the trial mostly waits on its workers with
    the Ray engine)."""
    num_gpus: NonNegativeFloat = 0.0
    """GPUs reserved for a trial's own process."""


class ASHAConfig(_Section):
    grace_period: PositiveInt = 1
    """Reports a trial makes before it can be stopped."""
    reduction_factor: float = Field(2.0, gt=1.0)
    """At each rung only the best ``1 / reduction_factor`` of the trials continue."""


class PBTConfig(_Section):
    perturbation_interval: PositiveInt = 1
    """Reports between two exploit/explore decisions of a trial."""


class ContinueBest(_Section):
    """After the search, the best trial trains on from its last checkpoint with the steps the
    trials left of ``budget_steps`` (ASHA's early stops leave some), its outer learning rate
    annealed over them: the search spends exactly its budget."""

    budget_steps: PositiveInt
    """Training steps of the whole search: every trial's plus the continuation's."""
    decay: Literal["cosine", "linear", "none"] = "cosine"
    """How the outer rate falls over the continuation (``algorithm.outer_lr_decay``)."""
    final: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """The rate at the last step, as a fraction of the trial's ``outer_lr``."""


class TuneConfig(_Section):
    """A hyperparameter search over this config (``distmeta tune``; ``distmeta train`` ignores
    it). Every trial is a full training of the config with the sampled values; it reports the
    validation metric every ``report_every`` steps, with a checkpoint."""

    space: dict[str, SearchDimension] = Field(min_length=1)
    """Dotted config keys (``algorithm.inner_lr``) and how each is searched."""
    search: Literal["optuna", "random", "grid"] | None = None
    """``optuna`` (TPE, the default), ``random``, or ``grid`` (every combination of the
    ``choice``/``grid`` values); ``None`` is optuna, and random under PBT (which samples its
    own population)."""
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """``asha`` stops bad trials early, ``pbt`` copies good trials' checkpoints into bad ones
    and perturbs their values (learning-rate schedules), ``fifo`` runs every trial to the
    end."""
    num_samples: PositiveInt | None = None
    """Trials; with a grid, repeats of the whole grid. ``None`` is 8, or 1 with a grid."""
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    """Query loss (or accuracy) after ``eval.inner_steps`` adaptation steps on ``val_tasks``
    tasks of the evaluation split (fresh sinusoids; the held-out or validation classes)."""
    mode: Literal["min", "max"] | None = None
    """``None`` is ``min`` for a loss, ``max`` for an accuracy."""
    report_every: PositiveInt = 1_000
    """Training steps between reports (each with a checkpoint and a validation)."""
    val_tasks: PositiveInt = 100
    """Validation tasks measured at each report."""
    max_concurrent_trials: PositiveInt | None = None
    """``None``: as many as the cluster's free resources hold."""
    trial_resources: TrialResources = TrialResources()
    """What each trial reserves for its own process."""
    seed: NonNegativeInt = 0
    """Seed of the search algorithm (not of the trials' training, which is ``seed``)."""
    asha: ASHAConfig = ASHAConfig()
    """Settings of the ``asha`` scheduler."""
    pbt: PBTConfig = PBTConfig()
    """Settings of the ``pbt`` scheduler."""
    continue_best: ContinueBest | None = None
    """``None``: the search ends with its trials."""

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        if self.mode is not None:
            return self.mode
        return "max" if self.metric == "val_accuracy" else "min"

    @property
    def resolved_search(self) -> Literal["optuna", "random", "grid"]:
        if self.search is not None:
            return self.search
        return "random" if self.scheduler == "pbt" else "optuna"

    @property
    def resolved_num_samples(self) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return 1 if self.resolved_search == "grid" else 8


class ExperimentConfig(_Section):
    """One experiment: what to learn, how, where it runs and where it is recorded."""

    seed: NonNegativeInt = 0
    """Seed of the initial weights and of every task ``(seed, step, index)``."""
    task: TaskConfig = SinusoidTaskConfig()
    """What the tasks are (the task source)."""
    model: ModelConfig = MLPConfig()
    """The network."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """The meta-learning algorithm, its inner rule and outer optimizer."""
    train: TrainConfig = TrainConfig()
    """How long and in what batches meta-training runs."""
    eval: EvalConfig = EvalConfig()
    """How ``distmeta eval`` (and Tune's validation) measures a run."""
    engine: EngineConfig = EngineConfig()
    """Where steps run: this process or a Ray cluster."""
    tracking: TrackingConfig = TrackingConfig()
    """Where the run is recorded (MLflow)."""
    tune: TuneConfig | None = None
    """A hyperparameter search (``distmeta tune``); training ignores it."""

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, raw: Any) -> Any:
        """A ``task`` or ``model`` section without ``name`` means the default kind."""
        if isinstance(raw, dict):
            raw = dict(raw)
            for section, kind in (("task", "sinusoid"), ("model", "mlp")):
                if isinstance(raw.get(section), dict) and "name" not in raw[section]:
                    raw[section] = {"name": kind, **raw[section]}
        return raw

    @model_validator(mode="after")
    def _decay_within_run(self) -> ExperimentConfig:
        decay = self.algorithm.outer_lr_decay
        if decay is not None and decay.start >= self.train.steps:
            raise ValueError(
                f"algorithm.outer_lr_decay.start ({decay.start}) must be below train.steps "
                f"({self.train.steps}): the decay would never begin"
            )
        return self

    @model_validator(mode="after")
    def _ways_for_classes(self) -> ExperimentConfig:
        if self.eval.ways is not None and self.task.name != "fewshot":
            raise ValueError(f"eval.ways: {self.task.name} tasks have no classes")
        return self

    @model_validator(mode="after")
    def _eval_rate_of_plain_sgd(self) -> ExperimentConfig:
        if self.eval.inner_lr is not None and self.algorithm.inner_rule != "sgd":
            raise ValueError(
                f"eval.inner_lr sets the rate of the sgd inner rule; the "
                f"{self.algorithm.inner_rule} rule learns its own"
            )
        return self

    @model_validator(mode="after")
    def _learned_optimizer(self) -> ExperimentConfig:
        """The pairings a learned optimizer needs (``l2l``, ``lstm``, ``quadratic``)."""
        algorithm = self.algorithm
        if algorithm.name == "l2l" and algorithm.inner_rule != "lstm":
            raise ValueError(
                f"algorithm.inner_rule: l2l meta-trains a learned optimizer; write lstm, "
                f"not {algorithm.inner_rule}"
            )
        if algorithm.name == "fomaml" and algorithm.inner_rule == "lstm":
            raise ValueError(
                "algorithm.inner_rule: first-order MAML gives an lstm rule no meta-gradient "
                "(its weights would never train): use maml or reptile"
            )
        if (self.task.name == "quadratic") != (self.model.name == "quadratic"):
            raise ValueError(
                "model.name: the quadratic task optimises its own variable x: "
                "task.name quadratic goes with model.name quadratic, and only with it"
            )
        if self.task.name == "quadratic" and algorithm.name != "l2l":
            raise ValueError(
                "algorithm.name: quadratic problems have no support and query sets: they "
                "are for meta-training a learned optimizer (l2l)"
            )
        unrolls = algorithm.unroll.horizon // algorithm.unroll.length
        if algorithm.name == "l2l" and self.train.checkpoint_every % unrolls:
            raise ValueError(
                f"train.checkpoint_every ({self.train.checkpoint_every}) must be a multiple of "
                f"the {unrolls} unrolls of a trajectory (algorithm.unroll.horizon / length), "
                "so that a resumed run starts its trajectories where an uninterrupted one does"
            )
        return self


_UNION_FIELDS = {"task", "model"}


def _dotted(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    # Discriminated unions put the tag into the location ("task.sinusoid.shots"); drop it.
    if len(parts) > 2 and parts[0] in _UNION_FIELDS:
        parts.pop(1)
    return ".".join(parts) or "<root>"


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{_dotted(item['loc'])}: {message}")
    return "; ".join(lines)


def parse_config(raw: dict[str, Any] | None) -> ExperimentConfig:
    """Validate a plain mapping (as read from YAML) into an :class:`ExperimentConfig`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config: {_format(error)}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.path=value`` overrides applied (values are YAML)."""
    result = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected key.path=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {override!r}: value is not valid YAML ({error})") from None
        node = result
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {override!r}: {prefix} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with errors naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections")
    return raw or {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate a YAML config, applying ``--set`` overrides first."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    try:
        return parse_config(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain YAML-able data (every default spelled out; no ``tune``
    section unless there is one)."""
    return config.model_dump(mode="json", exclude={"tune"} if config.tune is None else None)
