"""The registered model's pyfunc: adapt to each task's support set, then predict its query set.

Input: a DataFrame with one row per task and the columns

- ``support_x``: nested list ``[n, *input_shape]`` (sinusoid: ``[[x1], [x2], ...]``),
- ``support_y``: ``[n, output_size]`` floats for regression, ``[n]`` integer class ids
  ``0..ways-1`` for classification,
- ``query_x``: ``[m, *input_shape]``,
- ``inner_steps`` (optional integer): adaptation steps for that task; missing or null means
  the run's ``algorithm.inner_steps``.

Output: a DataFrame with one row per task and the column ``query_pred`` (regression: the
``[m, output_size]`` predictions; classification: the ``[m]`` predicted classes) and, for
classification, ``query_proba`` (``[m, ways]`` softmax probabilities).

Adaptation is the algorithm's own (``MetaAlgorithm.adapt``): Meta-SGD's learned rates and a
learned inner optimizer are used exactly as in training. The task source's data is not
needed: the model is rebuilt from the run's config and a :class:`TaskSpec`.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import AnyType, Array

from distmeta.config import parse_config
from distmeta.errors import TrackingError
from distmeta.experiment import build_algorithm, build_model
from distmeta.runs import fit_params
from distmeta.tasks import TaskBatch

__all__ = [
    "INPUT_COLUMNS",
    "AdaptThenPredict",
    "TaskSpec",
    "input_example",
    "model_signature",
]

INPUT_COLUMNS = ("support_x", "support_y", "query_x")
"""Required input columns; ``inner_steps`` is optional."""


@dataclass(frozen=True)
class TaskSpec:
    """What the model needs to know of a task source to be rebuilt without its data.

    It stands in for the source when building the model and the algorithm
    (:func:`~distmeta.experiment.build_model`, ``build_algorithm``).
    """

    kind: str
    """``"regression"`` or ``"classification"``."""
    input_shape: tuple[int, ...]
    output_size: int
    loss: str
    """Importable name of the loss function, e.g. ``torch.nn.functional.mse_loss``."""

    @staticmethod
    def of(source: Any) -> TaskSpec:
        """The spec of a task source.

        Raises:
            TrackingError: The source's loss is not an importable function (a lambda or a
                closure cannot be rebuilt where the model is served).
        """
        loss_fn = source.loss_fn()
        name = f"{getattr(loss_fn, '__module__', '')}.{getattr(loss_fn, '__qualname__', '')}"
        spec = TaskSpec(source.kind, tuple(source.input_shape), int(source.output_size), name)
        try:
            found = spec.loss_fn()
        except (ImportError, AttributeError, ValueError):
            found = None
        if found is not loss_fn:
            raise TrackingError(
                f"cannot export: the task's loss {loss_fn!r} is not an importable function"
            )
        return spec

    def loss_fn(self):
        module, _, name = self.loss.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def from_json(text: str) -> TaskSpec:
        data = json.loads(text)
        return TaskSpec(data["kind"], tuple(data["input_shape"]), data["output_size"], data["loss"])


def _nested(depth: int, leaf: DataType) -> DataType | Array:
    kind: DataType | Array = leaf
    for _ in range(depth):
        kind = Array(kind)
    return kind


def model_signature(spec: TaskSpec) -> ModelSignature:
    """The pyfunc's input and output schema for tasks of ``spec`` (see module doc)."""
    x = _nested(1 + len(spec.input_shape), DataType.double)
    classification = spec.kind == "classification"
    y = Array(DataType.long) if classification else _nested(2, DataType.double)
    inputs = Schema(
        [
            ColSpec(x, "support_x"),
            ColSpec(y, "support_y"),
            ColSpec(x, "query_x"),
            # Any: a column of integers is int64, one with missing values float64, and
            # MLflow's long and double each refuse the other. _steps checks the values.
            ColSpec(AnyType(), "inner_steps", required=False),
        ]
    )
    if classification:
        outputs = Schema(
            [
                ColSpec(Array(DataType.long), "query_pred"),
                ColSpec(_nested(2, DataType.double), "query_proba"),
            ]
        )
    else:
        outputs = Schema([ColSpec(_nested(2, DataType.double), "query_pred")])
    return ModelSignature(inputs, outputs)


def input_example(batch: TaskBatch, inner_steps: int, query: int = 10) -> pd.DataFrame:
    """One row per task of ``batch`` in the pyfunc's input format (at most ``query`` query
    points each, to keep the logged example small)."""
    rows = []
    for index in range(len(batch)):
        sx, sy, qx, _ = batch.task(index)
        rows.append(
            {
                "support_x": sx.double().tolist(),
                "support_y": sy.tolist() if not sy.is_floating_point() else sy.double().tolist(),
                "query_x": qx[:query].double().tolist(),
                "inner_steps": inner_steps,
            }
        )
    return pd.DataFrame(rows)


def _bad_input(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _array(value: Any, column: str, task: int) -> np.ndarray:
    """A cell (nested lists, or arrays of arrays as pandas may hold them) as one array."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = [_array(item, column, task) for item in value]
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad_input(f"task {task}: {column} is not a rectangular array of numbers") from None


def _steps(row: pd.Series, task: int) -> int | None:
    """The task's ``inner_steps``; ``None`` (the run's default) when missing or null."""
    value = row.get("inner_steps")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        steps = int(value)
        exact = float(value) == steps
    except (TypeError, ValueError):
        exact = False
    if not exact or steps < 0:
        raise _bad_input(f"task {task}: inner_steps must be a non-negative integer, got {value!r}")
    return steps


class AdaptThenPredict(PythonModel):
    """Adapt the meta-learned model to each task's support set, then predict its queries.

    The model's artifacts are the run's ``config.yaml``, ``final.pt`` and ``task.json``
    (:class:`TaskSpec`); see the module doc for the input and output format.
    """

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        config = parse_config(yaml.safe_load(Path(artifacts["config"]).read_text()))
        self.inner_lr = config.eval.inner_lr
        self.spec = TaskSpec.from_json(Path(artifacts["task"]).read_text())
        self.dtype = getattr(torch, config.train.dtype)
        self.model = build_model(config, self.spec)
        self.algorithm = build_algorithm(config, self.model, self.spec)
        final = torch.load(artifacts["final"], map_location="cpu", weights_only=True)
        params = fit_params(self.algorithm, final["params"])
        if params is None:
            raise TrackingError(f"{artifacts['final']} does not fit the model of its task.json")
        self.params = params

    def _task(self, row: pd.Series, task: int) -> dict[str, Any]:
        shape = tuple(self.spec.input_shape)
        classification = self.spec.kind == "classification"
        sx = _array(row["support_x"], "support_x", task)
        qx = _array(row["query_x"], "query_x", task)
        sy = _array(row["support_y"], "support_y", task)
        for name, x in (("support_x", sx), ("query_x", qx)):
            if x.ndim < 1 or x.shape[1:] != shape:
                raise _bad_input(
                    f"task {task}: {name} must be [n, {', '.join(map(str, shape))}], "
                    f"got {list(x.shape)}"
                )
        target = (len(sx),) if classification else (len(sx), self.spec.output_size)
        if sy.shape != target:
            raise _bad_input(f"task {task}: support_y must be {list(target)}, got {list(sy.shape)}")
        if classification:
            if not np.all((sy == np.round(sy)) & (sy >= 0) & (sy < self.spec.output_size)):
                raise _bad_input(
                    f"task {task}: support_y must hold class ids 0..{self.spec.output_size - 1}"
                )
            labels = torch.as_tensor(sy, dtype=torch.long)
        else:
            labels = torch.as_tensor(sy, dtype=self.dtype)
        fast = self.algorithm.adapt(
            self.params,
            torch.as_tensor(sx, dtype=self.dtype),
            labels,
            steps=_steps(row, task),
            inner_lr=self.inner_lr,
        )
        with torch.no_grad():
            output = self.algorithm.forward(fast, torch.as_tensor(qx, dtype=self.dtype))
        if not classification:
            return {"query_pred": output.double().tolist()}
        return {
            "query_pred": output.argmax(dim=-1).tolist(),
            "query_proba": torch.softmax(output.double(), dim=-1).tolist(),
        }

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise _bad_input(
                f"input lacks the columns {missing}: expected one row per task with "
                "support_x, support_y, query_x (and optionally inner_steps)"
            )
        rows = [self._task(row, i) for i, (_, row) in enumerate(model_input.iterrows())]
        return pd.DataFrame(rows)
