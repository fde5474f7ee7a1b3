"""A meta-trained LSTM as a ``torch.optim`` optimizer: train any model with a learned rule.

``LearnedOptimizer(model.parameters(), run="runs/lstm-quadratic")`` loads the learned
optimizer of a run (``algorithm.inner_rule: lstm``, meta-trained by ``l2l`` or as MAML's or
Reptile's inner rule) from its folder or from MLflow (``runs:/<run id>`` of a tracked run,
``models:/NAME@alias`` of an exported one) and then behaves like any optimizer:
``loss.backward(); opt.step()``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distmeta.algorithms import LSTMRule
from distmeta.algorithms.inner import Params
from distmeta.errors import RunError
from distmeta.experiment import INNER_RULES

if TYPE_CHECKING:
    from distmeta.runs import Run

__all__ = ["LearnedOptimizer", "load_learned_rule"]

_MLFLOW_SCHEMES = ("runs:/", "models:/")


def _load(run: str | Path) -> Run:
    """A run folder, or the run folder that an MLflow URI holds as artifacts."""
    # runs/ loads here, on use: the offline comparison in runs/ builds this optimizer itself.
    from distmeta.runs import load_run

    text = str(run)
    if not text.startswith(_MLFLOW_SCHEMES):
        return load_run(text)
    import mlflow  # only for MLflow URIs

    from distmeta.tracking.store import resolve_tracking_uri

    with tempfile.TemporaryDirectory(prefix="distmeta-optimizer-") as scratch:
        uri = resolve_tracking_uri(None)
        run_id, _, path = text.removeprefix("runs:/").partition("/")
        # MLflow names a whole run's artifacts by its id, not by a runs:/ URI without a path.
        where = {"run_id": run_id, "artifact_path": path or None}
        if not text.startswith("runs:/"):
            where = {"artifact_uri": text}
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(**where, dst_path=scratch, tracking_uri=uri)
            )
        except Exception as error:
            raise RunError(f"cannot download {text} from MLflow: {error}") from None
        # A tracked run keeps config.yaml and final.pt at its root; an exported model under
        # artifacts/.
        folder = local / "artifacts" if (local / "artifacts" / "config.yaml").is_file() else local
        return load_run(folder)


def load_learned_rule(run: str | Path) -> tuple[LSTMRule, Params]:
    """The learned optimizer of a run: its rule (as configured) and its meta-trained weights.

    Args:
        run: A run folder, ``runs:/<MLflow run id>`` (a tracked run) or ``models:/NAME@alias``.

    Raises:
        RunError: The run is missing, unfinished, or its inner rule is not ``lstm``.
    """
    loaded = _load(run)
    if loaded.config.algorithm.inner_rule != "lstm":
        raise RunError(
            f"{run} holds no learned optimizer: its algorithm.inner_rule is "
            f"{loaded.config.algorithm.inner_rule}, not lstm"
        )
    rule = INNER_RULES["lstm"](loaded.config)
    weights = {k: v for k, v in loaded.params.items() if k.startswith(LSTMRule.prefix)}
    return rule, weights


class LearnedOptimizer(torch.optim.Optimizer):
    """A coordinate-wise LSTM optimizer (:class:`~distmeta.algorithms.LSTMRule`) meta-trained
    by distmeta, as a ``torch.optim.Optimizer``.

    Each coordinate of each parameter keeps its own LSTM state (``state[p]["h"]`` and
    ``["c"]``, ``[layers, numel, hidden]``; the moving averages ``m``, ``v`` and the step
    count ``t`` where the rule reads momenta), and ``step()`` adds the LSTM's update to it:
    ``p <- p + g_phi(p.grad, state)``. The update of a coordinate depends only on that
    coordinate's gradients, so the optimizer trains models of any architecture, also ones
    the LSTM never saw. ``state_dict()`` / ``load_state_dict()`` carry the LSTM states; the
    weights come from the run.

    Args:
        params: Parameters (or parameter groups) to optimise.
        run: A run folder or MLflow URI holding a learned optimizer (:func:`load_learned_rule`).
        rule: Instead of ``run``: the rule itself ...
        weights: ... and its meta-parameters (``lstm.*``).

    Raises:
        RunError: ``run`` holds no learned optimizer.
        ValueError: Neither or both of ``run`` and ``rule`` given, ``weights`` that do not
            fit ``rule``, or a rule started as ``metasgd`` (its rates belong to one network).

    Example:
        >>> model = torch.nn.Linear(10, 1)
        >>> opt = LearnedOptimizer(model.parameters(), run="runs/lstm-quadratic")
        >>> loss = model(x).square().mean()
        >>> loss.backward()
        >>> opt.step()
        >>> opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        run: str | Path | None = None,
        *,
        rule: LSTMRule | None = None,
        weights: Params | None = None,
    ):
        if (run is None) == (rule is None):
            raise ValueError("give run (a run folder or MLflow URI) or rule with weights")
        if run is not None:
            rule, weights = load_learned_rule(run)
        if not isinstance(rule, LSTMRule):
            raise TypeError(f"rule must be an LSTMRule, got {type(rule).__name__}")
        if rule.rates is not None:
            raise ValueError(
                "this rule was started as metasgd: it learned a rate for each coordinate of "
                "the network it was meta-trained with, and cannot train another model"
            )
        expected = {n: p.shape for n, p in rule.meta_params({"p": torch.zeros(1)}).items()}
        given = {n: w.shape for n, w in (weights or {}).items()}
        if given != expected:
            raise ValueError(
                f"weights do not fit the rule: expected {sorted(expected)} with its shapes, "
                f"got {sorted(given)}"
            )
        super().__init__(params, {})
        self.rule = rule
        self.weights = {n: w.detach() for n, w in weights.items()}
        self._placed: dict[tuple[torch.device, torch.dtype], Params] = {}

    def _weights_like(self, p: torch.Tensor) -> Params:
        key = (p.device, p.dtype)
        if key not in self._placed:
            self._placed[key] = {
                n: w.to(device=p.device, dtype=p.dtype) for n, w in self.weights.items()
            }
        return self._placed[key]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient.

        Args:
            closure: Re-evaluates the model and returns the loss (optional).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LearnedOptimizer does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self.rule.zero_state(p.numel(), p))
                update, new = self.rule.update(self._weights_like(p), p.grad.reshape(-1), state)
                p.add_(update.view_as(p))
                state.update(new)
        return loss
