"""The deployment files (cluster/, docker/) pass their tools' own validation, offline, and every
validator refuses a planted mistake with a message that names the file and the problem."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from distmeta.deploy import (
    lint_dockerfile,
    validate_all,
    validate_compose_file,
    validate_kuberay_manifest,
    validate_launcher_config,
)
from distmeta.deploy.validate import main
from distmeta.errors import DeploymentError

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_CONFIGS = sorted((REPO / "cluster").glob("*.yaml"))
KUBERAY_MANIFESTS = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
COMPOSE_FILE = REPO / "docker" / "compose.yaml"


def _name(path: Path) -> str:
    return path.name


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every check here runs offline: a connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a deployment check tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _refused(check, path: Path, *fragments: str) -> str:
    """Run a check that must fail; the message names the file and every fragment."""
    with pytest.raises(DeploymentError) as info:
        check(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def _plant_text(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    """A copy of ``source`` with the one occurrence of ``old`` replaced by ``new``."""
    text = source.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {source}"
    planted = tmp_path / source.name
    planted.write_text(text.replace(old, new))
    return planted


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _plant_documents(tmp_path: Path, source: Path, mutate) -> Path:
    """A copy of a manifest after ``mutate(documents)`` changed its parsed objects."""
    documents = _load_documents(source)
    mutate(documents)
    planted = tmp_path / source.name
    planted.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return planted


def _by_kind(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict:
    matches = [d for d in documents if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, (kind, name)
    return matches[0]


# The shipped files ---------------------------------------------------------------------------


def test_every_deployment_file_the_issue_asks_for_exists():
    assert [p.name for p in LAUNCHER_CONFIGS] == ["aws.yaml", "gcp.yaml"]
    # Every cluster/*.yaml is checked as a launcher config; other folders may grow.
    assert {"mlflow.yaml", "raycluster.yaml", "rayjob.yaml"} <= {p.name for p in KUBERAY_MANIFESTS}
    assert {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.mlflow"} <= {
        p.name for p in DOCKERFILES
    }
    assert COMPOSE_FILE.is_file()
    assert (REPO / "cluster" / "README.md").is_file()


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_name)
def test_launcher_config_passes_rays_validation(path):
    validate_launcher_config(path)


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=_name)
def test_kuberay_manifest_passes_kubernetes_and_kuberay_schemas(path):
    validate_kuberay_manifest(path)


@pytest.mark.parametrize("path", DOCKERFILES, ids=_name)
def test_dockerfile_passes_hadolint(path):
    lint_dockerfile(path)


def test_compose_file_passes():
    validate_compose_file(COMPOSE_FILE)


def test_validate_all_checks_every_shipped_file():
    checked = validate_all(REPO)
    assert sorted(checked) == sorted(
        [*LAUNCHER_CONFIGS, *KUBERAY_MANIFESTS, *DOCKERFILES, COMPOSE_FILE]
    )


def test_module_entry_point_reports_success_and_failure(tmp_path, capsys):
    assert main([str(REPO)]) == 0
    (tmp_path / "docker").mkdir()
    _plant_text(tmp_path / "docker", COMPOSE_FILE, '"127.0.0.1:5000:5000"', '"5000:5000"')
    assert main([str(tmp_path)]) == 2
    assert "listens on every interface" in capsys.readouterr().err


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=_name)
def test_launcher_config_has_cpu_head_autoscaling_gpu_workers_and_token_auth(path):
    config = yaml.safe_load(path.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_workers = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_workers)
    assert config["docker"]["head_image"].endswith("-cpu")
    assert config["docker"]["worker_image"].endswith("-gpu")
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token ray start" in command for command in commands)


def test_raycluster_has_cpu_and_gpu_worker_groups_and_token_auth():
    cluster = _by_kind(_load_documents(REPO / "cluster/kuberay/raycluster.yaml"), "RayCluster")
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in str(groups["cpu"]["template"])


def test_rayjob_trains_a_shipped_config_and_passes_the_tracking_uri():
    job = _by_kind(_load_documents(REPO / "cluster/kuberay/rayjob.yaml"), "RayJob")
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[:2] == ["distmeta", "train"]
    assert (REPO / entrypoint[2]).is_file()
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "tracking.uri=http://mlflow:5000" in entrypoint


def test_mlflow_manifest_has_server_postgres_and_object_store_settings():
    documents = _load_documents(REPO / "cluster/kuberay/mlflow.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("StatefulSet", "mlflow-postgres"),
        ("Service", "mlflow-postgres"),
        ("Secret", "mlflow-postgres"),
        ("Secret", "mlflow-s3"),
    } <= kinds
    server = _by_kind(documents, "Deployment", "mlflow")["spec"]["template"]["spec"]
    env = {item["name"]: item for item in server["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    assert "MLFLOW_ARTIFACTS_DESTINATION" in env
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)


def test_compose_file_runs_head_worker_mlflow_and_postgres():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres"} <= set(services)
    assert "postgresql://" in " ".join(services["mlflow"]["command"])


# Planted mistakes: Ray cluster launcher configs ----------------------------------------------


@pytest.mark.parametrize("source", LAUNCHER_CONFIGS, ids=_name)
def test_launcher_config_with_a_wrong_type_is_refused(tmp_path, source):
    planted = _plant_text(
        tmp_path,
        source,
        "min_workers: 0\n    max_workers: 8",
        'min_workers: "zero"\n    max_workers: 8',
    )
    _refused(
        validate_launcher_config,
        planted,
        "available_node_types.worker_gpu.min_workers: 'zero' is not of type 'integer'",
    )


@pytest.mark.parametrize("source", LAUNCHER_CONFIGS, ids=_name)
def test_launcher_config_with_an_unknown_key_is_refused(tmp_path, source):
    planted = _plant_text(tmp_path, source, "\nmax_workers: 8\n", "\nmax_worker: 8\n")
    _refused(validate_launcher_config, planted, "unknown key 'max_worker'")


def test_launcher_config_whose_head_type_is_not_defined_is_refused(tmp_path):
    planted = _plant_text(
        tmp_path, LAUNCHER_CONFIGS[0], "head_node_type: head_cpu", "head_node_type: head_gpu"
    )
    _refused(validate_launcher_config, planted, "`head_node_type` must be one of")


def test_launcher_config_with_an_unknown_provider_is_refused(tmp_path):
    planted = _plant_text(tmp_path, REPO / "cluster/aws.yaml", "type: aws", "type: awz")
    _refused(validate_launcher_config, planted, "Unsupported node provider: awz")


# Planted mistakes: KubeRay manifests ------------------------------------------------------------


def _raycluster(documents):
    return _by_kind(documents, "RayCluster")["spec"]


def _rayjob(documents):
    return _by_kind(documents, "RayJob")["spec"]


def test_raycluster_pod_template_with_containers_as_a_mapping_is_refused(tmp_path):
    def mutate(documents):
        _raycluster(documents)["workerGroupSpecs"][1]["template"]["spec"]["containers"] = {}

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/raycluster.yaml", mutate)
    _refused(
        validate_kuberay_manifest,
        planted,
        "RayCluster distmeta",
        "spec.workerGroupSpecs[1].template.spec.containers: {} is not of type 'array'",
    )


def test_raycluster_pod_template_with_a_misspelled_key_is_refused(tmp_path):
    def mutate(documents):
        head = _raycluster(documents)["headGroupSpec"]["template"]["spec"]["containers"][0]
        head["imagePullPolicyy"] = head.pop("image")

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/raycluster.yaml", mutate)
    _refused(
        validate_kuberay_manifest,
        planted,
        "spec.headGroupSpec.template.spec.containers[0]: unknown key 'imagePullPolicyy'",
    )


def test_rayjob_nested_pod_template_with_a_wrong_type_is_refused(tmp_path):
    def mutate(documents):
        group = _rayjob(documents)["rayClusterSpec"]["workerGroupSpecs"][0]
        group["template"]["spec"]["containers"][0]["env"] = {"MLFLOW_TRACKING_URI": "x"}

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/rayjob.yaml", mutate)
    _refused(
        validate_kuberay_manifest,
        planted,
        "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].env:",
        "is not of type 'array'",
    )


def test_raycluster_without_a_head_group_is_refused(tmp_path):
    def mutate(documents):
        del _raycluster(documents)["headGroupSpec"]

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/raycluster.yaml", mutate)
    _refused(validate_kuberay_manifest, planted, "spec: 'headGroupSpec' is a required property")


def test_rayjob_with_a_misspelled_entrypoint_is_refused(tmp_path):
    def mutate(documents):
        spec = _rayjob(documents)
        spec["entrypont"] = spec.pop("entrypoint")

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/rayjob.yaml", mutate)
    _refused(
        validate_kuberay_manifest,
        planted,
        "spec: 'entrypoint' is a required property",
        "spec: unknown key 'entrypont'",
    )


def test_raycluster_with_a_number_in_ray_start_params_is_refused(tmp_path):
    def mutate(documents):
        _raycluster(documents)["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/raycluster.yaml", mutate)
    _refused(
        validate_kuberay_manifest,
        planted,
        "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
    )


def test_worker_group_whose_minimum_exceeds_its_maximum_is_refused(tmp_path):
    def mutate(documents):
        _raycluster(documents)["workerGroupSpecs"][1]["minReplicas"] = 5

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/raycluster.yaml", mutate)
    _refused(validate_kuberay_manifest, planted, "spec.workerGroupSpecs[1]: minReplicas 5 exceeds")


def test_rayjob_with_a_runtime_env_that_is_not_a_mapping_is_refused(tmp_path):
    def mutate(documents):
        _rayjob(documents)["runtimeEnvYAML"] = "- just\n- a list\n"

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/rayjob.yaml", mutate)
    _refused(validate_kuberay_manifest, planted, "spec.runtimeEnvYAML: must be a YAML mapping")


def test_kubernetes_object_with_a_misspelled_key_is_refused(tmp_path):
    def mutate(documents):
        spec = _by_kind(documents, "StatefulSet")["spec"]
        spec["servicename"] = spec.pop("serviceName")

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/mlflow.yaml", mutate)
    message = _refused(
        validate_kuberay_manifest,
        planted,
        "(StatefulSet mlflow-postgres)",
        "spec: unknown key 'servicename'",
    )
    assert "document 5" in message


def test_kubernetes_object_with_a_wrong_type_is_refused(tmp_path):
    def mutate(documents):
        _by_kind(documents, "Service", "mlflow")["spec"]["ports"][0]["port"] = "five thousand"

    planted = _plant_documents(tmp_path, REPO / "cluster/kuberay/mlflow.yaml", mutate)
    _refused(
        validate_kuberay_manifest,
        planted,
        "(Service mlflow)",
        "spec.ports[0].port: 'five thousand' is not of type 'integer'",
    )


def test_kubernetes_object_of_an_unknown_kind_is_refused(tmp_path):
    planted = _plant_text(
        tmp_path, REPO / "cluster/kuberay/mlflow.yaml", "kind: StatefulSet", "kind: StatefulSett"
    )
    _refused(validate_kuberay_manifest, planted, "no kind 'StatefulSett' in apiVersion 'apps/v1'")


# Planted mistakes: Dockerfiles ------------------------------------------------------------------


@pytest.mark.parametrize("source", DOCKERFILES, ids=_name)
def test_dockerfile_from_latest_is_refused(tmp_path, source):
    text = source.read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    image = base.split()[1].split(":")[0]
    planted = _plant_text(tmp_path, source, base, f"FROM {image}:latest")
    _refused(lint_dockerfile, planted, "DL3007")


def test_dockerfile_installing_recommended_apt_packages_is_refused(tmp_path):
    source = REPO / "docker/Dockerfile.cpu"
    text = source.read_text()
    planted = tmp_path / source.name
    # Pinned, lists removed: the one thing wrong is the missing --no-install-recommends.
    planted.write_text(
        text + "USER 0\n"
        "RUN apt-get update && apt-get install -y curl=7.88.1-10 && rm -rf /var/lib/apt/lists/*\n"
        "USER 1000\n"
    )
    message = _refused(lint_dockerfile, planted, "DL3015", "--no-install-recommends")
    assert f"line {len(text.splitlines()) + 2}: DL3015" in message
    assert message.count("DL") == 1


# Planted mistakes: the compose file -------------------------------------------------------------


def test_compose_port_published_beyond_loopback_is_refused(tmp_path):
    planted = _plant_text(tmp_path, COMPOSE_FILE, '"127.0.0.1:5000:5000"', '"5000:5000"')
    _refused(
        validate_compose_file, planted, "services.mlflow.ports[0]: '5000:5000' listens on every"
    )


def test_compose_service_with_a_misspelled_key_is_refused(tmp_path):
    planted = _plant_text(tmp_path, COMPOSE_FILE, "    healthcheck:", "    helthcheck:")
    _refused(validate_compose_file, planted, "services.postgres: unknown key 'helthcheck'")


def test_compose_dependency_on_a_missing_service_is_refused(tmp_path):
    planted = _plant_text(
        tmp_path, COMPOSE_FILE, "depends_on:\n      - mlflow", "depends_on:\n      - mlfow"
    )
    _refused(
        validate_compose_file, planted, "services.ray-head.depends_on: no service named 'mlfow'"
    )


def test_compose_undeclared_volume_is_refused(tmp_path):
    planted = _plant_text(tmp_path, COMPOSE_FILE, "  mlflow-artifacts:\n", "")
    _refused(validate_compose_file, planted, "volume 'mlflow-artifacts' is not declared")
