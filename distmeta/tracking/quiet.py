"""Silence what MLflow, SQLAlchemy and alembic print that a distmeta user cannot act on.

Only around distmeta's own calls into MLflow: the context manager raises those libraries'
loggers from INFO to WARNING (dropping lines such as "Creating initial MLflow database
tables"; a user who asked for DEBUG keeps it), drops a few known warnings about choices
distmeta makes on the user's behalf, turns off MLflow's progress bars and printed run links,
and ignores Python warnings raised inside those libraries (deprecations among their own
dependencies). Everything is restored on exit; nothing is
silenced globally.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_mlflow", "temporary_environment"]

_LOGGERS = ("mlflow", "alembic", "sqlalchemy")
_LIBRARIES = r"(mlflow|sqlalchemy|alembic|pydantic|starlette)(\.|$)"

# Progress bars of the small internal downloads of model logging, and the run links MLflow
# writes to stdout when a run against a server ends (distmeta's own summary names the run).
_QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

_UNACTIONABLE = re.compile(
    "|".join(
        (
            # Both flavors are stored by pickle on purpose: they hold distmeta's classes, by
            # reference, and load wherever distmeta is installed.
            r"Saving pytorch model by Pickle",
            r"Passing a Python object as `python_model`",
        )
    )
)


@contextmanager
def temporary_environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore them (or their absence)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _DropUnactionable(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _UNACTIONABLE.search(record.getMessage())


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Run MLflow calls without the library noise a user cannot act on (see module doc)."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    # Handler filters see records propagated from child loggers (mlflow.pytorch, ...).
    handlers = {h for logger in [*loggers, logging.getLogger()] for h in logger.handlers}
    dropper = _DropUnactionable()
    with warnings.catch_warnings(), temporary_environment(_QUIET_ENV):
        warnings.filterwarnings("ignore", module=_LIBRARIES)
        for logger in loggers:
            if logging.DEBUG < logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        for handler in handlers:
            handler.addFilter(dropper)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(dropper)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
