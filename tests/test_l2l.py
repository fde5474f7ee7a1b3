"""Meta-training a learned optimizer (L2L): the meta-gradient of an unroll against an explicit
reference, truncation at unroll boundaries, the trajectories kept per slot (continue,
recompute, restart), the problem families, both engines, resume, and the config's checks."""

from __future__ import annotations

import math

import pytest
import torch
from reference import l2l_reference, lstm_optimizer_reference

import distmeta as dm
from distmeta.algorithms import L2L, LSTMRule
from distmeta.config import parse_config
from distmeta.errors import ConfigError, TaskFailedError
from distmeta.models import QuadraticVariable
from distmeta.tasks import Quadratic, TrajectoryPlan
from distmeta.tasks.quadratic import quadratic_loss

RULE = {"hidden": 4, "layers": 2, "scale": 0.1}


def _algorithm(execution="loop", second_order=False, preprocess=True, unroll=3, horizon=6, **opts):
    family = Quadratic(problems=3, dims=2, dtype=torch.float64, **opts)
    model = QuadraticVariable(3, 2).double()
    rule = LSTMRule(preprocess=preprocess, seed=1, **RULE)
    algo = L2L(
        model,
        family,
        rule,
        unroll=unroll,
        horizon=horizon,
        second_order=second_order,
        execution=execution,
    )
    return algo, family


def _perturbed(params):
    torch.manual_seed(5)  # larger weights than at initialisation: the LSTM's updates matter
    return {k: v + 0.3 * torch.randn_like(v) for k, v in params.items()}


def _forward(theta, w):
    return (w @ theta["x"].unsqueeze(-1)).squeeze(-1)


def _reference(algo, family, phi, name, start, state, first, second_order, each=None):
    update = lambda leaf: lstm_optimizer_reference(  # noqa: E731
        leaf, 2, RULE["hidden"], RULE["scale"], preprocess=True
    )
    inputs, targets = family.steps(name, first, algo.unroll + 1)
    return l2l_reference(
        _forward,
        quadratic_loss,
        phi,
        update,
        start,
        state,
        inputs,
        targets,
        algo.unroll,
        second_order,
        each,
    )


def _close(actual, expected, rtol=1e-9, atol=1e-12):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.parametrize("second_order", [False, True])
def test_unroll_meta_gradients_equal_an_explicit_create_graph_reference(execution, second_order):
    """Two consecutive unrolls of two trajectories: each equals the reference started from
    the previous unroll's end, as constants (the graph is cut at the boundary)."""
    algo, family = _algorithm(execution, second_order)
    phi = _perturbed(algo.init_params())
    plan = TrajectoryPlan(7, 2)
    zeros = torch.zeros(2, 6, RULE["hidden"], dtype=torch.float64)
    starts = {i: (family.initial_params(None, (7, 0, i)), (zeros, zeros)) for i in range(2)}
    for step in range(2):
        total = algo.meta_gradient_sum(phi, plan.batch(family, step))
        expected, ends = {}, {}
        for i in range(2):
            theta, state = starts[i]
            grads, end = _reference(
                algo, family, phi, (7, 0, i), theta, state, step * algo.unroll, second_order
            )
            ends[i] = (end[0], end[1:])
            expected = {k: expected.get(k, 0) + g for k, g in grads.items()}
        _close(total.mean(torch.float64), {k: g / 2 for k, g in expected.items()})
        starts = ends


def test_the_log_meta_loss_is_the_sum_of_the_logs_of_the_losses_along_the_unroll():
    """meta_loss "log" differentiates the sum of log losses: the reference with each loss
    logged, and not the plain sum's gradient (which weighs the large losses more)."""
    family = Quadratic(problems=3, dims=2, dtype=torch.float64)
    rule = LSTMRule(preprocess=True, seed=1, **RULE)
    algo = L2L(QuadraticVariable(3, 2).double(), family, rule, 3, 6, meta_loss="log")
    phi = _perturbed(algo.init_params())
    total = algo.meta_gradient_sum(phi, TrajectoryPlan(7, 1).batch(family, 0)).mean(torch.float64)
    zeros = torch.zeros(2, 6, RULE["hidden"], dtype=torch.float64)
    start = family.initial_params(None, (7, 0, 0))
    args = (algo, family, phi, (7, 0, 0), start, (zeros, zeros), 0, False)
    logged, _ = _reference(*args, each=torch.log)
    _close(total, logged)
    summed, _ = _reference(*args)
    assert max((summed[k] - total[k]).abs().max().item() for k in total) > 1e-6


def _momentum_reference(phi, decays):
    """The rule with momentum features and a direct path, written from the gradient history:
    each feature the bias-corrected weighted sums of past gradients (and squares) in closed
    form, fed to the nn.LSTM reference beside the preprocessed gradient."""
    lstm_step = lstm_optimizer_reference(
        phi, 2, RULE["hidden"], RULE["scale"], preprocess=True, extra=len(decays)
    )
    history = []

    def average(decay, values):
        t = len(values)
        total = sum((1 - decay) * decay ** (t - 1 - i) * g for i, g in enumerate(values))
        return total / (1 - decay**t)

    def update(grad, h, c):
        history.append(grad)
        rms = average(0.999, [g.square() for g in history]).sqrt()
        features = torch.stack([average(decay, history) / rms for decay in decays], dim=1)
        return lstm_step(grad, h, c, features)

    return update


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_gradients_through_momentum_features_equal_the_reference(second_order):
    family = Quadratic(problems=3, dims=2, dtype=torch.float64)
    rule = LSTMRule(seed=1, momenta=(0.5, 0.9), direct=True, **RULE)
    algo = L2L(
        QuadraticVariable(3, 2).double(),
        family,
        rule,
        unroll=3,
        horizon=6,
        second_order=second_order,
    )
    phi = _perturbed(algo.init_params())
    assert phi["lstm.direct.weight"].abs().min() > 0
    total = algo.meta_gradient_sum(phi, TrajectoryPlan(7, 1).batch(family, 0))
    name = (7, 0, 0)
    zeros = torch.zeros(2, 6, RULE["hidden"], dtype=torch.float64)
    inputs, targets = family.steps(name, 0, algo.unroll + 1)
    expected, _ = l2l_reference(
        _forward,
        quadratic_loss,
        phi,
        lambda leaf: _momentum_reference(leaf, (0.5, 0.9)),
        family.initial_params(None, name),
        (zeros, zeros),
        inputs,
        targets,
        algo.unroll,
        second_order,
    )
    _close(total.mean(torch.float64), expected)


def test_truncation_cuts_the_graph_at_unroll_boundaries():
    """The second unroll's meta-gradient ignores how the first one's weights moved the
    optimizee: it differs from backpropagating through both unrolls, and what a slot carries
    is constant."""
    algo, family = _algorithm()
    phi = _perturbed(algo.init_params())
    plan = TrajectoryPlan(7, 1)
    algo.meta_gradient_sum(phi, plan.batch(family, 0))
    second = algo.meta_gradient_sum(phi, plan.batch(family, 1)).mean(torch.float64)
    carried = algo._slots[0].after
    assert all(not t.requires_grad for t in [*carried.fast.values(), *carried.state.values()])
    # Through both unrolls at once: an unroll of twice the length, counting only its second half.
    whole, _ = _algorithm(unroll=6, horizon=6)
    leaf = {k: v.clone().requires_grad_() for k, v in phi.items()}
    name = (7, 0, 0)
    fast = family.initial_params(None, name)
    state = whole.inner_rule.init(leaf, fast)
    inputs, targets = family.steps(name, 0, 7)
    loss = 0
    for k in range(7):
        value, grads = dm.algorithms.differentiate.value_and_grad(whole._loss)(
            fast, inputs[k], targets[k]
        )
        loss = loss + (value if k > 3 else 0)
        if k < 6:
            fast, state = whole.inner_rule.step(leaf, fast, grads, state)
    through = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values())), strict=True))
    assert max((through[k] - second[k]).abs().max().item() for k in second) > 1e-6


def test_loop_and_vmap_give_the_same_meta_gradient():
    loop, family = _algorithm("loop")
    vmapped, _ = _algorithm("vmap")
    phi = _perturbed(loop.init_params())
    plan = TrajectoryPlan(3, 3)
    for step in range(3):
        a = loop.meta_gradient_sum(phi, plan.batch(family, step)).mean(torch.float64)
        b = vmapped.meta_gradient_sum(phi, plan.batch(family, step)).mean(torch.float64)
        _close(a, b, rtol=1e-10, atol=1e-12)


def _gradient(algo, family, step, phi):
    return algo.meta_gradient_sum(phi, TrajectoryPlan(7, 1).batch(family, step)).mean(torch.float64)


def test_a_slot_continues_recomputes_and_starts_trajectories():
    algo, family = _algorithm(unroll=3, horizon=6)  # two unrolls per trajectory
    phi = _perturbed(algo.init_params())
    first = _gradient(algo, family, 0, phi)
    second = _gradient(algo, family, 1, phi)
    assert algo._slots[0].name == (7, 0, 0) and algo._slots[0].unrolls == 2
    _close(_gradient(algo, family, 1, phi), second, rtol=0, atol=0)  # a retried slice: same bits
    _gradient(algo, family, 2, phi)  # the trajectory has run its horizon: a new one starts
    assert algo._slots[0].name == (7, 2, 0) and algo._slots[0].unrolls == 1
    _gradient(algo, family, 9, phi)  # asynchronous requests skip numbers: it goes on
    assert algo._slots[0].name == (7, 2, 0) and algo._slots[0].unrolls == 2
    _close(_gradient(algo, family, 0, phi), first, rtol=0, atol=0)  # a rewind starts anew
    restarted, _ = _algorithm(unroll=3, horizon=6)  # a fresh process: a new trajectory
    fresh = _gradient(restarted, family, 1, phi)
    assert restarted._slots[0].name == (7, 1, 0)
    assert max((fresh[k] - second[k]).abs().max().item() for k in fresh) > 1e-9


def test_a_trajectory_whose_loss_is_not_finite_is_named():
    family = Quadratic(problems=3, dims=2)
    algo = L2L(QuadraticVariable(3, 2), family, LSTMRule(scale=1e38), unroll=2, horizon=2)
    request = TrajectoryPlan(4, 2).batch(family, 3)
    with pytest.raises(TaskFailedError, match=r"\(4, 3, 0\).*not finite"):
        algo.meta_gradient_sum(algo.init_params(), request)


def test_l2l_refuses_a_rule_without_meta_parameters_and_bad_unrolls():
    family, model = Quadratic(3, 2), QuadraticVariable(3, 2)
    with pytest.raises(ValueError, match="no meta-parameters"):
        L2L(model, family, dm.algorithms.SGDRule(0.1))
    with pytest.raises(ValueError, match="multiple of unroll"):
        L2L(model, family, LSTMRule(), unroll=20, horizon=30)
    with pytest.raises(ValueError, match="meta_loss"):
        L2L(model, family, LSTMRule(), meta_loss="mean")
    with pytest.raises(TypeError, match="TrajectoryRequest"):
        algo = L2L(model, family, LSTMRule())
        algo.meta_gradient_sum(algo.init_params(), dm.tasks.Sinusoid().sample(0, 0, [0]))


def test_the_query_meta_loss_is_the_loss_after_the_unroll():
    family = dm.tasks.Sinusoid(shots=4, query=6, dtype=torch.float64)
    model = dm.models.MLP(1, (3,), 1).double()
    algo = L2L(model, family, LSTMRule(hidden=3, seed=2), 2, 2, meta_loss="query")
    phi = algo.init_params()
    request = TrajectoryPlan(1, 1).batch(family, 0)
    g, metrics = algo.meta_gradient(phi, request)
    # The same unroll by hand: two steps, then the query loss, differentiated.
    leaf = {k: v.clone().requires_grad_() for k, v in phi.items()}
    fast = family.initial_params(model, (1, 0, 0))
    state = algo.inner_rule.init(leaf, fast)
    inputs, targets = family.steps((1, 0, 0), 0, 3)
    for k in range(2):
        _, grads = dm.algorithms.differentiate.value_and_grad(algo._loss)(
            fast, inputs[k], targets[k]
        )
        fast, state = algo.inner_rule.step(leaf, fast, grads, state)
    qx, qy = family.query_set((1, 0, 0))
    query = algo._loss(fast, qx, qy)
    _close(g, dict(zip(leaf, torch.autograd.grad(query, list(leaf.values())), strict=True)))
    assert metrics["query_loss"] == pytest.approx(query.item())


# --- problem families --------------------------------------------------------------------------


def test_the_quadratic_is_the_reference_implementation_s():
    family = Quadratic()
    name = (0, 0, 3)
    (w, y), x0 = family.steps(name, 0, 1), family.initial_params(None, name)["x"]
    assert w.shape == (1, 128, 10, 10) and y.shape == (1, 128, 10) and x0.shape == (128, 10)
    assert w.min() >= 0 and w.max() < 1 and y.min() >= 0 and y.max() < 1
    assert x0.std().item() == pytest.approx(0.01, rel=0.1)
    model = QuadraticVariable()
    value = quadratic_loss(torch.func.functional_call(model, {"x": x0}, (w[0],)), y[0])
    by_hand = sum(((w[0, b] @ x0[b] - y[0, b]) ** 2).sum() for b in range(128)) / 128
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    again = family.steps(name, 40, 2)  # stationary: every step, the same problem
    assert torch.equal(again[0][1], w[0]) and torch.equal(again[1][0], y[0])


def test_the_non_stationary_quadratic_redraws_w_and_y_at_its_step():
    family = Quadratic(problems=6, dims=3, redraw_at=5)
    w, y = family.steps((0, 0, 0), 3, 4)  # steps 3, 4 | 5, 6
    assert w.shape == (4, 6, 3, 3) and y.shape == (4, 6, 3)
    assert torch.equal(w[0], w[1]) and torch.equal(w[2], w[3]) and not torch.equal(w[1], w[2])
    assert not torch.equal(y[1], y[2])
    assert torch.equal(family.query_set((0, 0, 0))[0], w[2])
    with pytest.raises(ValueError, match="redraw_at"):
        Quadratic(redraw_at=0)


def test_sinusoid_problems_draw_new_points_at_every_step_and_rebuild_them():
    family = dm.tasks.Sinusoid(shots=5, query=7)
    x, y = family.steps((2, 0, 1), 3, 2)
    assert x.shape == (2, 5, 1) and not torch.equal(x[0], x[1])
    amplitude, phase = family.parameters_of(2, 0, 1)
    torch.testing.assert_close(y, amplitude * torch.sin(x - phase))
    assert torch.equal(family.steps((2, 0, 1), 4, 1)[0][0], x[1])
    qx, _ = family.query_set((2, 0, 1))
    assert qx.shape == (7, 1)
    model = dm.models.MLP(1, (4,), 1)
    a, b = family.initial_params(model, (2, 0, 1)), family.initial_params(model, (2, 0, 2))
    assert torch.equal(a["net.0.weight"], family.initial_params(model, (2, 0, 1))["net.0.weight"])
    assert not torch.equal(a["net.0.weight"], b["net.0.weight"])


def test_few_shot_images_are_a_problem_family_of_full_batch_steps(tmp_path):
    from imagesets import synthetic_image_set

    path = synthetic_image_set(tmp_path / "set", classes=6, drawers=4, size=16)
    family = dm.tasks.FewShotImages(path, ways=3, shots=1, query=2, rotations=False)
    x, y = family.steps((0, 0, 0), 0, 3)
    assert x.shape == (3, 3, 1, 16, 16) and torch.equal(x[0], x[2]) and y.tolist()[0] == [0, 1, 2]
    model = dm.models.Conv4(1, 3, hidden=4, image_size=16)
    algo = L2L(model, family, LSTMRule(hidden=3), unroll=2, horizon=2)
    g, metrics = algo.meta_gradient(algo.init_params(), TrajectoryPlan(0, 2).batch(family, 0))
    assert all(bool(v.abs().sum() > 0) for v in g.values())
    assert math.isfinite(metrics["query_loss"])


# --- engines, resume, config ---------------------------------------------------------------------


def _config(**sections):
    raw = {
        "seed": 2,
        "task": {"name": "quadratic", "problems": 6, "dims": 3},
        "model": {"name": "quadratic"},
        "algorithm": {
            "name": "l2l",
            "inner_rule": "lstm",
            "lstm": {"hidden": 4, "scale": 0.1},
            "unroll": {"length": 3, "horizon": 6},
            "execution": "loop",
        },
        "train": {"steps": 6, "meta_batch_size": 3, "checkpoint_every": 2, "log_every": 1},
        "eval": {"tasks": 4},
        "tracking": {"enabled": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw)


def _final(run_dir):
    return dm.load_run(run_dir).params


@pytest.mark.parametrize("transport", ["tasks", "collective"])
def test_sync_ray_equals_local_across_trajectory_boundaries(ray_cluster, tmp_path, transport):
    """Workers keep their slots' trajectories between steps: two workers give the local
    engine's parameters bit for bit over three trajectories per slot, on either transport."""
    dm.train(_config(), run_dir=str(tmp_path / "local"), progress=False)
    engine = {"name": "ray", "workers": 2, "transport": transport}
    dm.train(_config(engine=engine), run_dir=str(tmp_path / "ray"), progress=False)
    local, ray = _final(tmp_path / "local"), _final(tmp_path / "ray")
    assert all(torch.equal(local[k], ray[k]) for k in local)


def test_async_ray_meta_trains_the_optimizer(ray_cluster, tmp_path):
    engine = {"name": "ray", "workers": 2, "mode": "async", "max_staleness": 4}
    result = dm.train(_config(engine=engine), run_dir=str(tmp_path / "run"), progress=False)
    assert result.steps == 6 and math.isfinite(result.metrics["loss"])
    initial = dm.load_run(tmp_path / "run").algorithm.init_params()
    final = _final(tmp_path / "run")
    assert all(not torch.equal(initial[k], final[k]) for k in initial)


def test_resume_at_a_trajectory_boundary_is_exact(tmp_path):
    dm.train(_config(), run_dir=str(tmp_path / "whole"), progress=False)
    dm.train(_config(train={"steps": 4}), run_dir=str(tmp_path / "part"), progress=False)
    dm.train(_config(), run_dir=str(tmp_path / "part"), resume=True, progress=False)
    whole, part = _final(tmp_path / "whole"), _final(tmp_path / "part")
    assert all(torch.equal(whole[k], part[k]) for k in whole)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algorithm": {"inner_rule": "sgd"}}, "algorithm.inner_rule: l2l meta-trains"),
        ({"algorithm": {"name": "fomaml"}}, "first-order MAML gives an lstm rule no"),
        ({"model": {"name": "mlp"}}, "model.name: the quadratic task"),
        ({"algorithm": {"name": "maml"}}, "algorithm.name: quadratic problems"),
        ({"train": {"checkpoint_every": 3}}, "train.checkpoint_every \\(3\\) must be a multiple"),
        ({"algorithm": {"unroll": {"length": 4, "horizon": 6}}}, "algorithm.unroll: horizon"),
        ({"algorithm": {"lstm": {"hiden": 3}}}, "algorithm.lstm.hiden: unknown key"),
        ({"algorithm": {"lstm": {"scale": 0}}}, "algorithm.lstm.scale"),
        ({"task": {"redraw_at": 0}}, "task.redraw_at"),
    ],
)
def test_config_refuses_what_a_learned_optimizer_cannot_run(change, message):
    raw = _config().model_dump(mode="json")
    for section, values in change.items():
        merged = dict(raw[section])
        for key, value in values.items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
        raw[section] = merged
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_eval_of_a_non_stationary_problem_reports_the_steps_back_after_the_redraw(tmp_path):
    config = _config(task={"redraw_at": 4}, train={"steps": 2})
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    result = dm.runs.compare_optimizers(dm.load_run(tmp_path / "run"), tasks=3)
    assert result.redraw_at == 4 and result.steps == list(range(13))
    for curve in result.curves.values():
        before = curve.loss[3]
        back = [k - 4 for k in range(4, 13) if curve.loss[k] <= before]
        assert curve.recovery_steps == (back[0] if back else None)
    assert any(curve.recovery_steps is not None for curve in result.curves.values())
    assert any(curve.loss[4] > curve.loss[3] for curve in result.curves.values())
