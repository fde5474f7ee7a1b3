"""Meta-gradients against independent references and finite differences."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from reference import (
    conv4_forward,
    maml_objective,
    maml_reference,
    metasgd_reference,
    mlp_forward,
    reptile_reference,
)

import distmeta as dm
from distmeta.algorithms import choose_task_threads
from distmeta.algorithms.task_threads import _TaskQueue
from distmeta.errors import TaskFailedError

torch.set_default_dtype(torch.float32)


def _mlp(hidden=(12, 12)):
    torch.manual_seed(0)
    return dm.models.MLP(1, hidden, 1).double()


def _sinusoid_batch(tasks=4, shots=5, query=7, step=0):
    return dm.tasks.Sinusoid(shots, query, dtype=torch.float64).sample(11, step, range(tasks))


def _assert_close(actual, expected, rtol=1e-9, atol=1e-11):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_equals_unrolled_reference(steps, execution):
    model, batch = _mlp(), _sinusoid_batch()
    algo = dm.algorithms.MAML(
        model, F.mse_loss, inner_lr=0.1, inner_steps=steps, execution=execution
    )
    params = algo.init_params()
    g, metrics = algo.meta_gradient(params, batch)
    _assert_close(g, maml_reference(mlp_forward, F.mse_loss, params, batch, steps, 0.1))
    assert metrics["loss"] > 0


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_first_order_maml_equals_reference_and_differs_from_second_order(execution):
    model, batch = _mlp(), _sinusoid_batch()
    fo = dm.algorithms.MAML(model, F.mse_loss, 0.1, 2, first_order=True, execution=execution)
    params = fo.init_params()
    g, _ = fo.meta_gradient(params, batch)
    _assert_close(
        g, maml_reference(mlp_forward, F.mse_loss, params, batch, 2, 0.1, first_order=True)
    )
    second = maml_reference(mlp_forward, F.mse_loss, params, batch, 2, 0.1)
    assert max((g[k] - second[k]).abs().max().item() for k in g) > 1e-6


@pytest.mark.parametrize("execution", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_with_a_loss_after_every_step_equals_reference(first_order, execution):
    model, batch = _mlp(), _sinusoid_batch()
    weights = [1.0, 0.0, 3.0]
    algo = dm.algorithms.MAML(
        model,
        F.mse_loss,
        0.1,
        3,
        first_order=first_order,
        step_loss_weights=weights,
        execution=execution,
    )
    params = algo.init_params()
    g, metrics = algo.meta_gradient(params, batch)
    expected = maml_reference(mlp_forward, F.mse_loss, params, batch, 3, 0.1, first_order, weights)
    _assert_close(g, expected)
    last_only = maml_reference(mlp_forward, F.mse_loss, params, batch, 3, 0.1, first_order)
    assert max((g[k] - last_only[k]).abs().max().item() for k in g) > 1e-6
    _, plain_metrics = dm.algorithms.MAML(
        model, F.mse_loss, 0.1, 3, first_order=first_order, execution=execution
    ).meta_gradient(params, batch)
    assert metrics == plain_metrics  # the reported loss is the one after the last step


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "one weight per inner step"), ([1.0, -1.0], "non-negative"), ([0, 0], "sum")],
)
def test_step_loss_weights_are_checked(weights, message):
    with pytest.raises(ValueError, match=message):
        dm.algorithms.MAML(_mlp(), F.mse_loss, 0.1, 2, step_loss_weights=weights)


def test_maml_matches_central_finite_differences():
    model = _mlp(hidden=(3,))
    batch = _sinusoid_batch(tasks=2, shots=4, query=4)
    algo = dm.algorithms.MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=2, execution="loop")
    params = algo.init_params()
    g, _ = algo.meta_gradient(params, batch)
    eps = 1e-6
    for name, value in params.items():
        for flat_index in range(value.numel()):
            shifted = {}
            for sign in (1, -1):
                p = {k: v.clone() for k, v in params.items()}
                p[name].view(-1)[flat_index] += sign * eps
                shifted[sign] = maml_objective(mlp_forward, F.mse_loss, p, batch, 2, 0.05).item()
            numeric = (shifted[1] - shifted[-1]) / (2 * eps)
            assert g[name].view(-1)[flat_index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_reptile_direction_is_params_minus_mean_adapted(execution):
    model, batch = _mlp(), _sinusoid_batch()
    algo = dm.algorithms.Reptile(
        model, F.mse_loss, inner_lr=0.05, inner_steps=4, execution=execution
    )
    params = algo.init_params()
    g, _ = algo.meta_gradient(params, batch)
    _assert_close(g, reptile_reference(mlp_forward, F.mse_loss, params, batch, 4, 0.05))


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_metasgd_gradients_for_weights_and_learned_rates(execution):
    model, batch = _mlp(), _sinusoid_batch()
    rule = dm.algorithms.MetaSGDRule(0.05)
    algo = dm.algorithms.MAML(
        model, F.mse_loss, inner_rule=rule, inner_steps=2, execution=execution
    )
    params = algo.init_params()
    names = [n for n, _ in model.named_parameters()]
    assert set(names) < set(params)
    assert all(torch.all(params[f"inner_lr.{n}"] == 0.05) for n in names)
    # Perturb the rates so every element differs: the gradient must follow each one.
    params = {
        k: (v * (1 + 0.5 * torch.rand_like(v)) if k.startswith("inner_lr.") else v)
        for k, v in params.items()
    }
    g, _ = algo.meta_gradient(params, batch)
    weights = {n: params[n] for n in names}
    rates = {n: params[f"inner_lr.{n}"] for n in names}
    _assert_close(g, metasgd_reference(mlp_forward, F.mse_loss, weights, rates, batch, 2))


def test_conv4_batched_meta_gradient_equals_per_task_reference_in_float64():
    torch.manual_seed(0)
    model = dm.models.Conv4(in_channels=1, out_features=3, hidden=4, image_size=16).double()
    tasks, shots, queries = 3, 3, 4
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(
        tasks, shots + queries, 1, 16, 16, dtype=torch.float64, generator=generator
    )
    labels = torch.randint(0, 3, (tasks, shots + queries), generator=generator)
    batch = dm.tasks.TaskBatch(
        images[:, :shots], labels[:, :shots], images[:, shots:], labels[:, shots:]
    )
    expected = None
    for execution in ("vmap", "loop"):
        algo = dm.algorithms.MAML(
            model, F.cross_entropy, inner_lr=0.3, inner_steps=2, execution=execution
        )
        params = algo.init_params()
        g, metrics = algo.meta_gradient(params, batch)
        expected = expected or maml_reference(conv4_forward, F.cross_entropy, params, batch, 2, 0.3)
        _assert_close(g, expected)
        assert 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("in_channels", "steps", "first_order"), [(1, 1, False), (3, 2, False), (1, 2, True)]
)
def test_conv4_one_task_path_equals_reference_in_float64(in_channels, steps, first_order):
    """The loop path: autograd, fused batch-norm kernels with their hand-written second
    derivative, channels-last activations, pooling before ReLU."""
    torch.manual_seed(0)
    model = dm.models.Conv4(in_channels, out_features=3, hidden=5, image_size=16).double()
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(2, 9, in_channels, 16, 16, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 3, (2, 9), generator=generator)
    batch = dm.tasks.TaskBatch(images[:, :4], labels[:, :4], images[:, 4:], labels[:, 4:])
    algo = dm.algorithms.MAML(
        model, F.cross_entropy, 0.4, steps, first_order=first_order, execution="loop"
    )
    params = algo.init_params()
    g, _ = algo.meta_gradient(params, batch)
    expected = maml_reference(
        conv4_forward, F.cross_entropy, params, batch, steps, 0.4, first_order=first_order
    )
    _assert_close(g, expected)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_zero_init_head_starts_each_task_at_zero_and_is_not_meta_learned(execution):
    torch.manual_seed(0)
    model = dm.models.Conv4(in_channels=1, out_features=3, hidden=4, image_size=16).double()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(3, 7, 1, 16, 16, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 3, (3, 7), generator=generator)
    batch = dm.tasks.TaskBatch(images[:, :3], labels[:, :3], images[:, 3:], labels[:, 3:])
    head = ["head.weight", "head.bias"]
    algo = dm.algorithms.MAML(
        model, F.cross_entropy, 0.3, 2, execution=execution, zero_init=["head.bias", *head[:1]]
    )
    params = algo.init_params()
    assert algo.zero_init == tuple(head)
    assert all(not params[name].any() for name in head)
    assert torch.equal(params["features.0.weight"], model.features[0].weight.detach())
    g, _ = algo.meta_gradient(params, batch)
    expected = maml_reference(conv4_forward, F.cross_entropy, params, batch, 2, 0.3)
    expected.update({name: torch.zeros_like(params[name]) for name in head})
    assert expected["features.0.weight"].abs().sum() > 0  # the body still learns through it
    _assert_close(g, expected)
    # Adam on a zero gradient leaves the head at zero, step after step.
    state = {name: p.clone().requires_grad_() for name, p in params.items()}
    optimizer = torch.optim.Adam(state.values(), lr=0.1)
    for _ in range(3):
        g, _ = algo.meta_gradient({n: p.detach() for n, p in state.items()}, batch)
        for name, p in state.items():
            p.grad = g[name]
        optimizer.step()
    assert all(not state[name].any() for name in head)
    assert not torch.equal(state["features.0.weight"], params["features.0.weight"])


def test_zero_init_refuses_unknown_names_and_nonzero_values():
    model = _mlp()
    with pytest.raises(ValueError, match=r"zero_init names \['head.weight'\], which are not"):
        dm.algorithms.Reptile(model, F.mse_loss, zero_init=["head.weight"])
    with pytest.raises(TypeError, match="zero_init must be a sequence"):
        dm.algorithms.MAML(model, F.mse_loss, zero_init="layers.2.weight")
    last = [name for name, _ in model.named_parameters()][-2:]
    rule = dm.algorithms.MetaSGDRule(0.01)
    algo = dm.algorithms.MAML(model, F.mse_loss, inner_rule=rule, zero_init=last)
    params = algo.init_params()
    assert f"inner_lr.{last[0]}" in params and all(not params[name].any() for name in last)
    params[last[0]] = params[last[0]] + 1.0
    with pytest.raises(ValueError, match=rf"params \['{last[0]}'\] must be zero"):
        algo.meta_gradient(params, _sinusoid_batch())


def test_autograd_grad_equals_torch_func_grad():
    """distmeta's ``grad`` (autograd outside torch.func transforms, torch.func.grad inside)
    gives torch.func.grad's results, nested to second order, with aux and an unused entry."""
    from distmeta.algorithms.differentiate import grad

    generator = torch.Generator().manual_seed(3)
    params = {name: torch.randn(4, dtype=torch.float64, generator=generator) for name in "abu"}
    x = torch.randn(4, dtype=torch.float64, generator=generator)

    def inner(p, x):
        return (p["a"] * x).sin().sum() * p["b"].square().sum()

    def outer(p):
        g = grad(inner)(p, x)
        fast = {name: p[name] - 0.3 * g[name] for name in p}
        value = (fast["a"] * fast["b"]).exp().sum()
        return value, value.detach()

    ours, ours_aux = grad(outer, has_aux=True)(params)
    expected, expected_aux = torch.func.grad(outer, has_aux=True)(params)
    _assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    assert torch.all(ours["u"] == 0) and not ours_aux.requires_grad
    torch.testing.assert_close(ours_aux, expected_aux)
    compiled = torch.compile(grad(inner), fullgraph=True, backend="eager")
    _assert_close(compiled(params, x), torch.func.grad(inner)(params, x))


def test_batch_norm_uses_each_tasks_own_statistics():
    """A task's gradient must not change when another task in the batch changes."""
    torch.manual_seed(0)
    model = dm.models.Conv4(1, 2, hidden=4, image_size=16).double()
    x = torch.randn(2, 4, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([[0, 1, 0, 1]] * 2)
    algo = dm.algorithms.MAML(model, F.cross_entropy, 0.1, 1, execution="vmap")
    params = algo.init_params()
    first = algo.adaptation_curve(params, dm.tasks.TaskBatch(x, y, x, y), 1)[0]
    x2 = x.clone()
    x2[1] = 100 * x2[1] + 7
    second = algo.adaptation_curve(params, dm.tasks.TaskBatch(x2, y, x2, y), 1)[0]
    torch.testing.assert_close(first, second, rtol=1e-12, atol=1e-12)


def test_float32_loop_and_vmap_agree():
    torch.manual_seed(0)
    model = dm.models.MLP(1, (40, 40), 1)
    batch = dm.tasks.Sinusoid(10, 10).sample(0, 0, range(8))
    grads = []
    for execution in ("loop", "vmap"):
        algo = dm.algorithms.MAML(model, F.mse_loss, 0.01, 1, execution=execution)
        grads.append(algo.meta_gradient(algo.init_params(), batch)[0])
    _assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_gradient_dtype_follows_params():
    model = _mlp()
    algo = dm.algorithms.MAML(model, F.mse_loss)
    g, _ = algo.meta_gradient(algo.init_params(), _sinusoid_batch())
    assert all(v.dtype == torch.float64 for v in g.values())


def test_adapt_runs_the_inner_loop_of_one_task():
    model, batch = _mlp(), _sinusoid_batch(tasks=1)
    algo = dm.algorithms.MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=3)
    params = algo.init_params()
    sx, sy, _, _ = batch.task(0)
    task_params = algo.adapt(params, sx, sy)
    assert set(task_params) == {n for n, _ in model.named_parameters()}
    before = F.mse_loss(torch.func.functional_call(model, params, (sx,)), sy)
    after = F.mse_loss(torch.func.functional_call(model, task_params, (sx,)), sy)
    assert after < before
    leaf = {k: v.clone().requires_grad_() for k, v in params.items()}
    from reference import unrolled_adapt

    expected = unrolled_adapt(
        mlp_forward, F.mse_loss, leaf, sx, sy, 3, dict.fromkeys(leaf, 0.05), False
    )
    _assert_close(task_params, {k: v.detach() for k, v in expected.items()})


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_adapt_scored_is_adapt_with_the_loss_before_adapting(conv, steps):
    """The loss of the unadapted weights, taken from the first inner step's forward pass,
    equals to the bit that of running the model again (the Conv4 has batch norm); with no
    step it is computed anyway. A learned rule's rates are not model weights."""
    if conv:
        model, batch = _conv4_batch(tasks=1)
        algo = dm.algorithms.MAML(model, F.cross_entropy, inner_lr=0.4, inner_steps=2)
    else:
        model, batch = _mlp(), _sinusoid_batch(tasks=1)
        rule = dm.algorithms.MetaSGDRule(0.05)
        algo = dm.algorithms.MAML(model, F.mse_loss, inner_rule=rule, inner_steps=2)
    params = algo.init_params()
    sx, sy, _, _ = batch.task(0)
    weights, start_loss = algo.adapt_scored(params, sx, sy, steps)
    _assert_close(weights, algo.adapt(params, sx, sy, steps), rtol=0, atol=0)
    start = algo.model_params(params)
    with torch.no_grad():
        assert start_loss == float(algo.loss_fn(algo.forward(start, sx), sy))


def _conv4_batch(tasks=5, shots=2, queries=3):
    torch.manual_seed(0)
    model = dm.models.Conv4(in_channels=1, out_features=3, hidden=4, image_size=16).double()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(
        tasks, 3 * (shots + queries), 1, 16, 16, dtype=torch.float64, generator=generator
    )
    labels = torch.arange(3).repeat(shots + queries).expand(tasks, -1)
    split = 3 * shots
    batch = dm.tasks.TaskBatch(
        images[:, :split], labels[:, :split], images[:, split:], labels[:, split:]
    )
    return model, batch


@pytest.mark.parametrize("rule", [None, "metasgd"])
@pytest.mark.parametrize("name", ["MAML", "Reptile"])
def test_task_threads_give_the_one_at_a_time_result_bit_for_bit(name, rule):
    """Threads each take whole tasks with single-threaded operations, and the results are
    summed in task order: the serial loop with single-threaded operations, bit for bit."""
    model, batch = _conv4_batch()

    def make(threads):
        inner = {"inner_rule": dm.algorithms.MetaSGDRule(0.3)} if rule else {"inner_lr": 0.3}
        return getattr(dm.algorithms, name)(
            model, F.cross_entropy, inner_steps=2, execution="loop", task_threads=threads, **inner
        )

    serial, threaded = make(1), make(3)
    params = serial.init_params()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected, expected_metrics = serial.meta_gradient(params, batch)
        expected_curve = serial.adaptation_curve(params, batch, 3)
        torch.set_num_threads(2)  # the threaded run must set 1 itself, and restore 2
        g, metrics = threaded.meta_gradient(params, batch)
        curve = threaded.adaptation_curve(params, batch, 3)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    for key in expected:
        assert torch.equal(g[key], expected[key]), key
    assert metrics == expected_metrics
    assert torch.equal(curve, expected_curve)


def test_task_threads_each_run_tasks_on_their_own_model():
    model, batch = _conv4_batch(tasks=8)
    calls, caller, helper_ran = [], threading.get_ident(), threading.Event()

    def record(module, args):
        calls.append((threading.get_ident(), id(module)))
        if threading.get_ident() == caller:
            helper_ran.wait(timeout=30)  # so that the helper gets tasks on a busy machine
        else:
            helper_ran.set()

    model.register_forward_pre_hook(record)
    algo = dm.algorithms.MAML(model, F.cross_entropy, 0.3, 1, execution="loop", task_threads=2)
    algo.meta_gradient(algo.init_params(), batch)
    models_of = {}
    for thread, module in calls:
        models_of.setdefault(thread, set()).add(module)
    assert caller in models_of  # the calling thread computes tasks too
    assert len(models_of) == 2
    # The calling thread uses the model, the helper its copy: functional_call swaps a
    # module's parameters, so two threads must never share one.
    assert models_of[caller] == {id(model)}
    assert all(len(modules) == 1 for modules in models_of.values())
    assert len(set.union(*models_of.values())) == 2


def test_a_failing_task_among_threads_is_named_and_threads_are_restored():
    model, batch = _conv4_batch(tasks=5)
    bad = batch.query_y.clone()
    bad[3, 0] = 9  # a class the 3-way head does not have: cross_entropy raises in a thread
    batch = dm.tasks.TaskBatch(
        batch.support_x, batch.support_y, batch.query_x, bad, [(7, 2, i) for i in range(5)]
    )
    algo = dm.algorithms.MAML(model, F.cross_entropy, 0.3, 1, execution="loop", task_threads=2)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(TaskFailedError, match=r"\(7, 2, 3\).*out of bounds"):
            algo.meta_gradient(algo.init_params(), batch)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_after_a_failing_task_a_helper_starts_no_new_task():
    calls = []

    def task(index):
        calls.append(index)
        if index == 0:
            raise RuntimeError("task 0 fails")
        return index

    queue = _TaskQueue(task, 10)
    queue.work()  # as a helper thread does, here on the calling thread
    assert calls == [0]
    with pytest.raises(RuntimeError, match="task 0 fails"):
        list(queue.results())


def test_task_threads_follow_torch_threads_on_cpu_and_are_one_on_cuda():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert choose_task_threads(torch.device("cpu"), 32) == 2
        assert choose_task_threads(torch.device("cpu"), 1) == 1
    finally:
        torch.set_num_threads(previous)
    assert choose_task_threads(torch.device("cuda"), 32) == 1
    with pytest.raises(ValueError, match="task_threads"):
        dm.algorithms.MAML(_mlp(), F.mse_loss, task_threads=0)


def test_non_finite_loss_names_the_task():
    model, batch = _mlp(), _sinusoid_batch(tasks=3, step=5)
    bad = batch.query_y.clone()
    bad[1, 0] = float("nan")
    batch = dm.tasks.TaskBatch(batch.support_x, batch.support_y, batch.query_x, bad, batch.ids)
    algo = dm.algorithms.MAML(model, F.mse_loss)
    with pytest.raises(TaskFailedError, match=r"\(11, 5, 1\)"):
        algo.meta_gradient(algo.init_params(), batch)


def test_wrong_params_are_refused_with_the_missing_keys():
    algo = dm.algorithms.MAML(_mlp(), F.mse_loss)
    params = algo.init_params()
    params.pop("net.0.bias")
    with pytest.raises(ValueError, match="net.0.bias"):
        algo.meta_gradient(params, _sinusoid_batch())


def test_bad_constructor_arguments_are_refused_early():
    with pytest.raises(TypeError, match="nn.Module"):
        dm.algorithms.MAML(object(), F.mse_loss)
    with pytest.raises(ValueError, match="inner learning rate"):
        dm.algorithms.MAML(_mlp(), F.mse_loss, inner_lr=-1.0)
    with pytest.raises(ValueError, match="inner_steps"):
        dm.algorithms.Reptile(_mlp(), F.mse_loss, inner_steps=0)


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_reptile_with_learned_rates_moves_weights_by_reptile_and_rates_by_the_query_loss(
    execution,
):
    """Reptile's direction for the weights; the rates, which have no Reptile direction, get
    the gradient of the query loss through the inner loop (the one MAML gives them too)."""
    model, batch = _mlp(), _sinusoid_batch()
    rule = dm.algorithms.MetaSGDRule(0.05)
    algo = dm.algorithms.Reptile(
        model, F.mse_loss, inner_rule=rule, inner_steps=2, execution=execution
    )
    params = algo.init_params()
    params = {
        k: (v * (1 + 0.5 * torch.rand_like(v)) if k.startswith("inner_lr.") else v)
        for k, v in params.items()
    }
    names = [n for n, _ in model.named_parameters()]
    weights = {n: params[n] for n in names}
    rates = {n: params[f"inner_lr.{n}"] for n in names}
    g, _ = algo.meta_gradient(params, batch)
    maml = metasgd_reference(mlp_forward, F.mse_loss, weights, rates, batch, 2)
    learned = [name for name in maml if name.startswith("inner_lr.")]
    _assert_close({k: g[k] for k in learned}, {k: maml[k] for k in learned})
    adapted = []
    for index in range(len(batch)):
        sx, sy, _, _ = batch.task(index)
        adapted.append(algo.adapt(params, sx, sy))
    direction = {n: weights[n] - torch.stack([a[n] for a in adapted]).mean(0) for n in names}
    _assert_close({n: g[n] for n in names}, direction)


class _CopyWatchingMLP(dm.models.MLP):
    """An MLP that records, for every deep copy of it, the thread that made it and whether a
    ``functional_call`` (any forward) was running meanwhile."""

    def __init__(self, *args):
        super().__init__(*args)
        self.copies: list[tuple[int, bool]] = []
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        try:
            return super().forward(x)
        finally:
            self.forwards -= 1

    def __deepcopy__(self, memo):
        self.copies.append((threading.get_ident(), self.forwards > 0))
        clone = _CopyWatchingMLP.__new__(_CopyWatchingMLP)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            setattr(clone, key, value if key == "copies" else copy.deepcopy(value, memo))
        return clone


def test_helper_models_are_copied_before_any_task_starts_on_the_calling_thread():
    """A helper that copied the model while the calling thread was inside functional_call
    would copy the adapted (non-leaf) tensors swapped into it, and die: helpers must never
    copy it themselves. Two calls, so that replicas made once serve again."""
    torch.manual_seed(0)
    model = _CopyWatchingMLP(1, (8,), 1).double()
    algo = dm.algorithms.MAML(model, F.mse_loss, 0.1, 1, execution="loop", task_threads=3)
    batch = _sinusoid_batch(tasks=6)
    expected = dm.algorithms.MAML(model, F.mse_loss, 0.1, 1, execution="loop", task_threads=1)
    for _ in range(2):
        g, _ = algo.meta_gradient(algo.init_params(), batch)
    assert model.copies == [(threading.get_ident(), False)] * 2  # two helpers, copied once
    reference, _ = expected.meta_gradient(expected.init_params(), batch)
    _assert_close(g, reference)


def test_a_helper_computes_tasks_while_the_calling_thread_is_inside_functional_call():
    """The interleaving of the race, forced: the calling thread holds its first task inside
    the query forward (adapted, non-leaf weights swapped into the model) until a helper has
    finished a forward of its own, and the helper starts no forward before the calling thread
    is held there (else, on a busy machine, the helper could take every task first)."""
    torch.manual_seed(0)
    model = dm.models.MLP(1, (8,), 1).double()
    caller, caller_inside, helper_done = threading.get_ident(), threading.Event(), threading.Event()
    held, waited = [], []

    def hold(module, args):
        adapted = any(not p.is_leaf for p in module.parameters())
        if threading.get_ident() == caller:
            if adapted and not held:
                caller_inside.set()
                held.append(helper_done.wait(timeout=20))
        elif not waited:
            waited.append(caller_inside.wait(timeout=20))

    def done(module, args, output):
        if threading.get_ident() != caller:
            helper_done.set()

    model.register_forward_pre_hook(hold)
    model.register_forward_hook(done)
    algo = dm.algorithms.MAML(model, F.mse_loss, 0.1, 1, execution="loop", task_threads=2)
    algo.meta_gradient(algo.init_params(), _sinusoid_batch(tasks=4))
    assert held == [True]
    assert waited == [True]


def test_choose_execution_vectorises_dense_models_and_loops_convolutions_on_a_cpu():
    mlp, (conv, _) = _mlp(), _conv4_batch()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dm.algorithms.choose_execution(mlp, cpu) == "vmap"
    assert dm.algorithms.choose_execution(conv, cpu) == "loop"
    assert dm.algorithms.choose_execution(mlp, cuda) == "vmap"
    assert dm.algorithms.choose_execution(conv, cuda) == "vmap"


@pytest.mark.parametrize("chunk", [None, 2, 3])
def test_vmap_chunk_size_sets_the_tasks_per_vectorised_call(chunk, monkeypatch):
    """``None`` vectorises all tasks in one call; a chunk size splits them, same gradient."""
    import distmeta.algorithms.base as base

    seen = []

    def recording_vmap(fn, *args, chunk_size=None, **kwargs):
        seen.append(chunk_size)
        return torch.func.vmap(fn, *args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(base, "vmap", recording_vmap)
    model, batch = _mlp(), _sinusoid_batch(tasks=5)
    algo = dm.algorithms.MAML(model, F.mse_loss, 0.1, 2, execution="vmap", vmap_chunk_size=chunk)
    g, _ = algo.meta_gradient(algo.init_params(), batch)
    assert seen == [chunk]
    _assert_close(g, maml_reference(mlp_forward, F.mse_loss, algo.init_params(), batch, 2, 0.1))


@pytest.mark.parametrize("rule", [None, "metasgd"])
def test_compiled_meta_gradient_equals_eager_within_float_rounding(rule):
    """``algorithm.compile: true`` (the sinusoid configs): the compiled vectorised batch gives
    the eager meta-gradient to float32 rounding, not bit for bit."""
    torch.manual_seed(0)
    model = dm.models.MLP(1, (40, 40), 1)
    batch = dm.tasks.Sinusoid(10, 40).sample(0, 0, range(25))
    inner = {"inner_rule": dm.algorithms.MetaSGDRule(0.01)} if rule else {"inner_lr": 0.01}
    eager, compiled = (
        dm.algorithms.MAML(model, F.mse_loss, execution="vmap", compile=flag, **inner)
        for flag in (False, True)
    )
    params = eager.init_params()
    expected, expected_metrics = eager.meta_gradient(params, batch)
    g, metrics = compiled.meta_gradient(params, batch)
    _assert_close(g, expected, rtol=1e-4, atol=1e-6)
    assert metrics["loss"] == pytest.approx(expected_metrics["loss"], rel=1e-5)


def test_inner_lr_replaces_the_rate_of_plain_sgd_only():
    model, batch = _mlp(), _sinusoid_batch(tasks=1)
    sx, sy, _, _ = batch.task(0)
    slow = dm.algorithms.MAML(model, F.mse_loss, inner_lr=0.01)
    fast = dm.algorithms.MAML(model, F.mse_loss, inner_lr=0.05)
    params = slow.init_params()
    _assert_close(slow.adapt(params, sx, sy, 2, inner_lr=0.05), fast.adapt(params, sx, sy, 2))
    learned = dm.algorithms.MAML(model, F.mse_loss, inner_rule=dm.algorithms.MetaSGDRule(0.01))
    with pytest.raises(ValueError, match="learns its own"):
        learned.adapt(learned.init_params(), sx, sy, inner_lr=0.05)
    with pytest.raises(ValueError, match="not both"):
        dm.algorithms.MAML(model, F.mse_loss, 0.01, inner_rule=dm.algorithms.SGDRule(0.01))
