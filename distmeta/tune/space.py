"""The search of a config's ``tune:`` section: checked against the schema before any trial
starts, and turned into what Ray Tune runs (domains, search algorithm, scheduler).

Every searched key is a dotted config path (``algorithm.inner_lr``). Each value a trial can
receive at the edges of its dimension (``low`` and ``high``, every ``choice``) is written into
the config and validated, so an unknown key or an out-of-range bound (a negative learning
rate) is one :class:`~distmeta.errors.ConfigError` naming ``tune.space.<key>``, not a crash
of every trial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distmeta.config import (
    ExperimentConfig,
    SearchDimension,
    TuneConfig,
    config_to_dict,
    parse_config,
)
from distmeta.errors import ConfigError
from distmeta.experiment import build_task_source

__all__ = [
    "SearchPlan",
    "base_config",
    "check_search",
    "plan_search",
    "reports_per_trial",
    "set_value",
    "trial_config",
]

# Keys a search may not change, and why.
_FIXED = {
    "tune": "it is the search itself",
    "engine": "trials reserve their resources from it before they start",
    "tracking": "the search decides where trials are recorded",
    "eval": "it defines the metric the trials are compared by",
    "train.steps": "the schedulers count each trial's reports up to it",
    "train.checkpoint_every": "tune.report_every sets it",
}


def base_config(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config of every trial before its sampled values: without ``tune``."""
    raw = config_to_dict(config)
    raw.pop("tune", None)
    return raw


def set_value(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with ``value`` at the dotted ``key`` (sections created as needed).

    Values are set as they are (unlike ``--set`` text, ``1e-05`` stays a float).
    """
    result = json.loads(json.dumps(raw))
    node = result
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an optional section left unset
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(
                f"tune.space.{key}: {'.'.join(parts[: depth + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value
    return result


def _encode(value: Any) -> Any:
    """Choices Tune and Optuna can hold: lists and mappings (``model.hidden``) as JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def _decode(dimension: SearchDimension, sampled: Any) -> Any:
    if dimension.values is None:
        return sampled
    for value in dimension.values:
        if _encode(value) == sampled:
            return value
    return sampled  # a value Tune made itself (a PBT perturbation of a number)


def trial_config(
    base: dict[str, Any],
    tune_config: TuneConfig,
    sampled: Mapping[str, Any],
    fixed: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The config a trial trains: ``base`` with the sampled values of the searched keys, a
    checkpoint every ``tune.report_every`` steps, and the ``fixed`` values (dotted keys)."""
    raw = base
    for key, dimension in tune_config.space.items():
        if key in sampled:
            raw = set_value(raw, key, _decode(dimension, sampled[key]))
    raw = set_value(raw, "train.checkpoint_every", tune_config.report_every)
    for key, value in (fixed or {}).items():
        raw = set_value(raw, key, value)
    return parse_config(raw)


def reports_per_trial(config: ExperimentConfig) -> int:
    """Reports of a trial that runs to the end (the last one at ``train.steps``)."""
    assert config.tune is not None
    return math.ceil(config.train.steps / config.tune.report_every)


def _reason(error: ConfigError) -> str:
    return str(error).removeprefix("invalid config: ")


def _check_key(base: dict[str, Any], key: str, dimension: SearchDimension) -> None:
    for fixed, why in _FIXED.items():
        if key == fixed or key.startswith(fixed + "."):
            raise ConfigError(f"tune.space.{key}: cannot be searched: {why}")
    for value in dimension.candidates():
        try:
            parse_config(set_value(base, key, value))
        except ConfigError as error:
            reason = _reason(error)
            if reason == f"{key}: unknown key" or reason.startswith(f"{key}: unknown key;"):
                raise ConfigError(f"tune.space.{key}: {key} is not a config key") from None
            raise ConfigError(
                f"tune.space.{key}: {value!r} is not a valid value ({reason})"
            ) from None


def check_search(config: ExperimentConfig) -> TuneConfig:
    """Check the ``tune`` section of ``config`` against the rest of it.

    Raises:
        ConfigError: There is no ``tune`` section, a searched key is not a config key or may
            not be searched, a bound or choice is not a valid value of its key, the search,
            scheduler and dimensions do not fit together, or the trials do not report the
            metric.
    """
    tune_config = config.tune
    if tune_config is None:
        raise ConfigError("tune: the config has no tune section (the search space and metric)")
    base = base_config(config)
    for key, dimension in tune_config.space.items():
        _check_key(base, key, dimension)

    search = tune_config.resolved_search
    ranges = [k for k, d in tune_config.space.items() if d.type not in ("choice", "grid")]
    grids = [k for k, d in tune_config.space.items() if d.type == "grid"]
    if search == "grid" and ranges:
        raise ConfigError(
            f"tune.space.{ranges[0]}: a grid search needs choice or grid values, not a "
            f"{tune_config.space[ranges[0]].type} range"
        )
    if search == "optuna" and grids:
        raise ConfigError(
            f"tune.space.{grids[0]}: grid values need tune.search: grid or random "
            "(optuna samples: use type: choice)"
        )
    if tune_config.scheduler == "pbt" and search == "optuna":
        raise ConfigError(
            "tune.search: PBT samples and perturbs its own population: use search: random"
        )

    kind = build_task_source(config, split="eval").kind
    if tune_config.metric == "val_accuracy" and kind != "classification":
        raise ConfigError(
            f"tune.metric: {config.task.name} is a {kind} task: its trials report val_loss only"
        )
    if "algorithm.inner_steps" in tune_config.space and config.eval.inner_steps is None:
        raise ConfigError(
            "tune.space.algorithm.inner_steps: set eval.inner_steps, else each trial is "
            "measured after its own number of adaptation steps"
        )
    _check_continuation(config)
    reports = reports_per_trial(config)
    if tune_config.scheduler == "asha" and tune_config.asha.grace_period > reports:
        raise ConfigError(
            f"tune.asha.grace_period: {tune_config.asha.grace_period} reports, but a trial "
            f"makes {reports} (train.steps / tune.report_every)"
        )
    return tune_config


def _check_continuation(config: ExperimentConfig) -> None:
    tune_config = config.tune
    assert tune_config is not None
    plan = tune_config.continue_best
    if plan is None:
        return
    decays = [k for k in tune_config.space if k.startswith("algorithm.outer_lr_decay")]
    if config.algorithm.outer_lr_decay is not None or decays:
        raise ConfigError(
            "tune.continue_best: it anneals the outer learning rate of the continued trial "
            "itself: remove algorithm.outer_lr_decay from the config and the search space"
        )
    if plan.budget_steps < config.train.steps:
        raise ConfigError(
            f"tune.continue_best.budget_steps: {plan.budget_steps} is less than one trial's "
            f"train.steps ({config.train.steps})"
        )


@dataclass
class SearchPlan:
    """What Ray Tune runs for a checked ``tune`` section."""

    param_space: dict[str, Any]
    search_alg: Any
    scheduler: Any
    metric: str
    mode: str
    num_samples: int
    reports: int
    """Reports of a trial that runs to the end (the schedulers' ``max_t``)."""


def _domain(dimension: SearchDimension, search: str) -> Any:
    from ray import tune

    if dimension.type == "uniform":
        return tune.uniform(dimension.low, dimension.high)
    if dimension.type == "loguniform":
        return tune.loguniform(dimension.low, dimension.high)
    if dimension.type == "randint":
        return tune.randint(int(dimension.low), int(dimension.high))
    values = [_encode(v) for v in dimension.values]
    if dimension.type == "grid" or search == "grid":
        return tune.grid_search(values)
    return tune.choice(values)


def _mutation(dimension: SearchDimension) -> Any:
    """What PBT resamples or perturbs a value from."""
    if dimension.values is not None:
        return [_encode(v) for v in dimension.values]
    return _domain(dimension, "random")


def plan_search(config: ExperimentConfig) -> SearchPlan:
    """The Tune objects of ``config``'s search (call :func:`check_search` first)."""
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    tune_config = config.tune
    assert tune_config is not None
    search = tune_config.resolved_search
    reports = reports_per_trial(config)
    space = {key: _domain(d, search) for key, d in tune_config.space.items()}
    if search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        # TPE samples at random until it has seen n_startup_trials results (10 by default):
        # all of a small budget. Half the budget random, then modelled.
        trials = tune_config.resolved_num_samples
        sampler = TPESampler(seed=tune_config.seed, n_startup_trials=max(1, min(10, trials // 2)))
        search_alg = OptunaSearch(sampler=sampler)
        if tune_config.max_concurrent_trials is not None:
            search_alg = ConcurrencyLimiter(search_alg, tune_config.max_concurrent_trials)
    else:
        search_alg = BasicVariantGenerator(
            random_state=tune_config.seed, max_concurrent=tune_config.max_concurrent_trials or 0
        )
    if tune_config.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=reports,
            grace_period=tune_config.asha.grace_period,
            reduction_factor=tune_config.asha.reduction_factor,
        )
    elif tune_config.scheduler == "pbt":
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=tune_config.pbt.perturbation_interval,
            hyperparam_mutations={k: _mutation(d) for k, d in tune_config.space.items()},
        )
    else:
        scheduler = None
    return SearchPlan(
        param_space=space,
        search_alg=search_alg,
        scheduler=scheduler,
        metric=tune_config.metric,
        mode=tune_config.resolved_mode,
        num_samples=tune_config.resolved_num_samples,
        reports=reports,
    )
