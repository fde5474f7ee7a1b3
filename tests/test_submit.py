"""Ray Jobs: `distmeta submit` against a real Ray head started here, with token auth on."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from free_ports import free_ports

VENV_BIN = Path(sys.executable).parent


def _stop_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the head's process group, then SIGKILL what is left after ``grace_s``."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 in its own process group, token auth on.

    Its Ray temp folder is private (short: socket paths have a length limit), so the address
    file that `ray start` leaves behind never points this machine's next `ray.init` at it."""
    folder = tmp_path_factory.mktemp("head")
    ray_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    env = dict(os.environ)
    env.update(
        RAY_TMPDIR=ray_tmp,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    dashboard, gcs, agent_http, agent_grpc, metrics, runtime_env, client = free_ports(7)
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--disable-usage-stats", "--num-cpus=2",
        # Ray's fixed default ports would collide with the session's test cluster: its job
        # agent then never comes up ("No available agent to submit job").
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--ray-client-server-port={client}",
    ]  # fmt: skip
    log_path = folder / "head.log"
    log = log_path.open("w")
    head = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(address, env, head, log_path)
        yield {"address": address, "env": env}
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_for_dashboard(
    address: str, env: dict, head: subprocess.Popen, log: Path, timeout_s=90.0
) -> None:
    probe = (
        "import sys; from ray.job_submission import JobSubmissionClient as C;"
        "C(sys.argv[1]).get_version()"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            tail = "\n".join(log.read_text().splitlines()[-5:])
            raise RuntimeError(f"ray start exited early; the end of its log:\n{tail}")
        done = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray head's dashboard at {address} did not answer in {timeout_s} s")


def _submit(ray_head, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "distmeta.cli",
        "submit",
        "--address",
        ray_head["address"],
        *args,
    ]
    return subprocess.run(
        command, cwd=cwd, env=ray_head["env"], capture_output=True, text=True, timeout=300
    )


def test_submit_wait_runs_a_training_to_success_and_tracks_it(ray_head, tmp_path):
    config = {
        "task": {"shots": 5, "query": 5},
        "model": {"hidden": [8]},
        "train": {"steps": 100, "meta_batch_size": 4, "checkpoint_every": 50, "log_every": 50},
        "eval": {"tasks": 10},
        "tracking": {"experiment": "submitted"},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _submit(ray_head, tmp_path, "tiny.yaml", "--wait", "--mlflow", store, "--set", "seed=4")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "done: 100 steps" in done.stdout
    jobs = [sys.executable, "-m", "distmeta.cli", "jobs", "--address", ray_head["address"]]
    status = subprocess.run(
        [*jobs, "status", job_id], env=ray_head["env"], capture_output=True, text=True
    )
    assert status.stdout.strip() == "SUCCEEDED"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("submitted")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["seed"] == "4"
    assert runs[0].data.metrics["loss"] > 0


def test_a_broken_config_fails_the_job_with_the_config_error(ray_head, tmp_path):
    (tmp_path / "bad.yaml").write_text("algorithm: {inner_lr: -1}\n")
    done = _submit(ray_head, tmp_path, "bad.yaml", "--wait")
    assert done.returncode != 0
    assert "algorithm.inner_lr" in done.stdout
    assert "FAILED" in done.stderr


def test_a_wrong_token_is_one_clear_error(ray_head, tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    env = {**ray_head["env"], "RAY_AUTH_TOKEN": "not-the-token"}
    command = [
        sys.executable,
        "-m",
        "distmeta.cli",
        "submit",
        "--address",
        ray_head["address"],
        "c.yaml",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "Invalid authentication token" in done.stderr


def test_a_config_outside_the_working_directory_is_refused(ray_head, tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    (tmp_path / "sub").mkdir()
    done = _submit(ray_head, tmp_path / "sub", "../c.yaml")
    assert done.returncode == 2
    assert "outside the working directory" in done.stderr


def _jobs(ray_head, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "distmeta.cli", "jobs", *args, "--address"]
    return subprocess.run(
        [*command, ray_head["address"]],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _status_becomes(ray_head, job_id: str, wanted: set[str], timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = _jobs(ray_head, "status", job_id).stdout.strip()
        if status in wanted or time.monotonic() > deadline:
            return status
        time.sleep(1)


def test_jobs_status_logs_and_stop_follow_a_running_job(ray_head, tmp_path):
    config = {
        "task": {"shots": 5, "query": 5},
        "model": {"hidden": [8]},
        "train": {"steps": 100_000, "meta_batch_size": 2, "log_every": 100},  # ends by itself
        "tracking": {"enabled": False},
    }
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    done = _submit(ray_head, tmp_path, "long.yaml", "--set", "algorithm.execution=loop")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[0]
    try:
        assert _status_becomes(ray_head, job_id, {"RUNNING"}) == "RUNNING"
        deadline = time.monotonic() + 120
        while "step 100: time" not in (logs := _jobs(ray_head, "logs", job_id).stdout):
            assert time.monotonic() < deadline, logs
            time.sleep(1)
        stopped = _jobs(ray_head, "stop", job_id)
        assert stopped.returncode == 0 and stopped.stdout.strip() == "stopping"
        assert _status_becomes(ray_head, job_id, {"STOPPED"}) == "STOPPED"
    finally:  # the job's driver outlives the head's process group: never leave it running
        _jobs(ray_head, "stop", job_id)
        _status_becomes(ray_head, job_id, {"STOPPED", "SUCCEEDED", "FAILED"})
    again = _jobs(ray_head, "stop", job_id)
    assert again.returncode == 0 and again.stdout.strip() == "already ended"
    unknown = _jobs(ray_head, "status", "raysubmit_nosuchjob")
    assert unknown.returncode == 2 and "raysubmit_nosuchjob" in unknown.stderr
