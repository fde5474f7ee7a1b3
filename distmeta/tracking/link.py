"""The link from a run folder to its MLflow run: ``tracking.json`` inside the folder.

``--resume`` continues the linked MLflow run, and ``distmeta export`` logs the model into it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from distmeta.engine.rundir import RunDir
from distmeta.errors import RunError

__all__ = ["LINK_FILE", "TrackingLink", "read_link", "write_link"]

LINK_FILE = "tracking.json"


@dataclass(frozen=True)
class TrackingLink:
    """Which MLflow run records a run folder."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def write_link(run_dir: RunDir, link: TrackingLink) -> None:
    run_dir.write_bytes(LINK_FILE, (json.dumps(asdict(link), indent=2) + "\n").encode())


def read_link(run_dir: RunDir) -> TrackingLink | None:
    """The folder's link, or ``None`` when the run was not tracked."""
    if not run_dir.exists(LINK_FILE):
        return None
    try:
        return TrackingLink(**json.loads(run_dir.read_bytes(LINK_FILE).decode()))
    except (ValueError, TypeError) as error:
        raise RunError(f"{run_dir.describe(LINK_FILE)} is corrupt: {error}") from None
