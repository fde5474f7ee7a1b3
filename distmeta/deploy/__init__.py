"""Deployment files (cluster launcher configs, KubeRay manifests, images) and their checks."""

from __future__ import annotations

from distmeta.deploy.validate import (
    lint_dockerfile,
    validate_all,
    validate_compose_file,
    validate_kuberay_manifest,
    validate_launcher_config,
)

__all__ = [
    "lint_dockerfile",
    "validate_all",
    "validate_compose_file",
    "validate_kuberay_manifest",
    "validate_launcher_config",
]
