"""What a run needs to be reproduced: its config as flat params, code commit and versions.

Params are the resolved config flattened to dotted keys (``algorithm.inner_lr``), so runs
can be compared and searched field by field. Tags hold the git commit of distmeta's source
(with a ``dirty`` flag for uncommitted changes) and the versions of the packages that
decide the numbers.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["flatten_config", "provenance_tags"]

_PACKAGES = ("distmeta", "torch", "numpy", "mlflow", "ray", "pyarrow", "pydantic")
_SOURCE = Path(__file__).resolve().parents[1]


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"algorithm": {"inner_lr": 0.01}}`` -> ``{"algorithm.inner_lr": "0.01"}``.

    Leaves are JSON text (``[40, 40]``, ``true``, ``null``) except strings, kept as they are.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance_tags() -> dict[str, str]:
    """``mlflow.source.git.commit`` and ``distmeta.git.dirty`` when distmeta runs from a git
    checkout, and ``version.<package>`` for Python and the installed packages."""
    tags = {"version.python": platform.python_version()}
    for package in _PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        changes = _git("status", "--porcelain", "--untracked-files=no")
        tags["distmeta.git.dirty"] = json.dumps(bool(changes))
    return tags
