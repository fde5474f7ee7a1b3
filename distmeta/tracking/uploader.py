"""Send a run's metrics and files to MLflow without making training wait.

A tracking store answers in milliseconds (sqlite in this process, all of it Python under the
GIL) to tens of milliseconds (a server), while a small meta-training step takes a few
milliseconds: one request per logged step would double the training time. Training therefore
only appends to a list; a thread ships what has gathered once per interval, as JSON lines, to
a writer process (:mod:`~distmeta.tracking.writer`) that makes the MLflow calls on another
core, metrics in ``log_batch`` requests of up to 1000 values.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from distmeta.errors import TrackingError

__all__ = ["RunUploader"]

_WRITER = Path(__file__).with_name("writer.py")


class RunUploader:
    """Queue one MLflow run's metrics and files; a writer process sends them.

    Description:
        :meth:`log_metrics` and :meth:`log_file` append and return. Every ``interval``
        seconds a daemon thread ships what has gathered to the writer process, which sends
        it to the store (the client retries failed requests itself). When the writer fails,
        the next call (or :meth:`close`) raises a :class:`~distmeta.errors.TrackingError`
        with its reason. :meth:`close` ships the rest and waits until everything is sent.

    Args:
        tracking_uri: The run's tracking store.
        run_id: The MLflow run.
        interval: Seconds between shipments (default 1.0): the delay before a value shows in
            the MLflow UI.
    """

    def __init__(self, tracking_uri: str, run_id: str, interval: float = 1.0):
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.interval = float(interval)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the writer
        self._writer = subprocess.Popen(
            [sys.executable, str(_WRITER), tracking_uri, run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
        )
        self._metrics: list[list] = []
        self._files: list[list] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failure: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="distmeta-mlflow", daemon=True)
        self._thread.start()

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Queue one value per metric name at ``step``, timestamped now."""
        self._raise_failure()
        timestamp = int(time.time() * 1000)
        rows = [[name, float(value), timestamp, int(step)] for name, value in values.items()]
        with self._lock:
            self._metrics.extend(rows)

    def log_file(self, path: str, artifact_path: str | None = None) -> None:
        """Queue the local file ``path`` for the run's artifact folder ``artifact_path``; the
        file must stay in place until it is sent (at the latest by :meth:`close`)."""
        self._raise_failure()
        with self._lock:
            self._files.append([path, artifact_path])

    def close(self) -> None:
        """Ship what is queued, wait until the writer has sent it all, and stop it.

        Raises:
            TrackingError: The writer failed.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join()
        if self._failure is None:
            self._ship()
        with contextlib.suppress(OSError):  # the writer is gone; its answer says why
            self._writer.stdin.close()
        self._writer.wait()
        self._read_failure()
        self._stderr.close()
        self._raise_failure()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._ship():
                return

    def _ship(self) -> bool:
        """Hand the queue to the writer; ``False`` once the writer has failed."""
        with self._lock:
            metrics, self._metrics = self._metrics, []
            files, self._files = self._files, []
        lines = [json.dumps({"metrics": metrics})] if metrics else []
        lines += [json.dumps({"file": file}) for file in files]
        try:
            if lines:
                self._writer.stdin.write("\n".join(lines) + "\n")
                self._writer.stdin.flush()
        except OSError:
            pass  # a broken pipe: the writer exited, and says why below
        if self._writer.poll() is None:
            return True
        self._read_failure()
        return False

    def _read_failure(self) -> None:
        if self._writer.returncode in (None, 0) or self._failure is not None:
            return
        answer = self._writer.stdout.read().strip().splitlines()
        try:
            reason = json.loads(answer[-1])["error"]
        except (IndexError, ValueError, KeyError):
            self._stderr.seek(0)
            lines = [x for x in self._stderr.read().decode(errors="replace").splitlines() if x]
            reason = lines[-1] if lines else f"exit status {self._writer.returncode}"
        self._failure = reason

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise TrackingError(
                f"MLflow run {self.run_id} at {self.tracking_uri}: logging failed: {self._failure}"
            )
