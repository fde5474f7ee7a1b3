"""The learner: meta-parameters in one flat buffer, the outer optimizer and a version number.

Every engine applies meta-gradients through this class (the Ray parameter-server actor wraps
it), so the outer step is the same code whether one process or a cluster computed ``g``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from distmeta.engine.layout import ParamLayout
from distmeta.engine.schedule import OuterLRSchedule

__all__ = ["Learner", "StaleResult"]


@dataclass(frozen=True)
class StaleResult:
    """What the learner did with an asynchronous result."""

    accepted: bool
    staleness: int
    """Versions applied since the result's parameters were read."""


_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Learner:
    """Holds ``theta`` (flat), the outer optimizer's state and the version (updates applied).

    Args:
        layout: Names and shapes of the meta-parameters inside the flat buffer.
        initial: Flat initial meta-parameters; the learner keeps its own copy.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: Outer learning rate, or its schedule over the versions.
        lr_factors: Named meta-parameters that step at another rate: the schedule's rate times
            their factor (an inner rule's learned rates or weights next to the model's
            initialisation). Each rate becomes a parameter group of the outer optimizer over
            views of the flat buffer; without factors the optimizer holds the buffer whole.
        clip_norm: The largest L2 norm of a meta-gradient the outer optimizer steps with: a
            larger one is scaled down to it (as ``torch.nn.utils.clip_grad_norm_``), so one
            task whose inner loop diverged cannot wreck the meta-parameters and Adam's
            moments. ``None``: no clipping.
    """

    def __init__(
        self,
        layout: ParamLayout,
        initial: torch.Tensor,
        optimizer: str,
        lr: float | OuterLRSchedule,
        lr_factors: Mapping[str, float] | None = None,
        clip_norm: float | None = None,
    ):
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        if initial.dim() != 1 or initial.numel() != layout.numel:
            raise ValueError(f"initial parameters must be a flat vector of {layout.numel} values")
        factors = dict(lr_factors or {})
        unknown = sorted(set(factors) - set(layout.names))
        if unknown:
            raise ValueError(f"lr_factors name parameters the layout does not have: {unknown}")
        self.layout = layout
        self.lr_factors = factors
        self.clip_norm = clip_norm
        self.schedule = lr if isinstance(lr, OuterLRSchedule) else OuterLRSchedule(lr)
        self.theta = initial.detach().clone()
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"outer optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        # The tensors the optimizer steps: the buffer whole, or views of its named pieces
        # grouped by rate.
        groups: dict[float, list[torch.Tensor]] = {}
        if factors:
            self._stepped = torch.split(self.theta, layout.sizes)
            for name, view in zip(layout.names, self._stepped, strict=True):
                groups.setdefault(factors.get(name, 1.0), []).append(view)
        else:
            self._stepped = (self.theta,)
            groups[1.0] = [self.theta]
        self._group_factors = tuple(groups)
        self.optimizer = _OPTIMIZERS[optimizer](
            [{"params": tensors} for tensors in groups.values()], lr=self.schedule(0)
        )
        self.version = 0

    def params(self) -> dict[str, torch.Tensor]:
        """Named views of the current meta-parameters (read them, do not write them)."""
        return self.layout.unflatten(self.theta)

    def apply(self, mean_gradient: torch.Tensor, scale: float = 1.0) -> int:
        """One outer step with the flat mean meta-gradient (clipped to ``clip_norm``, then
        times ``scale``); returns the new version."""
        if mean_gradient.shape != self.theta.shape:
            raise ValueError(
                f"gradient has shape {tuple(mean_gradient.shape)}, "
                f"expected {tuple(self.theta.shape)}"
            )
        gradient = mean_gradient.to(device=self.theta.device, dtype=self.theta.dtype)
        if self.clip_norm is not None:
            norm = float(gradient.norm())
            if norm > self.clip_norm:
                scale *= self.clip_norm / norm
        gradient = gradient if scale == 1.0 else gradient * scale
        pieces = torch.split(gradient, self.layout.sizes) if self.lr_factors else (gradient,)
        for tensor, piece in zip(self._stepped, pieces, strict=True):
            tensor.grad = piece
        rate = self.schedule(self.version)
        for group, factor in zip(self.optimizer.param_groups, self._group_factors, strict=True):
            group["lr"] = rate * factor
        self.optimizer.step()
        for tensor in self._stepped:
            tensor.grad = None
        self.version += 1
        return self.version

    def apply_stale(
        self, mean_gradient: torch.Tensor, read_version: int, max_staleness: int
    ) -> StaleResult:
        """Apply a result computed on the parameters of ``read_version``, asynchronously.

        A result more than ``max_staleness`` versions old is rejected (not applied); an
        accepted one is scaled by ``1 / (1 + staleness)``, the usual damping of stale
        gradients (Zhang et al., 2016, "Staleness-aware async-SGD").
        """
        staleness = self.version - read_version
        if staleness < 0:
            raise ValueError(f"result claims version {read_version}, learner is at {self.version}")
        if staleness > max_staleness:
            return StaleResult(False, staleness)
        self.apply(mean_gradient, scale=1.0 / (1 + staleness))
        return StaleResult(True, staleness)

    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "layout": {
                "names": list(self.layout.names),
                "shapes": [list(s) for s in self.layout.shapes],
            },
        }

    @staticmethod
    def params_of(state: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The named meta-parameters held by a :meth:`state_dict` (read without a learner)."""
        return Learner._layout_of(state).unflatten(state["theta"])

    @staticmethod
    def _layout_of(state: dict[str, Any]) -> ParamLayout:
        return ParamLayout(
            tuple(state["layout"]["names"]), tuple(tuple(s) for s in state["layout"]["shapes"])
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        layout = self._layout_of(state)
        if layout != self.layout:
            raise ValueError("checkpoint parameters do not match this experiment's model")
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        saved_groups = len(state["optimizer"]["param_groups"])
        if saved_groups != len(self._group_factors):
            raise ValueError(
                f"the checkpoint's outer optimizer steps {saved_groups} group(s) of rates, this "
                f"experiment's {len(self._group_factors)}: was algorithm.rule_outer_lr changed?"
            )
        # The configured rate wins over the checkpoint's (each step sets it from the schedule):
        # a PBT trial resumes another trial's state with a perturbed outer learning rate.
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
