"""Where steps run: in this process (``local``, the default) or on Ray actors (``ray``).

The training loop (:mod:`distmeta.runs`) only sees the :class:`Engine` interface; an engine
is chosen by ``engine.name`` from :data:`ENGINES`. Ray loads only for the ``ray`` engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from distmeta.config import EngineConfig, ExperimentConfig
from distmeta.engine.base import Engine, LearnerRestored, checkpoint_params
from distmeta.engine.rundir import RunDir
from distmeta.errors import ConfigError

__all__ = [
    "ENGINES",
    "Engine",
    "LearnerRestored",
    "build_engine",
    "checkpoint_params",
    "ray_session",
]


def _local(config: ExperimentConfig, run_dir: RunDir) -> Engine:
    from distmeta.engine.local import LocalEngine

    return LocalEngine(config)


def _ray(config: ExperimentConfig, run_dir: RunDir) -> Engine:
    from distmeta.engine.ray_engine import RayEngine  # Ray loads only for this engine

    return RayEngine(config, run_dir)


ENGINES: dict[str, Callable[[ExperimentConfig, RunDir], Engine]] = {"local": _local, "ray": _ray}
"""``engine.name`` -> the engine for a config and its run's folder (a restarted Ray learner
restores the folder's newest checkpoint)."""


def build_engine(config: ExperimentConfig, run_dir: RunDir) -> Engine:
    """The engine named by ``engine.name``."""
    if config.engine.name not in ENGINES:
        raise ConfigError(
            f"engine.name: unknown {config.engine.name!r} (known: {', '.join(sorted(ENGINES))})"
        )
    return ENGINES[config.engine.name](config, run_dir)


@contextmanager
def ray_session(engine: EngineConfig) -> Iterator[None]:
    """Ray for the block as the ``ray`` engine connects to it (``engine.address``, else
    ``RAY_ADDRESS``, else a new local instance on 127.0.0.1), shut down after the block only
    if it was started here; nothing is done when Ray is already up in this process."""
    from distmeta.engine.ray_engine.cluster import RayConnection

    connection = RayConnection(engine)
    try:
        yield
    finally:
        connection.close()
