"""MLflow: tracked training runs, Model Registry export, the adapt-then-predict pyfunc and its
HTTP serving, registered models evaluated like run folders, and one clear line per error.

The end-to-end tests run against a real ``mlflow server`` (sqlite backend, one worker) and a
real ``mlflow models serve``, both started here on 127.0.0.1 and stopped by process group.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from conftest import StopAt
from free_ports import free_port as _free_port
from imagesets import synthetic_image_set
from mlflow import MlflowClient
from mlflow_service import MLFLOW
from mlflow_service import environment as _environment
from mlflow_service import service as _service

import distmeta as dm
from distmeta.cli import main
from distmeta.engine.rundir import MetricsLog, RunDir
from distmeta.errors import TrackingError
from distmeta.experiment import build_task_source
from distmeta.tracking import MLflowTracker, export_model, resolve_tracking_uri
from distmeta.tracking.link import read_link
from distmeta.tracking.provenance import flatten_config
from distmeta.tracking.pyfunc import input_example
from distmeta.tracking.quiet import quiet_mlflow
from distmeta.tracking.store import open_store
from distmeta.tracking.uploader import RunUploader
from distmeta.tracking.writer import write

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "seed": 1,
    "task": {"shots": 5, "query": 5},
    "model": {"hidden": [8]},
    "algorithm": {"name": "maml", "inner_rule": "metasgd", "inner_lr": 0.02},
    "train": {"steps": 20, "meta_batch_size": 2, "checkpoint_every": 10, "log_every": 5},
    "eval": {"tasks": 20, "inner_steps": 3},
    "tracking": {"experiment": "tracking-tests"},
}


@pytest.fixture(scope="module")
def tracked(server, tmp_path_factory):
    """A tiny Meta-SGD run trained with ``distmeta train`` against the server and exported with
    ``distmeta export --name sine --alias champion``."""
    root = tmp_path_factory.mktemp("tracked")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "tracking": {**TINY["tracking"], "uri": server}}))
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["train", str(config), "--run-dir", str(run_dir), "--no-progress"]) == 0
        assert main(["export", str(run_dir), "--name", "sine", "--alias", "champion"]) == 0
    return {"uri": server, "run_dir": run_dir, "link": read_link(RunDir(run_dir))}


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """A sqlite store shared by the tests that need one but not a server (its tables are
    created once: that takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('local-store') / 'mlflow.db'}"
    with quiet_mlflow():
        MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def at_server(tracked, monkeypatch):
    """MLflow's module-level API pointed at the test server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    return tracked


def _tasks(count: int = 3, seed: int = 77):
    return dm.tasks.Sinusoid(shots=5, query=9).sample(seed, 0, range(count))


def _request(batch, steps: list[int | None]) -> pd.DataFrame:
    rows = []
    for index, inner_steps in enumerate(steps):
        sx, sy, qx, _ = batch.task(index)
        row = {"support_x": sx.tolist(), "support_y": sy.tolist(), "query_x": qx.tolist()}
        if inner_steps is not None:
            row["inner_steps"] = inner_steps
        rows.append(row)
    return pd.DataFrame(rows)


def _adapted(run, batch, steps: list[int | None]) -> list[torch.Tensor]:
    """Query predictions of adapting the run's meta-parameters with ``algo.adapt``."""
    outputs = []
    for index, inner_steps in enumerate(steps):
        sx, sy, qx, _ = batch.task(index)
        fast = run.algorithm.adapt(run.params, sx, sy, steps=inner_steps)
        outputs.append(torch.func.functional_call(run.model, fast, (qx,)).double())
    return outputs


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    text = " ".join(lines)
    assert len(lines) <= 3 and text.startswith("error:"), result.stderr  # rich may wrap once
    for fragment in fragments:
        assert fragment in text, text
    return text


def _distmeta(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distmeta.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or _environment(),
        timeout=300,
    )


# --- tracking ------------------------------------------------------------------------------


def test_training_run_logs_params_metrics_files_and_plots(tracked):
    client = MlflowClient(tracked["uri"])
    link = tracked["link"]
    assert link.tracking_uri == tracked["uri"]
    run = client.get_run(link.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-tests"

    params = run.data.params
    assert params["algorithm.inner_rule"] == "metasgd"
    assert params["algorithm.inner_lr"] == "0.02"
    assert params["model.hidden"] == "[8]"
    assert params["train.steps"] == "20"

    records = MetricsLog.read(RunDir(tracked["run_dir"]))
    loss = client.get_metric_history(link.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(r["step"], r["loss"]) for r in records]
    rates = client.get_metric_history(link.run_id, "tasks_per_s")  # sampled once a second
    assert rates[0].step == 5 and {m.step for m in rates} <= {5, 10, 15, 20}
    assert rates[0].value == records[0]["tasks_per_s"]
    memory = client.get_metric_history(link.run_id, "memory_peak_mb")
    assert [m.step for m in memory] == [m.step for m in rates]
    assert all(m.value > 50 for m in memory)
    adapted = client.get_metric_history(link.run_id, "adapt_loss")
    assert sorted(m.step for m in adapted) == [0, 1, 2, 3]

    files = set()
    pending = [None]
    while pending:
        for item in client.list_artifacts(link.run_id, pending.pop()):
            (pending.append(item.path) if item.is_dir else files.add(item.path))
    assert files == {
        "config.yaml",
        "source_config/tiny.yaml",
        "checkpoints/step-00000010.pt",
        "checkpoints/step-00000020.pt",
        "final.pt",
        "plots/learning_curve.png",
        "plots/adaptation_curve.png",
    }
    plot = Path(client.download_artifacts(link.run_id, "plots/adaptation_curve.png"))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    logged_config = Path(client.download_artifacts(link.run_id, "config.yaml"))
    assert yaml.safe_load(logged_config.read_text())["algorithm"]["inner_rule"] == "metasgd"

    tags = run.data.tags
    assert tags["version.torch"] == torch.__version__
    assert tags["version.mlflow"] == mlflow.__version__
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert tags.get("mlflow.source.git.commit") == (commit or None)


# --- export and the registered model -----------------------------------------------------


def test_export_registers_version_1_with_the_alias(tracked):
    client = MlflowClient(tracked["uri"])
    version = client.get_model_version_by_alias("sine", "champion")
    assert version.version == "1"
    assert version.run_id == tracked["link"].run_id


def test_registered_pyfunc_adapts_then_predicts_like_algo_adapt(at_server):
    model = mlflow.pyfunc.load_model("models:/sine@champion")
    run = dm.load_run(at_server["run_dir"])
    batch = _tasks()
    steps = [None, 0, 4]  # default (algorithm.inner_steps), no adaptation, more steps
    predicted = model.predict(_request(batch, steps))
    assert list(predicted.columns) == ["query_pred"]
    expected = _adapted(run, batch, steps)
    for index, reference in enumerate(expected):
        got = torch.tensor(predicted["query_pred"][index], dtype=torch.float64)
        assert got.shape == (9, 1)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
    # Adaptation changes the answer, so the comparison above can tell it happened.
    unadapted = _adapted(run, batch, [0, 0, 0])[2]
    assert (expected[2] - unadapted).abs().max() > 1e-3


def test_pyfunc_names_a_malformed_task(at_server):
    model = mlflow.pyfunc.load_model("models:/sine@champion")
    request = _request(_tasks(2), [None, None])
    request.at[1, "support_y"] = [[0.5], [0.1]]  # 2 targets for 5 inputs
    with pytest.raises(mlflow.MlflowException, match=r"task 1: support_y must be \[5, 1\]"):
        model.predict(request)


def test_pytorch_flavor_holds_the_meta_learned_initialisation(at_server):
    network = mlflow.pytorch.load_model("models:/sine@champion")
    run = dm.load_run(at_server["run_dir"])
    weights = network.state_dict()
    assert set(weights) == set(run.algorithm.model_param_names)
    for name, value in weights.items():
        assert torch.equal(value, run.params[name])


def test_served_model_answers_http_with_the_same_predictions(tracked, tmp_path):
    port = _free_port()
    command = [
        str(MLFLOW),
        "models",
        "serve",
        "-m",
        "models:/sine@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    env = _environment(MLFLOW_TRACKING_URI=tracked["uri"])
    batch = _tasks(2, seed=5)
    request = _request(batch, [None, 2])
    body = json.dumps({"dataframe_split": request.to_dict(orient="split", index=False)})
    url = f"http://127.0.0.1:{port}"
    with _service(command, f"{url}/ping", tmp_path / "serve.log", env):
        call = urllib.request.Request(
            f"{url}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(call, timeout=60) as answer:
            predictions = json.loads(answer.read())["predictions"]
    expected = _adapted(dm.load_run(tracked["run_dir"]), batch, [None, 2])
    assert len(predictions) == 2
    for row, reference in zip(predictions, expected, strict=True):
        got = torch.tensor(row["query_pred"], dtype=torch.float64)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)


def test_eval_of_a_registered_model_matches_its_run_folder(tracked, capsys):
    assert main(["eval", str(tracked["run_dir"]), "--json", "--tasks", "7"]) == 0
    from_folder = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    registered = ["eval", "models:/sine@champion", "--json", "--tasks", "7"]
    assert main([*registered, "--tracking-uri", tracked["uri"]]) == 0
    from_registry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_registry == from_folder
    assert from_registry["steps"] == [0, 1, 2, 3]


def test_export_of_an_untracked_run_to_another_store(tmp_path, monkeypatch, local_store):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = dm.config.parse_config({**TINY, "tracking": {"enabled": False}})
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    export = ["export", str(tmp_path / "run"), "--name", "untracked", "--tracking-uri"]
    assert main([*export, local_store]) == 0
    client = MlflowClient(local_store)
    version = client.get_model_version("untracked", "1")
    recorded = client.get_run(version.run_id)  # a run made for the export, with the config
    assert recorded.info.run_name == "run (export)"
    assert recorded.data.params["algorithm.inner_rule"] == "metasgd"
    store = Path(local_store.removeprefix("sqlite:///")).parent
    assert (store / "mlartifacts" / "models").is_dir()
    assert list(elsewhere.iterdir()) == []  # nothing went to a default store in the cwd


@pytest.mark.parametrize(
    ("ways", "algorithm", "evaluation"),
    [
        (3, {}, {}),
        (4, {"zero_init": ["head.weight", "head.bias"]}, {"ways": 3, "inner_lr": 0.3}),
    ],
    ids=["three-ways", "trained-on-four-ways-head-at-zero"],
)
def test_registered_classifier_predicts_classes_and_probabilities(
    ways, algorithm, evaluation, tmp_path, monkeypatch, local_store
):
    images = synthetic_image_set(tmp_path / "marks.arrow", classes=12, drawers=4, size=16)
    task = {"name": "fewshot", "path": str(images), "ways": ways, "shots": 1, "query": 2}
    config = dm.config.parse_config(
        {
            "seed": 2,
            "task": {**task, "rotations": False, "val_fraction": 0.25, "eval_split": "val"},
            "model": {"name": "conv4", "hidden": 8},
            "algorithm": {"name": "maml", "inner_lr": 0.4, **algorithm},
            "train": {"steps": 2, "meta_batch_size": 2, "checkpoint_every": 2, "log_every": 1},
            "eval": evaluation,
            "tracking": {"enabled": False},
        }
    )
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    export_model(tmp_path / "run", "marks", alias="champion", tracking_uri=local_store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_store)
    model = mlflow.pyfunc.load_model("models:/marks@champion")
    run = dm.load_run(tmp_path / "run")
    source = build_task_source(config, split="eval")
    params = run.params_for(source)
    assert params["head.weight"].shape[0] == 3
    batch = source.sample(5, 0, range(2))
    predicted = model.predict(input_example(batch, inner_steps=2))
    for index in range(2):
        sx, sy, qx, _ = batch.task(index)
        fast = run.algorithm.adapt(params, sx, sy, steps=2, inner_lr=config.eval.inner_lr)
        logits = run.algorithm.forward(fast, qx).double()
        probabilities = torch.tensor(predicted["query_proba"][index], dtype=torch.float64)
        torch.testing.assert_close(probabilities, logits.softmax(-1), rtol=0, atol=1e-6)
        assert predicted["query_pred"][index] == logits.argmax(-1).tolist()


# --- one clear line for every error ------------------------------------------------------


def test_export_of_a_missing_run_is_one_line(tmp_path):
    result = _distmeta("export", tmp_path / "nowhere", "--name", "sine")
    _one_error_line(result, "nowhere", "does not exist")


def test_export_of_an_unfinished_run_is_one_line(tmp_path):
    RunDir(tmp_path / "run").write_config(dm.config.config_to_dict(dm.config.parse_config(TINY)))
    result = _distmeta("export", tmp_path / "run", "--name", "sine")
    _one_error_line(result, "final.pt not found", "has not finished")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--name", "team/sine", "refuses the name 'team/sine'"), ("--alias", "v3", "alias 'v3'")],
)
def test_export_under_a_name_or_alias_the_registry_refuses_is_one_line(
    tracked, option, value, fragment
):
    names = {"--name": "sine", "--alias": "champion", option: value}
    args = [x for pair in names.items() for x in pair]
    result = _distmeta("export", tracked["run_dir"], *args, "--tracking-uri", tracked["uri"])
    _one_error_line(result, fragment)
    versions = MlflowClient(tracked["uri"]).search_model_versions("name='sine'")
    assert [v.version for v in versions] == ["1"]  # nothing was registered


def test_unreachable_server_fails_before_training(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    result = _distmeta(
        "train",
        config,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"tracking.uri=http://127.0.0.1:{port}",
    )
    _one_error_line(result, f"http://127.0.0.1:{port}", "cannot be used")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


def test_the_store_check_survives_a_connection_the_server_resets():
    """A server may drop a kept-alive connection as a request arrives on it (a Tune trial in a
    reused actor process did, after the previous trial's idle connection timed out): the
    check retries instead of failing the run."""
    answers = []

    def serve(listener: socket.socket) -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                if not answers:  # the first request: reset the connection, answer nothing
                    answers.append("reset")
                    linger = struct.pack("ii", 1, 0)
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    continue
                body = b'{"experiments": []}'
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                answers.append("answered")

    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=serve, args=(listener,), daemon=True)
        server.start()
        open_store(f"http://127.0.0.1:{listener.getsockname()[1]}")
        server.join(timeout=10)
    assert answers == ["reset", "answered"]


def test_a_store_in_a_missing_folder_fails_before_training(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    (tmp_path / "db").write_text("a file where the database folder should be")
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    result = _distmeta(
        "train", config, "--run-dir", tmp_path / "run", "--set", f"tracking.uri={uri}"
    )
    _one_error_line(result, str(tmp_path / "db"), "is not a folder")
    assert not (tmp_path / "run").exists()


def test_an_unwritable_artifact_folder_fails_before_training(tmp_path):
    (tmp_path / "mlartifacts").write_text("a file where the artifact folder should be")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = dm.config.parse_config({**TINY, "tracking": {"uri": uri}})
    with pytest.raises(TrackingError, match="cannot create the artifact folder .*mlartifacts"):
        MLflowTracker(config)


# --- the embedded store, resume, interruption --------------------------------------------


def test_default_store_is_sqlite_in_the_working_directory_and_resume_continues_the_run(
    tmp_path, monkeypatch
):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    first = _distmeta("train", config, "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # No library noise: a line per record and the summary line are all the user sees.
    lines = [line for line in first.stderr.splitlines() if line.strip()]
    records = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in records] == [f"step {s}" for s in (5, 10, 15, 20)]
    rest = lines[len(records) :]
    assert len(rest) <= 2 and rest[0].startswith("done:"), first.stderr
    assert "INFO" not in first.stderr and "Warning" not in first.stderr, first.stderr
    link = read_link(RunDir(tmp_path / "run"))
    assert link.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlartifacts" / link.run_id / "artifacts" / "final.pt").is_file()

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    resume = ["train", str(config), "--run-dir", "run", "--resume", "--no-progress"]
    assert main([*resume, "--set", "train.steps=30"]) == 0
    assert read_link(RunDir(tmp_path / "run")) == link
    client = MlflowClient(link.tracking_uri)
    run = client.get_run(link.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "20" and run.data.tags["resumed.train.steps"] == "30"
    steps = [m.step for m in client.get_metric_history(link.run_id, "loss")]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_an_interrupted_run_ends_killed_with_its_metrics(tmp_path, local_store):
    uri = local_store
    config = dm.config.parse_config({**TINY, "tracking": {"uri": uri}})
    with pytest.raises(KeyboardInterrupt), MLflowTracker(config) as tracker:
        dm.train(
            config, run_dir=str(tmp_path / "run"), callbacks=[tracker, StopAt(10)], progress=False
        )
    client = MlflowClient(uri)
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [5, 10]


# --- units ---------------------------------------------------------------------------------


class _RecordingClient:
    def __init__(self):
        self.batches: list[list] = []
        self.files: list[tuple] = []

    def log_batch(self, run_id, metrics=()):
        self.batches.append(list(metrics))

    def log_artifact(self, run_id, path, artifact_path=None):
        self.files.append((path, artifact_path))


def test_writer_sends_metrics_in_batches_of_at_most_1000():
    client = _RecordingClient()
    rows = [[name, 1.0 / step, 0, step] for step in range(1, 1251) for name in ("loss", "rate")]
    lines = [json.dumps({"metrics": rows}), json.dumps({"file": ["/tmp/a.pt", "checkpoints"]})]
    write(lines, client, "run")
    assert [len(batch) for batch in client.batches] == [1000, 1000, 500]
    losses = [m for batch in client.batches for m in batch if m.key == "loss"]
    assert [m.step for m in losses] == list(range(1, 1251))
    assert client.files == [("/tmp/a.pt", "checkpoints")]


def test_uploader_sends_from_a_writer_process_while_training_goes_on(local_store):
    uri = local_store
    client = MlflowClient(uri)
    with quiet_mlflow():
        run_id = client.create_run(client.create_experiment("uploader")).info.run_id
    uploader = RunUploader(uri, run_id, interval=0.05)
    for step in range(1, 1501):
        uploader.log_metrics(step, {"loss": 1.0 / step})
    deadline = time.monotonic() + 60
    while not client.get_metric_history(run_id, "loss") and time.monotonic() < deadline:
        time.sleep(0.1)  # sent before close: the writer works in the background
    assert client.get_metric_history(run_id, "loss")
    uploader.log_metrics(1501, {"loss": 0.0})
    uploader.close()
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 1502))


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX process priorities")
def test_the_writer_yields_the_cores_to_training(local_store):
    """On a machine with few cores the writer competes with training for them; it runs at a
    lower priority (a local tracking server cost 4.7 % of a sinusoid run without it)."""
    with quiet_mlflow():
        client = MlflowClient(local_store)
        run_id = client.create_run(client.create_experiment("priority")).info.run_id
    uploader = RunUploader(local_store, run_id, interval=0.05)
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        deadline = time.monotonic() + 30
        while os.getpriority(os.PRIO_PROCESS, uploader._writer.pid) <= own:
            assert time.monotonic() < deadline, "the writer kept the training's priority"
            time.sleep(0.05)
    finally:
        uploader.close()


def test_uploader_reports_what_the_writer_could_not_do(local_store):
    uploader = RunUploader(local_store, "0123456789abcdef", interval=0.05)  # no such run
    uploader.log_metrics(1, {"loss": 0.5})
    with pytest.raises(TrackingError, match="logging failed: Run .*0123456789abcdef.* not found"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            uploader.log_metrics(2, {"loss": 0.4})
            time.sleep(0.05)
    with pytest.raises(TrackingError, match="logging failed"):
        uploader.close()


def test_config_is_flattened_to_dotted_params():
    flat = flatten_config({"a": {"b": 0.01, "c": [40, 40], "d": None, "e": {}}, "f": "x"})
    assert flat == {"a.b": "0.01", "a.c": "[40, 40]", "a.d": "null", "a.e": "{}", "f": "x"}


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///sub/x.db") == f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://example:80") == "http://example:80"
