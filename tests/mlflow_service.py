"""Real MLflow services for tests: a tracking server (the ``server`` fixture in conftest.py)
and ``mlflow models serve``, started on 127.0.0.1 in their own process group and stopped by
it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from free_ports import free_port

BIN = Path(sys.executable).parent
MLFLOW = BIN / "mlflow"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without ``MLFLOW_TRACKING_URI``, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@contextmanager
def service(command: list[str], ready: str, log: Path, env: dict[str, str], timeout=120):
    """Start ``command`` in its own process group, wait until ``ready`` answers 200, and stop
    the group at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[1]} exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{command[1]} did not start in {timeout} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def tracking_server(root: Path) -> Iterator[str]:
    """A real MLflow tracking server with a sqlite backend and proxied artifacts in ``root``;
    yields its URI."""
    port = free_port()
    command = [
        str(MLFLOW),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    env = environment(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    uri = f"http://127.0.0.1:{port}"
    with service(command, f"{uri}/health", root / "server.log", env):
        yield uri
