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
    model_validator,
)

from distmeta.errors import ConfigError

__all__ = [
    "AlgorithmConfig",
    "Conv4Config",
    "EngineConfig",
    "EvalConfig",
    "ExperimentConfig",
    "MLPConfig",
    "SinusoidTaskConfig",
    "TrackingConfig",
    "TrainConfig",
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
    shots: PositiveInt = 10
    """Support points per task (K)."""
    query: PositiveInt = 10
    """Query points per task during meta-training."""
    amplitude: tuple[PositiveFloat, PositiveFloat] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SinusoidTaskConfig:
        _ordered_range(self.amplitude, "amplitude")
        _ordered_range(self.phase, "phase")
        _ordered_range(self.x_range, "x_range")
        return self


TaskConfig = Annotated[SinusoidTaskConfig, Field(discriminator="name")]


class MLPConfig(_Section):
    """A ReLU multi-layer perceptron; input and output sizes come from the task."""

    name: Literal["mlp"] = "mlp"
    hidden: tuple[PositiveInt, ...] = (40, 40)


class Conv4Config(_Section):
    """The MAML paper's 4-block convolutional network; channels and ways come from the task."""

    name: Literal["conv4"] = "conv4"
    hidden: PositiveInt = 64


ModelConfig = Annotated[MLPConfig | Conv4Config, Field(discriminator="name")]


class AlgorithmConfig(_Section):
    """The meta-learning algorithm and its inner and outer loops."""

    name: Literal["maml", "fomaml", "reptile", "metasgd"] = "maml"
    inner_lr: PositiveFloat = 0.01
    """Step size of the inner loop (Meta-SGD: the initial value of its learned rates)."""
    inner_steps: PositiveInt = 1
    """Inner-loop steps per task during meta-training."""
    outer_lr: PositiveFloat = 0.001
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    execution: Literal["auto", "loop", "vmap"] = "auto"
    """How tasks of a batch run: ``auto`` picks by model and device (see BENCHMARKS.md)."""
    compile: bool = False
    """``torch.compile`` the vectorised batch: tens of seconds once per process, several times
    faster steps for small models on long runs."""


class TrainConfig(_Section):
    steps: PositiveInt = 70_000
    meta_batch_size: PositiveInt = 25
    checkpoint_every: PositiveInt = 1_000
    log_every: PositiveInt = 100
    """Steps between metric records (metrics.jsonl and the tracker)."""
    dtype: Literal["float32", "float64"] = "float32"


class EvalConfig(_Section):
    tasks: PositiveInt = 1_000
    query: PositiveInt | None = None
    """Query points per evaluation task; ``None`` keeps ``task.query``."""
    inner_steps: NonNegativeInt | None = None
    """Adaptation steps at evaluation; ``None`` keeps ``algorithm.inner_steps``."""
    seed: NonNegativeInt | None = None
    """Seed of the evaluation tasks; ``None`` uses ``seed + 1`` (tasks never seen in training)."""


class WorkerResources(_Section):
    num_cpus: PositiveFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0


class EngineConfig(_Section):
    name: Literal["local", "ray"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the local engine; Ray workers use CUDA exactly when they hold a GPU."""
    workers: PositiveInt = 2
    worker_resources: WorkerResources = WorkerResources()
    mode: Literal["sync", "async"] = "sync"
    max_staleness: NonNegativeInt = 2
    """Async mode: results computed on parameters more than this many versions old are
    rejected."""
    address: str | None = None
    """Ray cluster to join (``auto``, ``ray://host:10001``); ``None`` starts a local one."""
    max_task_retries: NonNegativeInt = 2
    """Times one slice is recomputed after a worker failure before the run fails."""


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = None
    """MLflow tracking URI; ``None`` is ``sqlite:///<cwd>/mlflow.db``."""
    experiment: str = Field("distmeta", min_length=1)
    run_name: str | None = None


class ExperimentConfig(_Section):
    """One experiment: what to learn, how, where it runs and where it is recorded."""

    seed: NonNegativeInt = 0
    task: TaskConfig = SinusoidTaskConfig()
    model: ModelConfig = MLPConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()
    tracking: TrackingConfig = TrackingConfig()

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
        message = item["msg"]
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
    """The resolved config as plain YAML-able data (every default spelled out)."""
    return config.model_dump(mode="json")
