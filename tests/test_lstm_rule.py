"""The learned LSTM optimizer as an inner rule and as a torch.optim optimizer: against an
independent nn.LSTM implementation, its weights as meta-parameters that meta-training moves
(every one of them), LearnedOptimizer (loading, step, state_dict), and distmeta eval of a
learned optimizer."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from reference import (
    adam_directions,
    lstm_optimizer_reference,
    mlp_forward,
    preprocess_reference,
)

import distmeta as dm
from distmeta.algorithms import LSTMRule
from distmeta.algorithms.lstm_rule import preprocess_gradient
from distmeta.cli import main
from distmeta.config import parse_config
from distmeta.errors import RunError
from distmeta.optim import LearnedOptimizer


def _mlp():
    torch.manual_seed(0)
    return dm.models.MLP(1, (6,), 1).double()


def _batch(tasks=3):
    return dm.tasks.Sinusoid(5, 6, dtype=torch.float64).sample(4, 0, range(tasks))


def test_preprocessing_is_the_paper_s():
    g = torch.tensor([3.0, -2e-3, 1e-6, -1e-7, 0.0], dtype=torch.float64)
    expected = preprocess_reference(g, 10.0)
    torch.testing.assert_close(preprocess_gradient(g, 10.0), expected)
    assert expected[0].tolist() == pytest.approx([math.log(3.0) / 10, 1.0])
    assert expected[3].tolist() == pytest.approx([-1.0, -1e-7 * math.exp(10)])


def test_rule_weights_are_lstm_weights_shared_by_every_coordinate():
    rule = LSTMRule(hidden=5, layers=2, preprocess=True, scale=0.3, seed=3)
    template = {
        "a": torch.zeros(4, 2, dtype=torch.float64),
        "b": torch.zeros(3, dtype=torch.float64),
    }
    phi = rule.meta_params(template)
    assert {k: tuple(v.shape) for k, v in phi.items()} == {
        "lstm.0.weight_ih": (20, 2),
        "lstm.0.weight_hh": (20, 5),
        "lstm.0.bias": (20,),
        "lstm.1.weight_ih": (20, 5),
        "lstm.1.weight_hh": (20, 5),
        "lstm.1.bias": (20,),
        "lstm.out.weight": (1, 5),
        "lstm.out.bias": (1,),
    }
    assert all(torch.equal(phi[k], rule.meta_params(template)[k]) for k in phi)  # any process
    grads = {"a": torch.randn(4, 2, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    state = rule.init(phi, template)
    moved, state = rule.step(phi, template, grads, state)
    step = lstm_optimizer_reference(phi, 2, 5, 0.3, preprocess=True)
    flat = torch.cat([grads["a"].reshape(-1), grads["b"]])
    zeros = torch.zeros(2, 11, 5, dtype=torch.float64)
    update, h, c = step(flat, zeros, zeros)
    torch.testing.assert_close(torch.cat([moved["a"].reshape(-1), moved["b"]]), update)
    torch.testing.assert_close(state["h"], h)
    torch.testing.assert_close(state["c"], c)


@pytest.mark.parametrize("direct", [False, True])
def test_momentum_features_are_adam_s_directions_fed_to_the_lstm(direct):
    """With ``momenta``, each step's input is the preprocessed gradient and, per decay,
    ``torch.optim.Adam``'s direction at that decay; the state carries the moving averages.
    With ``direct``, the output also reads those inputs through its own weights."""
    rule = LSTMRule(hidden=4, layers=2, scale=0.2, seed=2, momenta=(0.5, 0.9), direct=direct)
    template = {"w": torch.zeros(3, 2, dtype=torch.float64)}
    phi = rule.meta_params(template)
    assert phi["lstm.0.weight_ih"].shape == (16, 4)
    assert ("lstm.direct.weight" in phi) == direct
    if direct:
        assert not phi["lstm.direct.weight"].any()  # the rule starts as the LSTM alone
        phi["lstm.direct.weight"] = torch.tensor([[0.1, -0.2, 0.3, -0.4]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    grads = [torch.randn(6, generator=generator, dtype=torch.float64) * 10**k for k in (-3, 0, 2)]
    grads[1][0] = 0.0
    step = lstm_optimizer_reference(phi, 2, 4, 0.2, preprocess=True, extra=2)
    h = c = torch.zeros(2, 6, 4, dtype=torch.float64)
    state = rule.init(phi, template)
    for grad, features in zip(grads, adam_directions(grads, (0.5, 0.9)), strict=True):
        update, state = rule.update(phi, grad, state)
        expected, h, c = step(grad, h, c, features)
        torch.testing.assert_close(update, expected)
        torch.testing.assert_close(state["h"], h)
        torch.testing.assert_close(state["c"], c)
    assert float(state["t"]) == 3


def test_the_output_bias_can_start_at_zero_as_in_the_deepmind_reference():
    """A drawn output bias moves every coordinate by the same amount at every step, whatever
    its gradient; ``zero_out_bias`` starts it at zero and leaves every other weight as drawn."""
    template = {"w": torch.zeros(3, dtype=torch.float64)}
    drawn = LSTMRule(hidden=4, seed=3).meta_params(template)
    zeroed = LSTMRule(hidden=4, seed=3, zero_out_bias=True).meta_params(template)
    assert drawn["lstm.out.bias"].item() != 0
    assert zeroed["lstm.out.bias"].tolist() == [0.0]
    assert all(torch.equal(drawn[k], zeroed[k]) for k in drawn if k != "lstm.out.bias")
    from distmeta.experiment import build_experiment

    config = _lstm_config(algorithm={"name": "maml", "lstm": {"hidden": 4, "zero_out_bias": True}})
    assert build_experiment(config).algorithm.init_params()["lstm.out.bias"].tolist() == [0.0]


def test_momentum_features_keep_meta_gradients_finite_where_a_gradient_is_zero():
    """Second-order meta-gradients flow through the features; a coordinate whose gradient is
    exactly 0 (a dead unit) must not turn them into NaN."""
    rule = LSTMRule(hidden=3, momenta=(0.9,))
    phi = {n: w.requires_grad_() for n, w in rule.meta_params({"w": torch.zeros(2)}).items()}
    x = torch.tensor([1.0, 0.0], requires_grad=True)
    grad = torch.autograd.grad(x.square().sum(), x, create_graph=True)[0]
    update, _ = rule.update(phi, grad, rule.zero_state(2, x))
    meta = torch.autograd.grad((x + update).square().sum(), [x, *phi.values()])
    assert all(bool(g.isfinite().all()) for g in meta)


def test_rule_refuses_bad_settings():
    for bad, message in [
        ({"hidden": 0}, "hidden"),
        ({"layers": 1.5}, "layers"),
        ({"p": 0}, "exponent p"),
        ({"scale": -1}, "scale"),
        ({"momenta": (0.9, 1.0)}, "momenta are decays"),
        ({"start": "rmsprop", "direct": True}, "start must be one of"),
        ({"start": "sgd", "preprocess": False}, "needs direct true"),
        ({"start": "sgd", "direct": True}, "needs preprocess false"),
        ({"start": "adam", "direct": True, "momenta": (0.5,)}, "momenta must include it"),
        ({"start": "sgd", "direct": True, "preprocess": False, "start_lr": 0}, "start_lr"),
        ({"start": "metasgd", "start_lr": -0.1}, "start_lr"),
    ]:
        with pytest.raises(ValueError, match=message):
            LSTMRule(**bad)


def _maml_lstm_reference(model, params, phi, batch, steps):
    """Second-order MAML with the LSTM rule: an explicit unroll on nn.LSTM, create_graph."""
    total = None
    names = list(params) + list(phi)
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        leaf = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        lstm = {k: v.detach().clone().requires_grad_() for k, v in phi.items()}
        step = lstm_optimizer_reference(lstm, 2, 4, 0.1, preprocess=True)
        fast = dict(leaf)
        coordinates = sum(v.numel() for v in fast.values())
        h = c = torch.zeros(2, coordinates, 4, dtype=torch.float64)
        for _ in range(steps):
            loss = F.mse_loss(mlp_forward(fast, sx), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            update, h, c = step(torch.cat([g.reshape(-1) for g in grads]), h, c)
            pieces = update.split([v.numel() for v in fast.values()])
            fast = {n: v + d.view_as(v) for (n, v), d in zip(fast.items(), pieces, strict=True)}
        query = F.mse_loss(mlp_forward(fast, qx), qy)
        grads = torch.autograd.grad(query, list(leaf.values()) + list(lstm.values()))
        total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
    return {name: g / len(batch) for name, g in zip(names, total, strict=True)}


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_maml_meta_trains_the_lstm_rule_with_the_initialisation(execution):
    """As MAML's inner rule (Ravi & Larochelle style): the meta-gradient of the weights and of
    every LSTM weight equals an explicit second-order unroll through nn.LSTM."""
    model, batch = _mlp(), _batch()
    rule = LSTMRule(hidden=4, layers=2, scale=0.1, seed=1)
    algo = dm.algorithms.MAML(
        model, F.mse_loss, inner_rule=rule, inner_steps=2, execution=execution
    )
    params = algo.init_params()
    g, _ = algo.meta_gradient(params, batch)
    weights = {n: params[n] for n, _ in model.named_parameters()}
    phi = {n: params[n] for n in params if n.startswith("lstm.")}
    expected = _maml_lstm_reference(model, weights, phi, batch, 2)
    for name in expected:
        torch.testing.assert_close(g[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)
    assert all(bool(g[name].abs().sum() > 0) for name in phi)


def test_maml_with_momentum_features_gives_one_meta_gradient_in_a_loop_and_under_vmap():
    """The moving averages are per-task state: vmapped tasks keep their own, as a loop does;
    every weight, the direct path's included, gets a gradient."""
    rule = LSTMRule(hidden=4, scale=0.1, seed=1, momenta=(0.5, 0.9), direct=True, preprocess=False)
    grads = {}
    for execution in ("loop", "vmap"):
        algo = dm.algorithms.MAML(
            _mlp(), F.mse_loss, inner_rule=rule, inner_steps=3, execution=execution
        )
        grads[execution], _ = algo.meta_gradient(algo.init_params(), _batch())
    for name, g in grads["loop"].items():
        torch.testing.assert_close(grads["vmap"][name], g, rtol=1e-9, atol=1e-12, msg=name)
        assert bool(g.abs().sum() > 0), name


METASGD_START = {"scale": 0.1, "start": "metasgd", "start_lr": 0.03}


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_a_rule_started_as_metasgd_is_meta_sgd_with_the_lstm_silent(execution):
    """With the LSTM's output layer at zero, ``start: metasgd`` is Meta-SGD: the same inner
    steps, and the same meta-gradient of the initialisation and of each coordinate's rate
    (``lstm.rate.<name>`` against Meta-SGD's ``inner_lr.<name>``). The LSTM's output layer
    gets a gradient, so meta-training can make the LSTM add to Meta-SGD."""
    rule = LSTMRule(hidden=4, seed=1, **METASGD_START)
    metasgd = dm.algorithms.MetaSGDRule(0.03)
    grads, params = {}, {}
    for name, inner in (("lstm", rule), ("metasgd", metasgd)):
        algo = dm.algorithms.MAML(
            _mlp(), F.mse_loss, inner_rule=inner, inner_steps=3, execution=execution
        )
        params[name] = algo.init_params()
        grads[name], _ = algo.meta_gradient(params[name], _batch())
    for name, _ in _mlp().named_parameters():
        torch.testing.assert_close(
            params["lstm"]["lstm.rate." + name], params["metasgd"]["inner_lr." + name]
        )
        torch.testing.assert_close(
            grads["lstm"][name], grads["metasgd"][name], rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            grads["lstm"]["lstm.rate." + name],
            grads["metasgd"]["inner_lr." + name],
            rtol=1e-9,
            atol=1e-12,
        )
    assert bool(grads["lstm"]["lstm.out.weight"].abs().sum() > 0)


def test_a_rule_started_as_metasgd_steps_with_its_own_rates_plus_the_lstm():
    """After meta-training has moved them, the rates are each coordinate's own and the LSTM's
    update adds to Meta-SGD's step."""
    torch.manual_seed(2)
    rule = LSTMRule(hidden=4, seed=1, **METASGD_START)
    fast = {n: p.detach() for n, p in _mlp().named_parameters()}
    meta = rule.meta_params(fast)
    meta = {
        n: w + 0.01 * torch.rand_like(w) if n.startswith("lstm.rate.") else w
        for n, w in meta.items()
    }
    meta["lstm.out.weight"] = torch.rand_like(meta["lstm.out.weight"])
    grads = {n: torch.randn_like(p) for n, p in fast.items()}
    moved, _ = rule.step(meta, fast, grads, rule.init(meta, fast))
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    lstm, _ = rule.update(meta, flat, rule.init(meta, fast))
    assert bool(lstm.abs().sum() > 0)
    pieces = lstm.split([p.numel() for p in fast.values()])
    for (name, p), piece in zip(fast.items(), pieces, strict=True):
        expected = p - meta["lstm.rate." + name] * grads[name] + piece.view_as(p)
        torch.testing.assert_close(moved[name], expected, rtol=1e-12, atol=1e-12)


def test_rates_that_belong_to_one_network_are_refused_where_the_rule_meets_others():
    """The rates of ``start: metasgd`` are tied to the network they were meta-trained with:
    ``LearnedOptimizer`` (any model) and ``l2l`` (every problem of a family) refuse them."""
    from distmeta.errors import ConfigError

    rule = LSTMRule(hidden=3, start="metasgd")
    weights = rule.meta_params({"p": torch.zeros(2)})
    with pytest.raises(ValueError, match="started as metasgd.*cannot train another model"):
        LearnedOptimizer([torch.zeros(2, requires_grad=True)], rule=rule, weights=weights)
    with pytest.raises(ConfigError, match="start: metasgd .* l2l"):
        _lstm_config(algorithm={"lstm": {"start": "metasgd"}})


def test_reptile_gives_every_lstm_weight_a_gradient():
    algo = dm.algorithms.Reptile(_mlp(), F.mse_loss, inner_rule=LSTMRule(hidden=4), inner_steps=2)
    g, _ = algo.meta_gradient(algo.init_params(), _batch())
    assert all(bool(g[n].abs().sum() > 0) for n in g if n.startswith("lstm."))


def _lstm_config(**sections):
    raw = {
        "seed": 1,
        "task": {"name": "sinusoid", "shots": 5, "query": 5},
        "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {
            "name": "l2l",
            "inner_rule": "lstm",
            "lstm": {"hidden": 6, "scale": 0.05},
            "unroll": {"length": 5, "horizon": 10},
            "outer_lr": 0.01,
        },
        "train": {"steps": 40, "meta_batch_size": 4, "checkpoint_every": 10, "log_every": 10},
        "eval": {"tasks": 6},
        "tracking": {"enabled": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A learned optimizer meta-trained (40 steps) on sinusoid regression with an 8-unit MLP."""
    run_dir = tmp_path_factory.mktemp("lstm") / "run"
    dm.train(_lstm_config(), run_dir=str(run_dir), progress=False)
    return run_dir


SGD_START = {"scale": 0.05, "preprocess": False, "direct": True, "start": "sgd", "start_lr": 0.05}


@pytest.mark.parametrize(
    ("algorithm", "rule"),
    [("l2l", {}), ("maml", {}), ("reptile", {}), ("maml", SGD_START), ("maml", METASGD_START)],
    ids=["l2l", "maml", "reptile", "maml-started-as-sgd", "maml-started-as-metasgd"],
)
def test_meta_training_changes_every_lstm_weight(trained, tmp_path, algorithm, rule):
    """The failure of a popular port (LSTM weights never registered, never trained) cannot
    happen: after meta-training every element of every LSTM weight has moved, also where the
    rule starts as SGD or Meta-SGD with the LSTM's output layer at zero (nothing flows into the
    LSTM at the first step); Meta-SGD's rates move too."""
    if algorithm == "l2l":
        run = dm.load_run(trained)
    else:
        config = _lstm_config(
            algorithm={"name": algorithm, "inner_steps": 2, "lstm": {"hidden": 6, **rule}},
            train={"steps": 3},
        )
        dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
        run = dm.load_run(tmp_path / "run")
    initial = run.algorithm.init_params()
    rates = [n for n in initial if n.startswith(LSTMRule.rate_prefix)]
    lstm = [n for n in initial if n.startswith("lstm.") and n not in rates]
    assert len(lstm) == 8 + run.config.algorithm.lstm.direct
    for name in lstm:
        assert bool((run.params[name] != initial[name]).all()), name
    assert len(rates) == (4 if rule.get("start") == "metasgd" else 0)
    for name in rates:
        assert bool((run.params[name] != initial[name]).any()), name


def _fit_a_sine(optimizer_of, steps=30):
    """Train an 8-unit MLP on 20 points of ``2 sin(x)``, full batch: the loss before the
    first step and after the last."""
    torch.manual_seed(3)
    model = dm.models.MLP(1, (8,), 1)
    opt = optimizer_of(model.parameters())
    x = torch.linspace(-5, 5, 20).unsqueeze(1)
    y = 2 * torch.sin(x)
    start = F.mse_loss(model(x), y).item()
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return start, F.mse_loss(model(x), y).item()


def test_a_meta_trained_optimizer_lowers_a_small_model_s_loss(trained):
    """A model of another size than the one it was meta-trained on; the same LSTM with its
    initial weights drives the loss up instead."""
    start, end = _fit_a_sine(lambda ps: LearnedOptimizer(ps, run=trained))
    assert end < start
    rule, weights = dm.optim.load_learned_rule(trained)
    untrained = rule.meta_params(weights)
    _, wild = _fit_a_sine(lambda ps: LearnedOptimizer(ps, rule=rule, weights=untrained))
    assert wild > start


def _sine_step(optimizer, module):
    """One step on ``sum(sin(module(x)))`` over 7 points."""
    optimizer.zero_grad()
    module(torch.linspace(-3, 3, 7).unsqueeze(1)).sin().sum().backward()
    optimizer.step()


def _assert_resumes_exactly(opt, model, twin, resumed):
    """``resumed`` (an optimizer of ``twin``) loads ``opt``'s state dict through a file and
    ``twin`` ``model``'s weights; three more steps of each end on the same weights."""
    twin.load_state_dict(model.state_dict())
    resumed.load_state_dict(through_a_file(opt.state_dict()))
    for _ in range(3):
        _sine_step(opt, model)
        _sine_step(resumed, twin)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )


def test_learned_optimizer_step_is_the_rule_s_step_and_state_dict_round_trips(trained):
    rule, weights = dm.optim.load_learned_rule(trained)
    model = dm.models.MLP(1, (8,), 1)
    opt = LearnedOptimizer(model.parameters(), rule=rule, weights=weights)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _sine_step(opt, model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    expected, _ = rule.step(weights, before, grads, rule.init(weights, before))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-6, atol=1e-7)
    _sine_step(opt, model)
    twin = dm.models.MLP(1, (8,), 1)
    _assert_resumes_exactly(opt, model, twin, LearnedOptimizer(twin.parameters(), run=trained))


def test_learned_optimizer_with_momenta_carries_them_through_its_state_dict():
    rule = LSTMRule(hidden=4, scale=0.05, momenta=(0.5, 0.99))
    weights = rule.meta_params({"p": torch.zeros(1)})
    torch.manual_seed(4)
    model, twin = dm.models.MLP(1, (5,), 1), dm.models.MLP(1, (5,), 1)
    opt = LearnedOptimizer(model.parameters(), rule=rule, weights=weights)
    for _ in range(2):
        _sine_step(opt, model)
    assert {"h", "c", "m", "v", "t"} <= set(opt.state[model.net[0].weight])
    resumed = LearnedOptimizer(twin.parameters(), rule=rule, weights=weights)
    _assert_resumes_exactly(opt, model, twin, resumed)


def test_config_refuses_a_momentum_decay_outside_0_1():
    from distmeta.errors import ConfigError

    with pytest.raises(ConfigError, match="momenta"):
        _lstm_config(algorithm={"lstm": {"momenta": [0.9, 1.0]}})
    assert _lstm_config(algorithm={"lstm": {"momenta": [0.5]}}).algorithm.lstm.momenta == [0.5]


@pytest.mark.parametrize(
    ("start", "reference"),
    [
        ({"preprocess": False, "start": "sgd"}, torch.optim.SGD),
        # Adam's eps is outside the root, ours (1e-16) under it: equal where v >> 1e-32.
        (
            {"momenta": (0.5, 0.9), "start": "adam"},
            lambda ps, lr: torch.optim.Adam(ps, lr, eps=1e-16),
        ),
    ],
    ids=["sgd", "adam"],
)
def test_a_rule_started_from_an_optimizer_is_that_optimizer_until_meta_trained(start, reference):
    rule = LSTMRule(hidden=4, scale=0.05, direct=True, start_lr=0.03, **start)
    torch.manual_seed(5)
    model, twin = dm.models.MLP(1, (5,), 1), dm.models.MLP(1, (5,), 1)
    twin.load_state_dict(model.state_dict())
    initial = model.net[0].weight.detach().clone()
    weights = rule.meta_params(dict(model.named_parameters()))
    learned = LearnedOptimizer(model.parameters(), rule=rule, weights=weights)
    hand_made = reference(twin.parameters(), 0.03)
    for _ in range(6):
        _sine_step(learned, model)
        _sine_step(hand_made, twin)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.net[0].weight, initial)


def test_config_says_which_setting_a_start_needs():
    from distmeta.errors import ConfigError
    from distmeta.experiment import build_experiment

    config = _lstm_config(algorithm={"lstm": {"hidden": 6, "direct": True, "start": "sgd"}})
    with pytest.raises(ConfigError, match="algorithm.lstm: start 'sgd' .* preprocess false"):
        build_experiment(config)


def through_a_file(state):
    """A state dict through torch.save / torch.load, as a checkpoint stores it."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_learned_optimizer_refuses_what_holds_no_learned_optimizer(tmp_path, tiny_sinusoid_config):
    with pytest.raises(RunError, match="does not exist"):
        LearnedOptimizer([torch.zeros(2, requires_grad=True)], run=tmp_path / "missing")
    config = tiny_sinusoid_config
    config = config.model_copy(update={"train": config.train.model_copy(update={"steps": 1})})
    dm.train(config, run_dir=str(tmp_path / "maml"), progress=False)
    with pytest.raises(RunError, match="inner_rule is sgd, not lstm"):
        LearnedOptimizer([torch.zeros(2, requires_grad=True)], run=tmp_path / "maml")
    with pytest.raises(ValueError, match="give run"):
        LearnedOptimizer([torch.zeros(2, requires_grad=True)])
    rule = LSTMRule(hidden=3)
    with pytest.raises(ValueError, match="weights do not fit"):
        LearnedOptimizer([torch.zeros(2, requires_grad=True)], rule=rule, weights={})


def test_learned_optimizer_loads_a_tracked_run_from_mlflow(tmp_path, monkeypatch):
    from distmeta.tracking import MLflowTracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = _lstm_config(train={"steps": 10}, tracking={"enabled": True, "uri": uri})
    tracker = MLflowTracker(config)
    with tracker:
        dm.train(config, run_dir=str(tmp_path / "run"), callbacks=[tracker], progress=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from_mlflow = LearnedOptimizer(
        [torch.zeros(2, requires_grad=True)], run=f"runs:/{tracker.run_id}"
    )
    _, weights = dm.optim.load_learned_rule(tmp_path / "run")
    assert all(torch.equal(from_mlflow.weights[k], weights[k]) for k in weights)


def test_eval_compares_the_learned_optimizer_with_tuned_ones(trained, capsys):
    assert main(["eval", str(trained), "--json", "--tasks", "5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["problems"] == 5 and result["horizon"] == 10
    assert result["steps"] == list(range(21))
    assert set(result["curves"]) == {"learned", "sgd", "adam", "rmsprop"}
    for name in ("sgd", "adam", "rmsprop"):
        curve = result["curves"][name]
        assert len(curve["grid"]) == 9 and f"{curve['lr']:g}" in curve["grid"]
        finite = {lr: v for lr, v in curve["grid"].items() if v != "inf"}
        assert curve["grid"][f"{curve['lr']:g}"] == min(finite.values())
    learned = result["curves"]["learned"]
    assert learned["lr"] is None and len(learned["loss"]) == 21
    assert learned["log10_final"]["10"] == pytest.approx(math.log10(learned["loss"][10]))
    assert main(["eval", str(trained), "--tasks", "3"]) == 0
    assert "rmsprop" in capsys.readouterr().out


def test_eval_can_choose_the_checkpoint_on_validation_problems(trained, tmp_path):
    """With eval.checkpoint best the learned optimizer is the checkpoint (or final step) with
    the best validation score (log10 of the mean loss at the horizon and at twice it,
    averaged), scored as a baseline's learning rate is: its score is the one the checkpoint
    loaded alone gets, and its test curve is that checkpoint's. Here meta-training "ended
    badly": the final weights are the untrained ones, which drive the loss up, so a
    checkpoint must win."""
    import shutil

    from distmeta.engine.rundir import RunDir
    from distmeta.experiment import build_task_source
    from distmeta.runs.optimizers import learned_optimizer, loss_curves

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    rule, weights = dm.optim.load_learned_rule(trained)
    RunDir(run_dir).save_final(rule.meta_params(weights), 40)
    result = dm.runs.compare_optimizers(dm.load_run(run_dir, ["eval.checkpoint=best"]), tasks=4)
    learned = result.curves["learned"]
    assert set(learned.grid) == {"10", "20", "30", "40"}
    assert learned.step != 40
    assert learned.grid[str(learned.step)] == min(learned.grid.values())
    alone = dm.load_run(run_dir, step=20)
    validation = [(alone.config.seed + 1, 1, i) for i in range(32)]
    family = build_task_source(alone.config, split="eval")
    curve = loss_curves(alone.model, family, validation, {"l": learned_optimizer(alone)}, 20)["l"]
    at = [math.log10(float(curve[:, step].mean())) for step in (10, 20)]
    assert learned.grid["20"] == pytest.approx((at[0] + at[1]) / 2, rel=1e-9)
    chosen = dm.runs.compare_optimizers(dm.load_run(run_dir, step=learned.step), tasks=4)
    assert chosen.curves["learned"].loss == learned.loss
    final = dm.runs.compare_optimizers(dm.load_run(run_dir), tasks=4).curves["learned"]
    assert final.grid == {} and final.step == 40


def test_eval_can_score_validation_at_the_horizon_alone(trained):
    """eval.select_at horizon scores learning rates by the log10 of the mean validation loss
    at the horizon only: Adam's chosen rate has the best such score."""
    from distmeta.experiment import build_task_source
    from distmeta.runs.optimizers import LEARNING_RATES, loss_curves

    run = dm.load_run(trained, ["eval.select_at=horizon"])
    adam = dm.runs.compare_optimizers(run, tasks=3).curves["adam"]
    validation = [(run.config.seed + 1, 1, i) for i in range(32)]
    family = build_task_source(run.config, split="eval")
    makers = {f"{lr:g}": lambda ps, lr=lr: torch.optim.Adam(ps, lr=lr) for lr in LEARNING_RATES}
    curves = loss_curves(run.model, family, validation, makers, 10)
    finals = {lr: float(c[:, 10].mean()) for lr, c in curves.items() if c[:, 10].isfinite().all()}
    assert f"{adam.lr:g}" == min(finals, key=finals.get)
    assert adam.grid[f"{adam.lr:g}"] == pytest.approx(math.log10(finals[f"{adam.lr:g}"]))


def test_a_validation_score_is_infinite_where_a_scored_step_is_not_finite():
    """A candidate with a problem not finite at the horizon never wins, even where the
    problem's loss is finite again at twice it (a NaN would otherwise score minus infinity)."""
    from distmeta.runs.optimizers import _validation_score

    curve = torch.ones(3, 5, dtype=torch.float64)
    assert _validation_score(curve, (2, 4)) == 0.0
    curve[1, 2] = math.nan
    assert _validation_score(curve, (2, 4)) == math.inf
    assert _validation_score(curve, (4,)) == 0.0


def test_config_keeps_checkpoint_choice_to_learned_optimizers():
    from distmeta.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.checkpoint: .* learned optimizers"):
        _lstm_config(algorithm={"name": "maml"}, eval={"checkpoint": "best"})
    with pytest.raises(ConfigError, match="eval.select_at: .* learned optimizers"):
        _lstm_config(algorithm={"name": "maml"}, eval={"select_at": "horizon"})


def test_export_refuses_a_learned_optimizer_and_says_how_to_use_it(trained):
    from distmeta.tracking import export_model

    with pytest.raises(RunError, match="LearnedOptimizer"):
        export_model(trained, "optimizer")
