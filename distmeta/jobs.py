"""Submit a distmeta run to a Ray cluster as a Ray Job, and follow it to the end.

The current directory travels as the job's ``working_dir`` (Ray honours ``.gitignore``, so
virtual environments, run folders and prepared data stay home), the config travels inside it,
and the job runs ``python -m distmeta.cli train CONFIG --set ...`` on the cluster with the
submitting checkout's code. Token authentication needs nothing here: Ray's SDK reads the
token the way Ray's own CLI does (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``) whenever ``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from distmeta.errors import ClusterError, ConfigError

__all__ = [
    "TERMINAL_STATES",
    "entrypoint",
    "follow_logs",
    "job_client",
    "job_logs",
    "job_status",
    "stop_job",
    "submit_run",
]

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
AGENT_WAIT_S = 60.0
"""How long a submission waits for the head's job agent, which comes up seconds after the
dashboard answers (a freshly started head refuses jobs with "No available agent")."""


def job_client(address: str | None):
    """A Job Submission client for the cluster at ``address`` (``http://HOST:8265``); with
    ``None``, ``RAY_ADDRESS`` or ``RAY_API_SERVER_ADDRESS`` as Ray's CLI reads them."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as error:  # the SDK raises ConnectionError, ValueError, RuntimeError
        where = address or "RAY_ADDRESS"
        raise ClusterError(
            f"cannot reach the Ray cluster at {where}: {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


def entrypoint(
    command: str,
    config: str,
    overrides: Sequence[str] = (),
    mlflow_uri: str | None = None,
    run_dir: str | None = None,
) -> str:
    """The shell command the job runs (``train`` or ``tune``), quoted for the shell."""
    words = ["python", "-m", "distmeta.cli", command, config]
    for override in overrides:
        words += ["--set", override]
    if mlflow_uri:
        words += ["--set", f"tracking.uri={mlflow_uri}"]
    if run_dir:
        words += ["--run-dir", run_dir]
    if command == "train":
        words.append("--no-progress")
    return shlex.join(words)


def submit_run(
    address: str | None,
    config: str | Path,
    overrides: Sequence[str] = (),
    mlflow_uri: str | None = None,
    run_dir: str | None = None,
    command: str = "train",
    working_dir: str | Path = ".",
) -> str:
    """Submit ``distmeta COMMAND CONFIG`` as a Ray Job; returns the job's submission id.

    The config is checked on the cluster, where it runs: a broken config makes the job fail
    with the config error in its logs. Here it must only be a file inside ``working_dir``.
    """
    root = Path(working_dir).resolve()
    path = Path(config).resolve()
    if not path.is_file():
        raise ConfigError(f"config {config} not found")
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise ConfigError(
            f"config {config} is outside the working directory {root}, which is what travels "
            "to the cluster: run distmeta submit from a folder that contains it"
        ) from None
    env_vars = {"MLFLOW_TRACKING_URI": mlflow_uri} if mlflow_uri else {}
    client = job_client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(
                entrypoint=entrypoint(command, relative.as_posix(), overrides, mlflow_uri, run_dir),
                runtime_env={"working_dir": str(root), "env_vars": env_vars},
                metadata={"distmeta_config": relative.as_posix()},
            )
        except Exception as error:
            if "No available agent" in str(error) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise ClusterError(f"the cluster refused the job: {_first_line(error)}") from None


def follow_logs(address: str | None, job_id: str, out: TextIO = sys.stdout) -> str:
    """Print the job's logs as they come until it ends; returns its final status."""
    client = job_client(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return job_status(address, job_id)


def job_status(address: str | None, job_id: str) -> str:
    try:
        return str(job_client(address).get_job_status(job_id).value)
    except RuntimeError as error:
        raise ClusterError(f"job {job_id}: {_first_line(error)}") from None


def job_logs(address: str | None, job_id: str) -> str:
    try:
        return job_client(address).get_job_logs(job_id)
    except RuntimeError as error:
        raise ClusterError(f"job {job_id}: {_first_line(error)}") from None


def stop_job(address: str | None, job_id: str) -> bool:
    """Ask the cluster to stop the job; ``False`` if it had already ended."""
    try:
        return bool(job_client(address).stop_job(job_id))
    except RuntimeError as error:
        raise ClusterError(f"job {job_id}: {_first_line(error)}") from None
