"""A learned optimizer as an inner rule: a coordinate-wise two-layer LSTM (Andrychowicz et al.,
2016), the update rule of the LSTM meta-learner of Ravi & Larochelle (2017) in this house.

One small LSTM is shared by every coordinate of every parameter: each coordinate is a row of a
batch, with its own hidden and cell state, so the rule has the same few thousand weights
whatever the size of the network it trains. The update is ``theta <- theta + g_phi(grad,
state)``. Its weights are meta-parameters (they join the algorithm's, under ``lstm.``), so
every algorithm differentiates the task's objective with respect to them: an LSTM whose
weights are not meta-parameters would never learn (tests/test_lstm_rule.py checks that
meta-training moves every one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from distmeta.algorithms.inner import MetaSGDRule, Params

__all__ = [
    "STARTS",
    "LSTMRule",
    "LSTMState",
    "Start",
    "lstm_update",
    "normalised_momenta",
    "preprocess_gradient",
]

LSTMState = dict[str, torch.Tensor]
"""``h`` and ``c``: ``[layers, coordinates, hidden]`` each; with momentum features also ``m``
(``[decays, coordinates]``), ``v`` (``[coordinates]``) and the step count ``t`` (``[]``)."""

RMS_DECAY = 0.999
"""Decay of the mean square of the gradient that normalises the momenta (Adam's beta2)."""

_EPSILON = 1e-16
"""Added to the mean square under the root: finite derivatives where a gradient is 0."""

ADAM_DECAY = 0.9
"""The momentum decay whose normalised momentum is Adam's direction (Adam's beta1)."""


def _sgd_feature(preprocess: bool, momenta: Sequence[float]) -> int:
    if preprocess:
        raise ValueError("start 'sgd' reads the raw gradient: it needs preprocess false")
    return 0


def _adam_feature(preprocess: bool, momenta: Sequence[float]) -> int:
    if ADAM_DECAY not in momenta:
        raise ValueError(
            f"start 'adam' reads the normalised momentum at {ADAM_DECAY}: momenta must include"
            f" it, got {list(momenta)}"
        )
    return (2 if preprocess else 1) + list(momenta).index(ADAM_DECAY)


@dataclass(frozen=True)
class Start:
    """A hand-made optimizer the untrained rule can be, at the rule's ``start_lr``."""

    feature: Callable[[bool, Sequence[float]], int] | None = None
    """Given ``preprocess`` and ``momenta``, the input feature the direct path carries as the
    optimizer's direction (a clear error where the rule has no such feature); ``None`` where
    the optimizer does not run through the direct path."""
    rates: bool = False
    """A learned rate for each coordinate of the network on its raw gradient, Meta-SGD's
    (Li et al., 2017), beside the LSTM: meta-parameters ``lstm.rate.<parameter name>``."""


STARTS = {
    "sgd": Start(feature=_sgd_feature),
    "adam": Start(feature=_adam_feature),
    "metasgd": Start(rates=True),
}
"""``start`` -> the hand-made optimizer the untrained rule is (the LSTM's output layer at zero
in every case, so the LSTM adds nothing until meta-training moves it)."""


def preprocess_gradient(grad: torch.Tensor, p: float) -> torch.Tensor:
    """The paper's gradient preprocessing (Andrychowicz et al., 2016, appendix A): each
    coordinate becomes ``(log|g| / p, sign g)`` when ``|g| >= e^-p``, else ``(-1, e^p g)``.

    Gradients of very different magnitudes reach the LSTM on one scale: the first feature
    carries the magnitude, the second the sign. Returns ``[..., 2]``.
    """
    large = grad.abs() >= math.exp(-p)
    magnitude = torch.where(large, grad.abs().clamp_min(math.exp(-p)).log() / p, -1.0)
    direction = torch.where(large, grad.sign(), grad * math.exp(p))
    return torch.stack([magnitude, direction], dim=-1)


def normalised_momenta(
    grad: torch.Tensor, decays: torch.Tensor, state: LSTMState
) -> tuple[torch.Tensor, LSTMState]:
    """Adam's direction at several momentum decays: ``m_hat / sqrt(v_hat)`` per decay.

    ``m`` is the moving average of the gradient at each of ``decays`` (``[decays, 1]``), ``v``
    that of its square at :data:`RMS_DECAY`, both bias-corrected as in Adam after ``t`` steps.
    The features are free of the gradient's scale (about ``sign g`` at the first step), so one
    LSTM reads problems of every scale; with ``decays`` of 0.9 and an output that copies the
    feature, the rule is Adam. Returns ``[coordinates, decays]`` and the new ``m``, ``v``, ``t``.
    """
    t = state["t"] + 1
    m = decays * state["m"] + (1 - decays) * grad
    v = RMS_DECAY * state["v"] + (1 - RMS_DECAY) * grad.square()
    m_hat = m / (1 - decays**t)
    v_hat = v / (1 - RMS_DECAY**t)
    return (m_hat / (v_hat + _EPSILON).sqrt()).T, {"m": m, "v": v, "t": t}


def lstm_update(
    phi: Params, features: torch.Tensor, state: LSTMState, layers: int, scale: float
) -> tuple[torch.Tensor, LSTMState]:
    """One step of the coordinate-wise LSTM: ``[coordinates, inputs]`` features in, the
    update of every coordinate (``[coordinates]``) and the new state out.

    A pure function of the weights ``phi`` (``lstm.<layer>.weight_ih``, ``.weight_hh``,
    ``.bias``, ``lstm.out.weight``, ``lstm.out.bias``, and ``lstm.direct.weight`` where the
    output also reads the features directly), so that it runs under ``vmap`` and is
    differentiated with respect to them.
    """
    hs, cs = [], []
    x = features
    for layer in range(layers):
        name = f"lstm.{layer}."
        gates = (
            x @ phi[name + "weight_ih"].T + state["h"][layer] @ phi[name + "weight_hh"].T
        ) + phi[name + "bias"]
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state["c"][layer] + torch.sigmoid(i) * torch.tanh(g)
        x = torch.sigmoid(o) * torch.tanh(c)
        hs.append(x)
        cs.append(c)
    out = x @ phi["lstm.out.weight"].T + phi["lstm.out.bias"]
    if "lstm.direct.weight" in phi:
        out = out + features @ phi["lstm.direct.weight"].T
    return scale * out.squeeze(-1), {"h": torch.stack(hs), "c": torch.stack(cs)}


class LSTMRule:
    """A coordinate-wise LSTM that turns each coordinate's gradient into its update.

    Description:
        Every coordinate of the fast weights is one row of a batch through the same LSTM of
        ``layers`` layers of ``hidden`` units, followed by a linear output times ``scale``:
        ``theta <- theta + scale * W_out h_t``. Its input is the gradient, preprocessed as in
        the paper (:func:`preprocess_gradient`) or raw, and, for each decay of ``momenta``,
        Adam's normalised momentum at that decay (:func:`normalised_momenta`: features beyond
        the gradient, as ``learned_optimization``'s optimizers read). Its weights (``lstm.*``) are
        meta-parameters, initialised like ``torch.nn.LSTM`` and ``torch.nn.Linear`` from a
        generator seeded with ``seed``, so every process builds the same ones. Its state
        (hidden and cell state of every coordinate) starts at zero for each task or
        trajectory.

        As an inner rule of :class:`~distmeta.algorithms.MAML` or
        :class:`~distmeta.algorithms.Reptile` it is meta-trained together with the
        initialisation (Ravi & Larochelle, 2017); :class:`~distmeta.algorithms.L2L`
        meta-trains it alone on whole optimisation trajectories (Andrychowicz et al., 2016);
        :class:`distmeta.optim.LearnedOptimizer` uses a trained one as a ``torch.optim``
        optimizer.

    Args:
        hidden: Units per LSTM layer (default 20, the paper's).
        layers: LSTM layers (default 2).
        preprocess: Feed ``(log|g| / p, sign g)`` instead of the raw gradient.
        p: The preprocessing's exponent (default 10).
        scale: Factor on the LSTM's output (the update's initial scale).
        seed: Seed of the initial weights.
        momenta: Decays in (0, 1) of the momentum features (none by default: the paper's
            rule).
        direct: The output also reads the features through a linear path around the LSTM
            (``lstm.direct.weight``, zero at first): a rule that is, say, Adam plus what the
            LSTM learns to add.
        start: ``None`` (the paper's randomly initialised rule) or a key of :data:`STARTS`:
            the untrained rule is that optimizer at rate ``start_lr`` and the LSTM's output
            layer is zero, so meta-training begins from a tuned hand-made optimizer and learns
            what to add. ``sgd`` and ``adam`` run through the direct path (its weight on
            their direction is ``-start_lr / scale``; needs ``direct``); ``metasgd`` adds a
            learned rate per coordinate of the network on its raw gradient (Meta-SGD's,
            ``lstm.rate.*``, meta-trained with the LSTM), which ties the rule to that network.
        start_lr: The rate of the ``start`` optimizer.
        zero_out_bias: The output layer's bias starts at zero, as in the DeepMind reference
            (Sonnet's ``Linear``), not drawn as ``torch.nn.Linear`` draws it: a bias moves every
            coordinate by the same amount at every step, whatever its gradient.

    References:
        Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
        NeurIPS 2016.
        Ravi, Larochelle. Optimization as a Model for Few-Shot Learning. ICLR 2017.

    Example:
        >>> rule = LSTMRule(hidden=20, layers=2, preprocess=True, scale=0.1)
        >>> algo = MAML(MLP(1, (40, 40), 1), F.mse_loss, inner_rule=rule, inner_steps=5)
        >>> params = algo.init_params()  # the network's weights and lstm.*
    """

    prefix = "lstm."
    rate_prefix = "lstm.rate."
    """Of the per-coordinate rates of ``start: metasgd``, followed by the network's parameter
    name: they belong to the network the rule was meta-trained with."""

    def __init__(
        self,
        hidden: int = 20,
        layers: int = 2,
        preprocess: bool = True,
        p: float = 10.0,
        scale: float = 0.1,
        seed: int = 0,
        momenta: Sequence[float] = (),
        direct: bool = False,
        start: str | None = None,
        start_lr: float = 0.01,
        zero_out_bias: bool = False,
    ):
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive integer, got {layers!r}")
        if not p > 0:
            raise ValueError(f"the preprocessing exponent p must be positive, got {p}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if not all(0 < decay < 1 for decay in momenta):
            raise ValueError(f"momenta are decays in (0, 1), got {list(momenta)}")
        self.momenta = tuple(float(decay) for decay in momenta)
        self.direct = bool(direct)
        started = self._start(start, start_lr)
        self.start_feature = (
            started.feature(preprocess, self.momenta) if started and started.feature else None
        )
        self.rates = (
            MetaSGDRule(start_lr, prefix=self.rate_prefix) if started and started.rates else None
        )
        """Meta-SGD's per-coordinate rates of ``start: metasgd``, stepped beside the LSTM."""
        self.start_lr = float(start_lr)
        self.zero_out_bias = bool(zero_out_bias)
        self.hidden, self.layers = hidden, layers
        self.preprocess, self.p = bool(preprocess), float(p)
        self.scale, self.seed = float(scale), int(seed)

    def _start(self, start: str | None, lr: float) -> Start | None:
        if start is None:
            return None
        if start not in STARTS:
            raise ValueError(f"start must be one of {sorted(STARTS)} or None, got {start!r}")
        started = STARTS[start]
        if started.feature is not None and not self.direct:
            raise ValueError(f"start {start!r} is a direct path's weight: it needs direct true")
        if not lr > 0:
            raise ValueError(f"start_lr must be positive, got {lr}")
        return started

    @property
    def inputs(self) -> int:
        """Features per coordinate."""
        return (2 if self.preprocess else 1) + len(self.momenta)

    def meta_params(self, model_params: Params) -> Params:
        reference = next(iter(model_params.values()))
        generator = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(self.hidden)

        def uniform(*shape: int) -> torch.Tensor:
            values = torch.rand(shape, generator=generator, dtype=torch.float64)
            return ((2 * values - 1) * bound).to(device=reference.device, dtype=reference.dtype)

        weights = {}
        fan_in = self.inputs
        for layer in range(self.layers):
            name = f"{self.prefix}{layer}."
            weights[name + "weight_ih"] = uniform(4 * self.hidden, fan_in)
            weights[name + "weight_hh"] = uniform(4 * self.hidden, self.hidden)
            weights[name + "bias"] = uniform(4 * self.hidden)
            fan_in = self.hidden
        weights[self.prefix + "out.weight"] = uniform(1, self.hidden)
        weights[self.prefix + "out.bias"] = uniform(1)
        if self.zero_out_bias:
            weights[self.prefix + "out.bias"].zero_()
        if self.direct:
            weights[self.prefix + "direct.weight"] = reference.new_zeros(1, self.inputs)
        if self.start_feature is not None or self.rates is not None:
            # The LSTM adds nothing until meta-training moves its output layer (whose gradient
            # is not zero: it reads the hidden state); the start's optimizer is the update.
            weights[self.prefix + "out.weight"].zero_()
            weights[self.prefix + "out.bias"].zero_()
        if self.start_feature is not None:
            weights[self.prefix + "direct.weight"][0, self.start_feature] = (
                -self.start_lr / self.scale
            )
        if self.rates is not None:
            weights.update(self.rates.meta_params(model_params))
        return weights

    def zero_state(self, coordinates: int, like: torch.Tensor) -> LSTMState:
        """The state of ``coordinates`` coordinates that have not moved yet."""
        zeros = like.new_zeros(self.layers, coordinates, self.hidden)
        state = {"h": zeros, "c": zeros.clone()}
        if self.momenta:
            state["m"] = like.new_zeros(len(self.momenta), coordinates)
            state["v"] = like.new_zeros(coordinates)
            state["t"] = like.new_zeros(())
        return state

    def update(
        self, meta: Params, grad: torch.Tensor, state: LSTMState
    ) -> tuple[torch.Tensor, LSTMState]:
        """The LSTM's update of the coordinates of a flat gradient ``[coordinates]`` (without
        the per-coordinate rates of ``start: metasgd``, which :meth:`step` adds), and the
        state."""
        raw = grad.unsqueeze(-1)
        features = preprocess_gradient(grad, self.p) if self.preprocess else raw
        moments: LSTMState = {}
        if self.momenta:
            decays = torch.tensor(self.momenta, dtype=grad.dtype, device=grad.device)
            momenta, moments = normalised_momenta(grad, decays.unsqueeze(-1), state)
            features = torch.cat([features, momenta], dim=-1)
        update, recurrent = lstm_update(meta, features, state, self.layers, self.scale)
        return update, {**recurrent, **moments}

    def init(self, meta: Params, fast: Params) -> LSTMState:
        coordinates = sum(p.numel() for p in fast.values())
        return self.zero_state(coordinates, next(iter(fast.values())))

    def step(
        self, meta: Params, fast: Params, grads: Params, state: LSTMState
    ) -> tuple[Params, LSTMState]:
        # All coordinates of all parameters in one batch: a few large operations per step.
        flat = torch.cat([grads[name].reshape(-1) for name in fast])
        update, state = self.update(meta, flat, state)
        sizes = [p.numel() for p in fast.values()]
        pieces = {
            name: piece.view_as(fast[name])
            for name, piece in zip(fast, update.split(sizes), strict=True)
        }
        if self.rates is not None:
            # Meta-SGD's step, taken from the LSTM's update: the update plus ``-rate * grad``.
            pieces, _ = self.rates.step(meta, pieces, grads, None)
        return {name: fast[name] + pieces[name] for name in fast}, state
