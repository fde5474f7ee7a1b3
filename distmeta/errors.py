"""Typed errors raised where bad input enters distmeta.

Each names the offending field, file or task, so that the CLI can print one clear line
(and exit with status 2) instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ClusterError",
    "ConfigError",
    "DataError",
    "DeploymentError",
    "DistmetaError",
    "RunError",
    "TaskFailedError",
    "TrackingError",
]


class DistmetaError(Exception):
    """Base class of every error distmeta raises on purpose."""


class ConfigError(DistmetaError):
    """An experiment config (YAML or ``--set`` override) is invalid."""


class DataError(DistmetaError):
    """A dataset file or folder is missing, corrupt or of the wrong layout."""


class DeploymentError(DistmetaError):
    """A deployment file (cluster launcher config, KubeRay manifest, Dockerfile, compose file)
    is invalid."""


class ClusterError(DistmetaError):
    """The Ray cluster cannot run the engine (workers that cannot be placed or never answer)."""


class CheckpointError(DistmetaError):
    """A checkpoint is missing, unreadable or does not match the run."""


class RunError(DistmetaError):
    """A run folder is missing or incomplete."""


class TrackingError(DistmetaError):
    """The MLflow tracking store or registry cannot be used."""


class TaskFailedError(DistmetaError):
    """One task keeps failing (non-finite loss or an exception) and the run cannot go on.

    Args:
        task: The task's name ``(seed, step, index)``, or ``None`` when the batch had no names.
        reason: What went wrong (for a nameless task, including its position in the batch).
    """

    def __init__(self, task: tuple[int, int, int] | None, reason: str) -> None:
        self.task = None if task is None else tuple(task)
        self.reason = reason
        name = "a task" if self.task is None else f"task (seed, step, index)={self.task}"
        super().__init__(f"{name} failed: {reason}")

    def __reduce__(self):  # keeps the task when the error crosses a process boundary
        return (type(self), (self.task, self.reason))
