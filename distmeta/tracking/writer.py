"""The tracking writer: a child process that sends one run's metrics and files to MLflow.

Writing to the embedded sqlite store costs about 0.1-0.3 ms of CPU per metric value in
SQLAlchemy, all under the GIL: done in the training process, that is 10-20% of a 5 ms
meta-training step. :class:`~distmeta.tracking.uploader.RunUploader` therefore hands the
writes to this process, which runs on another core.

Protocol: one JSON object per line on stdin, ``{"metrics": [[key, value, timestamp_ms,
step], ...]}`` or ``{"file": [local_path, artifact_path_or_null]}``; end of input means done.
Metrics go out in ``log_batch`` requests of at most 1000 values (MLflow's limit). On the first
failure the process prints ``{"error": "<reason>"}`` on stdout and exits with status 1.

It is started as a file (``python .../writer.py URI RUN_ID``), not with ``-m``, so that it
imports MLflow only, not distmeta's package (and with it torch); hence no distmeta imports
here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["BATCH", "main", "write"]

BATCH = 1000
"""Metric values per ``log_batch`` request: MLflow refuses more."""


def write(lines: Iterable[str], client: Any, run_id: str) -> None:
    """Carry out the protocol's messages in ``lines`` with ``client`` (an ``MlflowClient``)."""
    from mlflow.entities import Metric

    for line in lines:
        if not line.strip():
            continue
        message = json.loads(line)
        if "metrics" in message:
            metrics = [Metric(k, v, t, s) for k, v, t, s in message["metrics"]]
            for first in range(0, len(metrics), BATCH):
                client.log_batch(run_id, metrics=metrics[first : first + BATCH])
        else:
            path, artifact_path = message["file"]
            client.log_artifact(run_id, path, artifact_path)


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


def main(argv: list[str]) -> int:
    """``writer.py TRACKING_URI RUN_ID``: serve stdin until it closes."""
    # A Ctrl-C meant for training reaches the whole process group; what was queued still goes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # It only has to keep up, not to be fast: where cores are scarce, training comes first.
    if hasattr(os, "nice"):
        os.nice(10)
    import logging
    import warnings

    # This process prints nothing a user could act on: its one answer is the error line.
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    from mlflow import MlflowClient

    tracking_uri, run_id = argv[1], argv[2]
    try:
        write(sys.stdin, MlflowClient(tracking_uri), run_id)
    except Exception as error:
        print(json.dumps({"error": _reason(error)}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    here = str(Path(__file__).resolve().parent)
    # Run as a file, Python put this folder first on the path: its modules must not shadow
    # top-level ones (``store``, ``link``, ...) for MLflow's imports.
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(here)]
    sys.exit(main(sys.argv))
