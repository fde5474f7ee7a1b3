"""Save a finished run as one MLflow model with two flavors.

- ``python_function``: :class:`~distmeta.tracking.pyfunc.AdaptThenPredict`, which adapts to
  each task's support set and predicts its query set (``mlflow.pyfunc.load_model``,
  ``mlflow models serve``). Its artifacts, the run's ``config.yaml`` and ``final.pt`` beside
  ``task.json``, form a minimal run folder, which ``distmeta eval models:/...`` loads.
- ``pytorch``: the network holding the meta-learned initialisation
  (``mlflow.pytorch.load_model``), for fine-tuning or inspection with plain PyTorch.

This module is the ``flavor`` handed to ``mlflow.models.Model.log``, which calls
:func:`save_model` in a temporary folder and uploads the result.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.models import Model

from distmeta.engine.rundir import CONFIG_FILE, FINAL_FILE, RunDir
from distmeta.experiment import build_task_source
from distmeta.runs import Run
from distmeta.tracking.pyfunc import AdaptThenPredict, TaskSpec, input_example, model_signature

__all__ = ["TASK_FILE", "requirements", "save_model"]

TASK_FILE = "task.json"
_PINNED = ("distmeta", "torch", "mlflow", "numpy", "pandas", "pyyaml", "pydantic")


def requirements() -> list[str]:
    """The packages the model needs where it is loaded, pinned to this environment's versions
    (local build labels such as ``+cpu`` dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in _PINNED]


def save_model(path: str, mlflow_model: Model, run: Run, run_dir: RunDir) -> None:
    """Write the MLflow model of ``run`` (loaded from ``run_dir``) to the new folder ``path``.

    Args:
        path: Where the model goes (must not exist).
        mlflow_model: The model description ``Model.log`` prepared (run and model ids).
        run: The finished run (:func:`~distmeta.runs.load_run`).
        run_dir: Its folder, whose ``config.yaml`` and ``final.pt`` are copied as they are.
    """
    source = build_task_source(run.config, split="eval")
    spec = TaskSpec.of(source)
    seed = run.config.eval.seed if run.config.eval.seed is not None else run.config.seed + 1
    example = input_example(source.sample(seed, 0, [0]), run.algorithm.inner_steps)
    with tempfile.TemporaryDirectory(prefix="distmeta-export-") as scratch:
        files = Path(scratch) / "artifacts"
        files.mkdir()
        for name in (CONFIG_FILE, FINAL_FILE):
            (files / name).write_bytes(run_dir.read_bytes(name))
        (files / TASK_FILE).write_text(spec.to_json())
        mlflow.pyfunc.save_model(
            path,
            python_model=AdaptThenPredict(),
            artifacts={
                "config": str(files / CONFIG_FILE),
                "final": str(files / FINAL_FILE),
                "task": str(files / TASK_FILE),
            },
            signature=model_signature(spec),
            input_example=example,
            mlflow_model=mlflow_model,
            pip_requirements=requirements(),
        )
        _add_pytorch_flavor(path, mlflow_model, run, Path(scratch) / "pytorch")


def _add_pytorch_flavor(path: str, mlflow_model: Model, run: Run, scratch: Path) -> None:
    """Save the network with MLflow's pytorch flavor beside the pyfunc and merge the two
    descriptions (the pytorch flavor's own pyfunc, which would predict without adapting, is
    dropped)."""
    mlflow.pytorch.save_model(
        run.model,
        str(scratch),
        pip_requirements=requirements(),
        serialization_format="pickle",
    )
    flavor = Model.load(str(scratch)).flavors["pytorch"]
    shutil.move(str(scratch / flavor["model_data"]), str(Path(path) / flavor["model_data"]))
    mlflow_model.add_flavor("pytorch", **flavor)
    mlflow_model.save(str(Path(path) / "MLmodel"))
