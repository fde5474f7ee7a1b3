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
    "ImageStreamConfig",
    "LSTMRuleConfig",
    "MLPConfig",
    "OuterLRDecay",
    "PBTConfig",
    "PendulumStreamConfig",
    "PendulumTaskConfig",
    "QuadraticModelConfig",
    "QuadraticTaskConfig",
    "SearchDimension",
    "SinusoidStreamConfig",
    "SinusoidTaskConfig",
    "StreamConfig",
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


class PendulumTaskConfig(_Section):
    """Pendulum dynamics (gymnasium's Pendulum): from a state and a torque, predict the change
    of state over one step, for a pendulum whose gravity, mass and length vary by task."""

    name: Literal["pendulum"] = "pendulum"
    """The task source: pendulum dynamics regression."""
    shots: PositiveInt = 16
    """Transitions of one rollout in the support set (GrBAL adapts on the last 16)."""
    query: PositiveInt = 16
    """Transitions of another rollout of the same pendulum in the query set."""
    gravity: tuple[PositiveFloat, PositiveFloat] = (8.0, 12.0)
    """Range of the gravity (m/s^2) of a task."""
    mass: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.2)
    """Range of the mass (kg) of a task."""
    length: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.2)
    """Range of the length (m) of a task."""

    @model_validator(mode="after")
    def _ranges_ordered(self) -> PendulumTaskConfig:
        for field in ("gravity", "mass", "length"):
            _ordered_range(getattr(self, field), field)
        return self


TaskConfig = Annotated[
    SinusoidTaskConfig | FewShotTaskConfig | PendulumTaskConfig | QuadraticTaskConfig,
    Field(discriminator="name"),
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
    momenta: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = []
    """Decays of extra features: for each, Adam's normalised momentum ``m_hat / sqrt(v_hat)``
    at that decay (mean square at 0.999). None by default (the paper's rule); ``[0.5, 0.9,
    0.99]`` lets the LSTM read the gradient's recent direction at three time scales."""
    direct: bool = False
    """The output also reads the features through a linear path around the LSTM (zero at
    first): with ``momenta``, the rule can start from a momentum method and learn what to add."""
    start: Literal["sgd", "adam", "metasgd"] | None = None
    """What the untrained rule is: ``null``, the randomly initialised LSTM (the paper's), or
    ``sgd`` / ``adam`` / ``metasgd`` at ``start_lr``, with the LSTM's output layer at zero, so
    meta-training begins from that optimizer and learns what to add. ``sgd`` and ``adam`` need
    ``direct: true``: the direct path carries the raw gradient (needs ``preprocess: false``)
    or the normalised momentum at 0.9 (needs 0.9 in ``momenta``). ``metasgd`` adds Meta-SGD's
    learned rate per coordinate of the network on its raw gradient, meta-trained with the LSTM
    (MAML and Reptile: the rates belong to the network, so ``LearnedOptimizer`` cannot carry
    them to another model, and ``l2l`` refuses them)."""
    start_lr: PositiveFloat = 0.01
    """The rate of the ``start`` optimizer (say, the best tuned rate on training problems)."""
    zero_out_bias: bool = False
    """Start the output layer's bias at zero (the DeepMind reference's Sonnet ``Linear``), not
    drawn as ``torch.nn.Linear`` draws it: a bias moves every coordinate by the same amount at
    every step, whatever its gradient."""


class UnrollConfig(_Section):
    """Truncated backpropagation through time of ``algorithm.name: l2l``."""

    length: PositiveInt = 20
    """Optimizee steps per unroll (T): one outer step advances every trajectory by one."""
    horizon: PositiveInt = 100
    """Optimizee steps per trajectory (N), a multiple of ``length``."""
    meta_loss: Literal["sum", "log", "query"] = "sum"
    """``sum`` of the optimizee losses along the unroll (the paper), the sum of their ``log``
    (every unroll's relative progress weighs the same, whatever the loss's level), or the
    ``query`` loss after it (few-shot)."""
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

    name: Literal["maml", "fomaml", "reptile", "joint", "l2l"] = "maml"
    """``maml`` (second order), ``fomaml`` (first order), ``reptile``, ``joint`` (one model
    fit to every task's data without adaptation: the jointly trained baseline of streams; it
    takes no inner step, so an inner rule's learned rates or LSTM keep their initial values), or
    ``l2l`` (meta-train the ``lstm`` rule alone on optimisation trajectories, Andrychowicz et
    al., 2016)."""
    inner_rule: Literal["sgd", "metasgd", "lstm"] = "sgd"
    """How a task's fast weights move: ``sgd`` (plain gradient descent at ``inner_lr``),
    ``metasgd`` (a learned rate per parameter element, meta-learned with the initialisation)
    or ``lstm`` (a learned optimizer, ``algorithm.lstm``)."""
    inner_lr: PositiveFloat = 0.01
    """Step size of the inner loop (``metasgd``: the initial value of its learned rates)."""
    inner_steps: PositiveInt = 1
    """Inner-loop steps per task during meta-training."""
    step_loss_weights: tuple[NonNegativeFloat, ...] | None = None
    """MAML's meta-loss as a weighted mean of the query losses after every inner step, one
    weight per step (MAML++'s multi-step loss); ``None``: the loss after the last step. Holds
    every step to account, so the learned start is one the rate can descend for more steps
    than it was trained with (the sinusoid study in BENCHMARKS.md). ``joint`` ignores them
    (it takes no inner step in training)."""
    outer_lr: PositiveFloat = 0.001
    """Learning rate of the outer optimizer."""
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    """The optimizer that applies the meta-gradient to the meta-parameters."""
    outer_lr_decay: OuterLRDecay | None = None
    """``None`` keeps ``outer_lr`` for the whole run."""
    outer_clip_norm: PositiveFloat | None = None
    """The largest L2 norm of a meta-gradient (the mean over the meta-batch, every
    meta-parameter together) the outer optimizer steps with: a larger one is scaled down to
    it, as ``torch.nn.utils.clip_grad_norm_`` does. A guard against one task whose inner loop
    diverged (Meta-SGD's learned rates can overshoot on a rare task), whose huge meta-gradient
    would otherwise move every meta-parameter and fill Adam's second moment until it decays
    (by 0.999 a step). ``None``: no clipping."""
    rule_outer_lr: PositiveFloat | None = None
    """Outer learning rate of a learned inner rule's own meta-parameters (``metasgd``'s rates,
    the ``lstm`` rule's weights) when it should differ from the initialisation's
    ``outer_lr``; it follows ``outer_lr_decay`` in proportion. ``None``: ``outer_lr`` for
    every meta-parameter. Adam moves each parameter by about its rate per step, whatever
    the parameter's scale: a learned step size of 0.01 at ``outer_lr`` 1e-3 changes by a
    tenth of itself per step."""
    zero_init: tuple[str, ...] = ()
    """Model parameters (``named_parameters`` names, e.g. ``[head.weight, head.bias]``) that
    every task starts from zero and that are not meta-learned: for a classifier's last layer,
    the zeroing trick of Kao et al. (ICLR 2022). ``joint`` ignores it and learns them (it
    never adapts, so a layer at zero could not predict)."""
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

    @model_validator(mode="after")
    def _one_weight_per_step(self) -> AlgorithmConfig:
        weights = self.step_loss_weights
        if weights is None:
            return self
        # joint training takes no inner step (the weights matter to the MAML run of the same
        # file, e.g. a stream's two starting points); reptile and l2l have no query losses.
        if self.name in ("reptile", "l2l"):
            raise ValueError(
                f"step_loss_weights weigh MAML's query losses after its inner steps; "
                f"{self.name} has no such loss"
            )
        if len(weights) != self.inner_steps:
            raise ValueError(
                f"step_loss_weights needs one weight per inner step: inner_steps is "
                f"{self.inner_steps}, got {len(weights)} weights"
            )
        if sum(weights) <= 0:
            raise ValueError("step_loss_weights must not all be zero")
        return self

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
    checkpoint: Literal["final", "best"] = "final"
    """A learned optimizer's weights: the ``final`` ones, or those of the checkpoint (or final
    step) that scores best on the validation problems: chosen as the baselines' learning
    rates are (``algorithm.name: l2l`` only)."""
    select_at: Literal["both", "horizon"] = "both"
    """What a learned optimizer's validation problems score a baseline's learning rate (and
    with ``checkpoint: best`` a checkpoint) by: the log10 of the mean loss at the training
    horizon and at twice it, averaged (``both``: the two points the comparison reports), or
    at the horizon alone."""


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


# --- streams (distmeta stream) ------------------------------------------------------------


class _StreamSection(_Section):
    """What every stream shares: its length and switching, the online method, the runs its
    learners start from, and the fleet size."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    steps: PositiveInt = 2_000
    """Time steps of each stream; each brings one labelled batch of the current task."""
    alpha: float = Field(0.98, ge=0.0, lt=1.0)
    """Probability that the current task stays for the next step (OSAKA's ``prob_statio``):
    switches happen at rate ``1 - alpha``."""
    mode_probs: tuple[NonNegativeFloat, NonNegativeFloat, NonNegativeFloat] = (0.5, 0.25, 0.25)
    """Probabilities that a new task comes from the in-distribution mode and from each of the
    two out-of-distribution modes."""
    drift: NonNegativeFloat = 0.0
    """Standard deviation of the random walk of a task's parameters per step, as a fraction
    of each parameter's range (0: tasks hold still between switches)."""
    method: Literal["cmaml", "ftml"] = "cmaml"
    """The online meta-learning method: ``cmaml`` (Continual-MAML, OSAKA) or ``ftml``
    (Follow The Meta Leader, Finn et al. 2019). The baselines and the oracle always run
    beside it on the same stream."""
    gamma: float = 1.0
    """Switch threshold: a switch is declared when the previous fast weights' loss on the new
    batch exceeds that of fast weights adapted afresh on it (or, with a ``library``, of a
    remembered task's weights adapted on it, whichever fits better) by more than ``gamma``."""
    lambda_: PositiveFloat = Field(1.0, alias="lambda")
    """Update modulation: an online meta-update is scaled by ``1 - exp(-lambda * loss)``, so
    batches the model already predicts well barely move the meta-parameters (large values:
    every update in full)."""
    prolonged: bool = True
    """C-MAML keeps adapting its fast weights on each batch while no switch is detected (and
    restarts from the meta-parameters at a switch), instead of adapting afresh from the
    meta-parameters on the previous batch alone."""
    memory: PositiveInt = 1
    """C-MAML: batches of the current task (the latest since the detected switch) that its
    fast weights adapt on together; 1 adapts on the newest batch alone."""
    library: NonNegativeInt = 0
    """C-MAML: past tasks whose fast weights it remembers (the most recently used), each a
    candidate restart at a switch beside adapting afresh: a task that comes back starts where
    its last visit ended. 0 remembers none."""
    revise: PositiveFloat | None = None
    """C-MAML: a second look at each switch test on the next batch: the hypothesis the test
    did not take (a switch, or none) replaces the one it took when its weights predict the
    next batch with a loss below ``revise`` times the fast weights' (``None``: tests stand)."""
    jump: float | None = Field(None, gt=1.0)
    """C-MAML: a second switch test, declaring a switch where the fast weights' loss on the
    batch exceeds ``jump`` times its level on the current task (the median of their losses
    on its latest ``memory`` batches) and a restart fits the batch better (``None``: the
    ``gamma`` test alone)."""
    fitted_test: bool = False
    """C-MAML: ``gamma``'s test takes the fast weights' loss on the batch after they adapt on
    it with the current task's latest ``memory`` batches, not before, so that a task fitted
    poorly after its first batches does not look like a switch on its next."""
    prolong_lr: PositiveFloat | None = None
    """C-MAML: the prolonged adaptation (``prolonged``) takes Adam's steps at this rate, from a
    fresh Adam state at each batch, and keeps the iterate that fits the task's batches best,
    instead of the inner rule's steps (``None``): the fitting of a task over the batches it
    lasts is not the few-step adaptation the start was meta-trained for."""
    prolong_steps: PositiveInt | None = None
    """C-MAML: steps of each prolonged adaptation (``prolonged``), the inner rule's or Adam's
    (``prolong_lr``); ``None``: as many as ``adapt_steps``. A task fitted over many batches
    can take more steps per batch than a restart's few-step adaptation."""
    meta_lr: PositiveFloat = 1e-4
    """Adam's learning rate for the online meta-updates."""
    adapt_steps: PositiveInt | None = None
    """Inner steps of each online adaptation; ``None`` keeps the pretrained run's
    ``algorithm.inner_steps``."""
    frozen_steps: PositiveInt | None = None
    """Inner steps of ``frozen_meta``'s adaptations when they should differ from
    ``adapt_steps`` (``None``: as ``adapt_steps``): the baseline can keep the inner loop its
    start was meta-trained for while the method takes more steps, which C-MAML can afford
    because it rejects steps that overshoot and ``frozen_meta`` does not."""
    buffer_tasks: PositiveInt = 50
    """FTML: tasks kept in its buffer (the oldest is dropped when a new one begins)."""
    buffer_batches: PositiveInt = 8
    """FTML: batches kept per task (the most recent); the current task's are its support
    data."""
    meta_batch: PositiveInt = 4
    """FTML: tasks drawn from the buffer for each step's meta-update."""
    finetune_lr: PositiveFloat = 1e-3
    """Adam's learning rate of the ``finetune`` and ``online_sgd`` baselines."""
    finetune_steps: PositiveInt = 1
    """Gradient steps of ``finetune`` and ``online_sgd`` on each revealed batch."""
    switch_window: PositiveInt = 16
    """Steps after each switch whose mean loss is reported as ``loss_after_switch``."""
    pretrained: str | None = None
    """The ``distmeta train`` run (folder) of the meta-learned starting point, meta-trained on
    the in-distribution mode (this config's ``task`` section)."""
    joint: str | None = None
    """The ``distmeta train`` run (folder) of the jointly trained model (``algorithm.name:
    joint``) that ``no_adaptation`` and ``finetune`` use."""
    streams: PositiveInt = 1
    """Streams run at once (a fleet), all reading and updating one set of meta-parameters;
    with ``engine.name: ray`` they run in the task workers."""
    steps_per_call: PositiveInt = 10
    """Fleet on Ray: stream steps a worker runs on one read of the meta-parameters before it
    sends their meta-gradient to the learner."""

    @model_validator(mode="after")
    def _probabilities(self) -> _StreamSection:
        if not math.isclose(sum(self.mode_probs), 1.0, abs_tol=1e-9):
            raise ValueError(f"mode_probs must sum to 1, got {list(self.mode_probs)}")
        return self

    @model_validator(mode="after")
    def _cmaml_options(self) -> _StreamSection:
        """``memory``, ``library``, ``revise``, ``jump``, ``fitted_test``, ``prolong_lr`` and
        ``prolong_steps`` are C-MAML's: refused for another method rather than ignored, and
        the two ``prolong_`` keys without ``prolonged``."""
        for key, meaning in (("prolong_lr", "rate"), ("prolong_steps", "step count")):
            value = getattr(self, key)
            if value is not None and not self.prolonged:
                raise ValueError(
                    f"{key}: {value} is the {meaning} of prolonged adaptation, and "
                    f"prolonged is false (set prolonged: true, or leave {key} unset)"
                )
        keys = ("memory", "library", "revise", "jump", "fitted_test", "prolong_lr", "prolong_steps")
        defaults = {key: type(self).model_fields[key].default for key in keys}
        values = {key: getattr(self, key) for key in defaults}
        changed = {key: value for key, value in values.items() if value != defaults[key]}
        if self.method != "cmaml" and changed:
            named = ", ".join(f"{key}: {value}" for key, value in changed.items())
            leave = " and ".join(f"{key} at {value}" for key, value in defaults.items())
            raise ValueError(
                f"{named} apply to method cmaml only, not {self.method} (leave {leave})"
            )
        return self


class SinusoidStreamConfig(_StreamSection):
    """A switching sinusoid (MOCA's settings): in-distribution tasks are ``task.amplitude`` and
    ``task.phase`` at frequency 1; the out-of-distribution modes are large amplitudes and
    higher frequencies."""

    name: Literal["sinusoid"] = "sinusoid"
    """The stream: a switching sinusoid."""
    points: PositiveInt = 10
    """Labelled points per step, x uniform in ``task.x_range``."""
    noise_var: NonNegativeFloat = 0.05
    """Variance of the Gaussian observation noise."""
    ood_amplitude: tuple[PositiveFloat, PositiveFloat] = (5.0, 10.0)
    """Amplitudes of the first out-of-distribution mode."""
    ood_frequency: tuple[PositiveFloat, PositiveFloat] = (1.5, 2.5)
    """Frequencies of the second out-of-distribution mode."""

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SinusoidStreamConfig:
        _ordered_range(self.ood_amplitude, "ood_amplitude")
        _ordered_range(self.ood_frequency, "ood_frequency")
        return self


class PendulumStreamConfig(_StreamSection):
    """A pendulum whose physics switch between regimes: in-distribution regimes drawn from the
    ``task`` ranges, regimes outside them, and in-distribution regimes with a crippled actuator
    (its gain dropped or flipped, GrBAL's crippled joint). Regimes recur."""

    name: Literal["pendulum"] = "pendulum"
    """The stream: a pendulum whose physics switch."""
    transitions: PositiveInt = 16
    """Transitions per step, one rollout of the exploratory policy (uniform random torque)."""
    regimes: PositiveInt = 4
    """In-distribution regimes of a stream, drawn once from ``task.gravity``, ``task.mass``
    and ``task.length``."""
    ood_regimes: PositiveInt = 2
    """Regimes of the first out-of-distribution mode, drawn once from the ``ood_`` ranges."""
    ood_gravity: tuple[PositiveFloat, PositiveFloat] = (14.0, 18.0)
    """Gravity of out-of-distribution regimes (m/s^2)."""
    ood_mass: tuple[PositiveFloat, PositiveFloat] = (1.5, 2.0)
    """Mass of out-of-distribution regimes (kg)."""
    ood_length: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.2)
    """Length of out-of-distribution regimes (m)."""
    actuator_gains: tuple[float, ...] = Field((0.3, -1.0), min_length=1)
    """Gains of the crippled actuator of the second out-of-distribution mode (the applied
    torque is the gain times the commanded one): below 1 it dropped, below 0 it flipped."""

    @model_validator(mode="after")
    def _ranges_ordered(self) -> PendulumStreamConfig:
        for field in ("ood_gravity", "ood_mass", "ood_length"):
            _ordered_range(getattr(self, field), field)
        return self


class ImageStreamConfig(_StreamSection):
    """Few-shot image classification as OSAKA streams it: in-distribution tasks from the
    training alphabets of ``task.path``, out-of-distribution tasks from its validation
    alphabets and from scikit-learn's 8x8 digits upsampled to the images' size."""

    name: Literal["images"] = "images"
    """The stream: few-shot image classification (Omniglot alphabets and digits)."""
    ways: PositiveInt = 10
    """Classes of a task (at most 10: the digits have 10)."""
    shots: PositiveInt = 5
    """Images per class in each step's batch."""

    @model_validator(mode="after")
    def _images_hold_still(self) -> ImageStreamConfig:
        if self.drift:
            raise ValueError("drift: image tasks have no parameters to drift; set it to 0")
        if self.ways > 10:
            raise ValueError(f"ways: the digits mode has 10 classes, got {self.ways}")
        return self


StreamConfig = Annotated[
    SinusoidStreamConfig | PendulumStreamConfig | ImageStreamConfig, Field(discriminator="name")
]

STREAM_OF_TASK = {"sinusoid": "sinusoid", "pendulum": "pendulum", "fewshot": "images"}
"""``task.name`` -> the ``stream.name`` whose in-distribution mode it is."""


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
    stream: StreamConfig | None = None
    """Online learning on a stream of changing tasks (``distmeta stream``); training ignores
    it, so ``distmeta train`` of the same file meta-trains the starting point."""

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, raw: Any) -> Any:
        """A ``task`` or ``model`` section without ``name`` means the default kind."""
        if isinstance(raw, dict):
            raw = dict(raw)
            for section, kind in (("task", "sinusoid"), ("model", "mlp")):
                if isinstance(raw.get(section), dict) and "name" not in raw[section]:
                    raw[section] = {"name": kind, **raw[section]}
            stream = raw.get("stream")
            if isinstance(stream, dict) and "name" not in stream:
                task = raw.get("task")
                task_name = task.get("name") if isinstance(task, dict) else "sinusoid"
                raw["stream"] = {"name": STREAM_OF_TASK.get(task_name, task_name), **stream}
        return raw

    @model_validator(mode="after")
    def _stream_of_the_task(self) -> ExperimentConfig:
        if self.stream is not None and self.stream.name != STREAM_OF_TASK[self.task.name]:
            raise ValueError(
                f"stream.name: a {self.stream.name} stream needs a "
                f"{self.stream.name if self.stream.name != 'images' else 'fewshot'} task "
                f"section (its in-distribution mode), the config has task.name "
                f"{self.task.name}"
            )
        return self

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
        # joint takes no inner step, so its rule's parameters never move (a stream config's
        # joint start is trained from the MAML run's own file).
        if algorithm.rule_outer_lr is not None and (
            algorithm.inner_rule == "sgd" or algorithm.name == "l2l"
        ):
            raise ValueError(
                "algorithm.rule_outer_lr sets the outer rate of a learned inner rule's "
                "parameters beside the initialisation's; "
                + (
                    "the sgd rule learns none"
                    if algorithm.inner_rule == "sgd"
                    else "l2l meta-trains the rule alone (use outer_lr)"
                )
            )
        if algorithm.name == "l2l" and algorithm.lstm.start == "metasgd":
            raise ValueError(
                "algorithm.lstm.start: metasgd learns a rate for each coordinate of one "
                "network; l2l trains a rule for every problem of a family (use sgd or adam)"
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
        for key in ("checkpoint", "select_at"):  # what only a learned optimizer's eval reads
            value, default = getattr(self.eval, key), EvalConfig.model_fields[key].default
            if value != default and algorithm.name != "l2l":
                raise ValueError(
                    f"eval.{key}: {value} is read only by the evaluation of learned "
                    f"optimizers (algorithm.name l2l), not {algorithm.name} (leave {default})"
                )
        unrolls = algorithm.unroll.horizon // algorithm.unroll.length
        if algorithm.name == "l2l" and self.train.checkpoint_every % unrolls:
            raise ValueError(
                f"train.checkpoint_every ({self.train.checkpoint_every}) must be a multiple of "
                f"the {unrolls} unrolls of a trajectory (algorithm.unroll.horizon / length), "
                "so that a resumed run starts its trajectories where an uninterrupted one does"
            )
        return self


_UNION_FIELDS = {"task", "model", "stream"}


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
    """The resolved config as plain YAML-able data (every default spelled out; no ``tune`` or
    ``stream`` section unless there is one; fields under their YAML names, ``stream.lambda``)."""
    absent = {name for name in ("tune", "stream") if getattr(config, name) is None}
    return config.model_dump(mode="json", exclude=absent or None, by_alias=True)
