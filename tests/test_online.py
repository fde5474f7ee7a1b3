"""Online learners on streams: the prequential protocol, C-MAML's switch test and modulated
meta-updates, FTML's buffer, the baselines, and learners that carry on from a saved state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distmeta as dm
from distmeta.algorithms import MAML, Joint, MetaSGDRule
from distmeta.algorithms.online import (
    CMAML,
    FTML,
    FrozenMeta,
    NoAdaptation,
    OnlineTraining,
    OnlineUpdate,
    prequential_step,
)
from distmeta.algorithms.online.method import adapted_afresh, loss_of
from distmeta.config import parse_config
from distmeta.engine.fleet import run_chunk
from distmeta.experiment import (
    OnlineStart,
    build_algorithm,
    build_learners,
    build_online_algorithm,
    build_stream,
)
from distmeta.tasks import SinusoidStream, StreamBatch, SwitchingProcess, TaskBatch

LR = 0.3


def _linear_algorithm(**options) -> MAML:
    """A linear model y = w x + b whose inner loop (SGD at 0.3) fits a slope in a few steps."""
    return MAML(dm.models.MLP(1, (), 1), F.mse_loss, inner_lr=LR, execution="loop", **options)


def _zero(algorithm) -> dict[str, torch.Tensor]:
    return {name: torch.zeros_like(p) for name, p in algorithm.init_params().items()}


def _slopes(slopes: list[float], seed: int = 0, noise: float = 0.0) -> list[StreamBatch]:
    """A scripted stream: step t is 10 points of y = slopes[t] * x (plus Gaussian noise of
    standard deviation ``noise``), x uniform in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for step, slope in enumerate(slopes):
        x = torch.rand(10, 1, generator=generator) * 2 - 1
        y = slope * x
        if noise:  # drawn only then: the noiseless streams keep their points
            y = y + noise * torch.randn(10, 1, generator=generator)
        switch = step > 0 and slope != slopes[step - 1]
        batches.append(StreamBatch(step, x, y, 0, switch, 0))
    return batches


# --- the prequential protocol -------------------------------------------------------------


class Peeker:
    """Would score perfectly if it could peek: predicts the labels it has been shown for the
    same inputs, else zeros."""

    meta_learned = False
    told_switches = False

    def __init__(self) -> None:
        self.memory: dict[bytes, torch.Tensor] = {}

    def predict(self, meta, x):
        return self.memory.get(x.numpy().tobytes(), torch.zeros(x.shape[0], 1))

    def observe(self, meta, x, y, switch=None):
        self.memory[x.numpy().tobytes()] = y.clone()
        return OnlineUpdate()

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_evaluator_never_shows_a_label_before_the_prediction():
    stream = SinusoidStream(SwitchingProcess(0.9, (0.5, 0.25, 0.25)), 0, 0, 30)
    peeker = Peeker()
    record, _ = run_chunk(stream, {"peeker": peeker}, {}, 0, 30, 0, 0)
    for step in range(30):
        batch = stream.batch(step)
        blind = float(F.mse_loss(torch.zeros_like(batch.y), batch.y))
        assert record.loss["peeker"][step] == pytest.approx(blind)  # scored blind
        assert float(F.mse_loss(peeker.predict(None, batch.x), batch.y)) == 0.0  # it now knows


def test_a_step_scores_every_learner_and_passes_the_switch_to_the_oracle_only():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    learners = {
        "method": CMAML(algorithm, gamma=1e9, lambda_=1.0),
        "oracle": CMAML(algorithm, gamma=1e9, lambda_=1.0, told_switches=True),
    }
    batches = _slopes([1.0, 1.0, -3.0])
    metas = {"method": meta, "oracle": meta}
    for batch in batches:
        scores, gradients = prequential_step(learners, metas, batch, F.mse_loss)
    assert scores["oracle"].detected_switch is True and scores["method"].detected_switch is False
    assert "method" in gradients and "oracle" not in gradients  # no meta-update at a switch
    assert scores["method"].accuracy is None


# --- C-MAML ---------------------------------------------------------------------------------


def test_cmaml_detects_the_one_switch_of_a_stream():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    learner = CMAML(algorithm, gamma=1.0, lambda_=1.0)
    detected = []
    for batch in _slopes([1.0] * 20 + [-3.0] * 20):
        learner.predict(meta, batch.x)
        detected.append(learner.observe(meta, batch.x, batch.y).detected_switch)
    assert detected[20] is True
    assert not any(detected[:20]) and not any(detected[21:])


def test_cmaml_restarts_fast_weights_that_diverged_without_a_meta_update():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    learner = CMAML(algorithm, gamma=1e9, lambda_=1.0)
    first, second = _slopes([1.0, 1.0])
    learner.observe(meta, first.x, first.y)
    learner.fast = {name: torch.full_like(p, math.nan) for name, p in learner.fast.items()}
    update = learner.observe(meta, second.x, second.y)
    assert update.gradient is None and update.detected_switch is True
    for name, value in algorithm.adapt(meta, second.x, second.y).items():
        torch.testing.assert_close(learner.fast[name], value)


def test_cmaml_meta_update_is_the_maml_gradient_of_the_last_two_batches_modulated():
    algorithm = _linear_algorithm()
    meta = {name: p + 0.1 for name, p in _zero(algorithm).items()}
    learner = CMAML(algorithm, gamma=1e9, lambda_=0.7, prolonged=False)
    first, second = _slopes([2.0, 2.0])
    learner.observe(meta, first.x, first.y)
    loss = float(F.mse_loss(learner.predict(meta, second.x), second.y))
    update = learner.observe(meta, second.x, second.y)
    expected, _ = algorithm.meta_gradient(
        meta, TaskBatch(first.x[None], first.y[None], second.x[None], second.y[None])
    )
    weight = 1 - math.exp(-0.7 * loss)
    for name in expected:
        torch.testing.assert_close(update.gradient[name], weight * expected[name])
    assert update.detected_switch is False


def test_cmaml_prolonged_adaptation_keeps_adapting_and_fresh_restarts_each_step():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.5] * 4)
    prolonged = CMAML(algorithm, gamma=1e9, lambda_=1.0, prolonged=True)
    fresh = CMAML(algorithm, gamma=1e9, lambda_=1.0, prolonged=False)
    expected = None
    for batch in batches:
        prolonged.observe(meta, batch.x, batch.y)
        fresh.observe(meta, batch.x, batch.y)
        expected = (
            algorithm.adapt(meta, batch.x, batch.y)
            if expected is None
            else algorithm.adapt_further(meta, expected, batch.x, batch.y)
        )
        for name in expected:
            torch.testing.assert_close(prolonged.fast[name], expected[name])
    last = batches[-1]
    one_step = algorithm.adapt(meta, last.x, last.y)
    for name in one_step:
        torch.testing.assert_close(fresh.fast[name], one_step[name])


@pytest.mark.parametrize(("prolong_steps", "adam_steps"), [(None, 3), (7, 7)])
def test_cmaml_prolongs_with_adam_at_prolong_lr_from_a_fresh_state_each_batch(
    prolong_steps, adam_steps
):
    """With ``prolong_lr`` the fast weights go on by Adam's steps (``prolong_steps`` of them,
    or as many as the inner loop's) on each batch of the task, each batch from a fresh Adam
    state: the reference is ``torch.optim.Adam`` on an ``nn.Linear`` holding the same
    weights, at a rate where every step lowers the loss (the next test has steps that
    overshoot). The first batch and the restarts are still the inner loop's three steps."""
    algorithm = _linear_algorithm(inner_steps=3)
    meta = _zero(algorithm)
    learner = CMAML(algorithm, gamma=1e9, lambda_=1.0, prolong_lr=0.02, prolong_steps=prolong_steps)
    reference = torch.nn.Linear(1, 1)
    for step, batch in enumerate(_slopes([1.5] * 4)):
        learner.observe(meta, batch.x, batch.y)
        if step == 0:
            expected = algorithm.adapt(meta, batch.x, batch.y)
            with torch.no_grad():
                reference.weight.copy_(expected["net.0.weight"])
                reference.bias.copy_(expected["net.0.bias"])
        else:
            adam = torch.optim.Adam(reference.parameters(), lr=0.02)
            losses = []
            for _ in range(adam_steps):
                adam.zero_grad()
                loss = F.mse_loss(reference(batch.x), batch.y)
                losses.append(float(loss))
                loss.backward()
                adam.step()
            assert losses == sorted(losses, reverse=True)  # every step descends: the last is best
        torch.testing.assert_close(learner.fast["net.0.weight"], reference.weight.detach())
        torch.testing.assert_close(learner.fast["net.0.bias"], reference.bias.detach())
    with pytest.raises(ValueError, match="prolong_lr"):
        CMAML(algorithm, gamma=1.0, lambda_=1.0, prolong_lr=0.0)
    with pytest.raises(ValueError, match="prolong_steps"):
        CMAML(algorithm, gamma=1.0, lambda_=1.0, prolong_steps=0)


def test_cmaml_prolonged_adam_keeps_its_best_iterate_where_later_steps_overshoot():
    """Adam at a rate too large for the batch (0.5 on a slope the fast weights nearly fit):
    its loss falls for four steps and rises over the last two. The fast weights are the
    iterate after the fourth step, the one of all seven (the start included) that fits the
    batch best, not the last one (which the code before kept: it fits better than the start)."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    first, second = _slopes([1.5, 1.5])
    learner = CMAML(algorithm, gamma=1e9, lambda_=1.0, prolong_lr=0.5, prolong_steps=6)
    learner.observe(meta, first.x, first.y)
    reference = torch.nn.Linear(1, 1)
    with torch.no_grad():
        reference.weight.copy_(learner.fast["net.0.weight"])
        reference.bias.copy_(learner.fast["net.0.bias"])
    adam = torch.optim.Adam(reference.parameters(), lr=0.5)
    iterates, losses = [], []
    for step in range(7):
        iterates.append([p.detach().clone() for p in (reference.weight, reference.bias)])
        losses.append(float(F.mse_loss(reference(second.x), second.y)))
        if step < 6:
            adam.zero_grad()
            F.mse_loss(reference(second.x), second.y).backward()
            adam.step()
    best = min(range(7), key=losses.__getitem__)
    assert best == 4 and losses[6] > 10 * losses[4]
    learner.observe(meta, second.x, second.y)
    torch.testing.assert_close(learner.fast["net.0.weight"], iterates[best][0])
    torch.testing.assert_close(learner.fast["net.0.bias"], iterates[best][1])


@pytest.mark.parametrize("prolonged", [True, False])
def test_cmaml_with_memory_adapts_on_the_current_tasks_latest_batches_together(prolonged):
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.5] * 5 + [-2.0] * 3)
    learner = CMAML(algorithm, gamma=1.0, lambda_=1.0, prolonged=prolonged, memory=3)
    expected = None
    for step, batch in enumerate(batches):
        update = learner.observe(meta, batch.x, batch.y)
        if step in (0, 5):  # the first batch and the detected switch: adapted afresh
            assert update.detected_switch is (step == 5)
            expected = algorithm.adapt(meta, batch.x, batch.y)
            task_start = step
        else:
            window = batches[max(task_start, step - 2) : step + 1]
            support_x = torch.cat([b.x for b in window])
            support_y = torch.cat([b.y for b in window])
            expected = (
                algorithm.adapt_further(meta, expected, support_x, support_y)
                if prolonged
                else algorithm.adapt(meta, support_x, support_y)
            )
        for name in expected:
            torch.testing.assert_close(learner.fast[name], expected[name])
    assert len(learner.recent) == 3  # batches 5-7: nothing of the task before the switch
    with pytest.raises(ValueError, match="memory"):
        CMAML(algorithm, gamma=1.0, lambda_=1.0, memory=0)


def test_cmaml_rejects_prolonged_steps_that_overshoot():
    """Fast weights in a steep region (a large output weight): the inner rate overshoots
    there, so going on would diverge. The steps are rejected; the fast weights before them
    fit the batch better than an adaptation afresh from the meta-parameters, so they stay,
    until the fresh adaptation fits better."""
    algorithm = MAML(dm.models.MLP(1, (1,), 1), F.mse_loss, inner_lr=0.05, execution="loop")
    meta = {name: torch.full_like(p, 0.5) for name, p in algorithm.init_params().items()}
    first, second = (
        StreamBatch(step, x, 2 * x, 0, False, 0)
        for step, x in enumerate(torch.linspace(0.5, 2.5, 20).reshape(2, 10, 1))
    )
    learner = CMAML(algorithm, gamma=1e9, lambda_=1.0)
    learner.observe(meta, first.x, first.y)
    steep = {
        "net.0.weight": torch.full((1, 1), 0.1),
        "net.0.bias": torch.full((1,), 0.05),
        "net.2.weight": torch.full((1, 1), 10.0),
        "net.2.bias": torch.full((1,), 0.5),
    }
    learner.fast = steep
    overshot = algorithm.adapt_further(meta, steep, second.x, second.y)
    assert F.mse_loss(algorithm.forward(overshot, second.x), second.y) > 100 * F.mse_loss(
        algorithm.forward(steep, second.x), second.y
    )
    learner.observe(meta, second.x, second.y)
    assert learner.fast is steep
    learner.fast = {**steep, "net.2.bias": torch.full((1,), -3.0)}  # steep and far off
    learner.observe(meta, second.x, second.y)
    for name, value in algorithm.adapt(meta, second.x, second.y).items():
        torch.testing.assert_close(learner.fast[name], value)


@pytest.mark.parametrize("told_switches", [False, True])
def test_cmaml_restarts_from_the_unadapted_start_where_adapting_afresh_diverges(told_switches):
    """A switch to a task far steeper than the inner rate suits (x up to 10 at SGD 0.3): the
    adaptation afresh from the meta-parameters diverges (NaN). The switch is still detected
    (a loss minus NaN is never above gamma), and the restart, told or detected, takes the
    meta-parameters' own weights, not the NaN ones."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    learner = CMAML(algorithm, gamma=1.0, lambda_=1.0, steps=200, told_switches=told_switches)
    first, second = _slopes([1.0, -3.0])
    steep_x = 10 * second.x
    assert not torch.isfinite(
        algorithm.adapt(meta, steep_x, -3 * steep_x, 200)["net.0.weight"]
    ).all()
    learner.observe(meta, first.x, first.y, switch=False if told_switches else None)
    update = learner.observe(meta, steep_x, -3 * steep_x, switch=True if told_switches else None)
    assert update.detected_switch is True and update.gradient is None
    for name, value in algorithm.model_params(meta).items():
        torch.testing.assert_close(learner.fast[name], value)


def test_cmaml_with_a_library_restarts_a_task_that_comes_back_where_its_last_visit_ended():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.5] * 5 + [-2.0] * 5 + [1.5] * 3)
    learner = CMAML(algorithm, gamma=1.0, lambda_=1.0, library=2)
    detected, fast = [], []
    for batch in batches[:10]:
        detected.append(learner.observe(meta, batch.x, batch.y).detected_switch)
        fast.append(learner.fast)
    assert detected[5] and not any(detected[:5] + detected[6:])
    assert len(learner.known) == 1 and learner.known[0] is fast[4]  # the first task's end
    for name, value in algorithm.adapt(meta, batches[5].x, batches[5].y).items():
        torch.testing.assert_close(fast[5][name], value)  # new: adapted afresh

    back = batches[10]
    old_task = algorithm.adapt_further(meta, fast[4], back.x, back.y)
    fit = {
        name: float(F.mse_loss(algorithm.forward(weights, back.x), back.y))
        for name, weights in (
            ("current", learner.fast),
            ("fresh", algorithm.adapt(meta, back.x, back.y)),
            ("known", old_task),
        )
    }
    # A threshold the fresh weights do not clear and the remembered task's do.
    assert fit["current"] - fit["fresh"] < fit["current"] - fit["known"]
    learner.gamma = fit["current"] - (fit["fresh"] + fit["known"]) / 2
    assert learner.observe(meta, back.x, back.y).detected_switch is True
    for name, value in old_task.items():
        torch.testing.assert_close(learner.fast[name], value)
    assert len(learner.known) == 1 and learner.known[0] is fast[9]  # the task just left

    plain = CMAML(algorithm, gamma=learner.gamma, lambda_=1.0)
    for batch in batches[:11]:
        plain.observe(meta, batch.x, batch.y)
    following = batches[11]
    assert F.mse_loss(learner.predict(meta, following.x), following.y) < F.mse_loss(
        plain.predict(meta, following.x), following.y
    )


def _mse(learner, meta, batch) -> float:
    return float(F.mse_loss(learner.predict(meta, batch.x), batch.y))


def test_cmaml_revising_finds_a_switch_its_test_missed_one_batch_late():
    """A threshold no switch clears: the test misses the switch at step 6. On the next
    batch the weights adapted on step 6 alone predict better than the fast weights, which
    also fitted the old task, so the switch is found there and the task's batches start at
    step 6; nothing is revised while a task holds."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.0] * 6 + [-1.0] * 6)
    learner = CMAML(algorithm, gamma=1e9, lambda_=1.0, steps=5, memory=4, revise=0.5)
    plain = CMAML(algorithm, gamma=1e9, lambda_=1.0, steps=5, memory=4)
    updates = []
    for batch in batches:
        updates.append(learner.observe(meta, batch.x, batch.y))
        plain.observe(meta, batch.x, batch.y)
        if len(updates) == 8:
            assert [x for x, _ in learner.recent] == [batches[6].x, batches[7].x]
    assert not any(update.detected_switch for update in updates)
    assert [update.revised_switch for update in updates] == [None] * 7 + [True] + [None] * 4
    following = _slopes([-1.0], seed=5)[0]
    assert _mse(learner, meta, following) < _mse(plain, meta, following) / 10
    with pytest.raises(ValueError, match="revise"):
        CMAML(algorithm, gamma=1.0, lambda_=1.0, revise=0.0)


def test_cmaml_jump_finds_a_switch_between_two_well_fitted_tasks_at_once():
    """Slope 1, then 2, with a little noise: on the new batch the fitted slope-1 weights lose
    0.16 and the weights adapted afresh on it 0.015, a difference under ``gamma``, which
    misses the switch. That loss is far above their level on the task (near the noise's
    0.0025), so ``jump`` declares the switch at once, and nowhere else."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.0] * 10 + [2.0] * 10, noise=0.05)
    learner = CMAML(algorithm, gamma=1.0, lambda_=1.0, steps=20, memory=3, jump=5.0)
    plain = CMAML(algorithm, gamma=1.0, lambda_=1.0, steps=20, memory=3)
    detected, plain_detected = [], []
    for batch in batches:
        detected.append(learner.observe(meta, batch.x, batch.y).detected_switch)
        plain_detected.append(plain.observe(meta, batch.x, batch.y).detected_switch)
    assert detected == [False] * 10 + [True] + [False] * 9
    assert not any(plain_detected)
    with pytest.raises(ValueError, match="jump"):
        CMAML(algorithm, gamma=1.0, lambda_=1.0, jump=1.0)


def test_cmaml_fitted_test_does_not_take_a_task_fitted_poorly_for_a_switch():
    """A task seen first on a narrow range (x in [0, 0.1]) is fitted poorly there, so its
    next batch (x in [0.9, 1]) is predicted badly: before they see it, the fast weights lose
    far more on it than weights adapted on it, and ``gamma``'s test declares a switch. With
    ``fitted_test`` the fast weights adapt on both batches first and fit the task: no
    switch. The real switch (slope 3 to -3) is found either way."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    generator = torch.Generator().manual_seed(0)

    def batch(step, low, high, slope):
        x = low + (high - low) * torch.rand(10, 1, generator=generator)
        return StreamBatch(step, x, slope * x, 0, False, 0)

    batches = [batch(0, 0, 0.1, 3.0), batch(1, 0.9, 1, 3.0), batch(2, 0, 1, 3.0)]
    batches.append(batch(3, 0, 1, -3.0))
    for fitted, expected in [(False, [False, True, False, True]), (True, [False] * 3 + [True])]:
        learner = CMAML(algorithm, 1.0, 1.0, steps=5, memory=2, fitted_test=fitted)
        assert [learner.observe(meta, b.x, b.y).detected_switch for b in batches] == expected


def test_cmaml_revising_withdraws_switches_declared_within_a_task():
    """A threshold every batch clears: each batch is declared a switch and restarts the
    fast weights from the meta-parameters. On the next batch the weights that went on with
    the task predict better, so each declaration is withdrawn. The library takes back the
    weights the withdrawn switch left there: the next declaration finds it empty and
    restarts afresh, not from a copy of the task that goes on."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.5] * 8)
    learner = CMAML(algorithm, gamma=-1e9, lambda_=1.0, steps=5, library=2, revise=0.5)
    updates = []
    for step, batch in enumerate(batches):
        went_on = learner.alternative.weights if step == 2 else None
        updates.append(learner.observe(meta, batch.x, batch.y))
        if step == 2:
            assert len(learner.known) == 1 and learner.known[0] is went_on
            for name, value in algorithm.adapt(meta, batch.x, batch.y, 5).items():
                torch.testing.assert_close(learner.fast[name], value)
    assert all(update.detected_switch for update in updates[1:])
    assert [update.revised_switch for update in updates] == [None, None] + [False] * 6


@pytest.mark.parametrize("library", [1, 2])
def test_cmaml_library_keeps_the_most_recently_used_tasks(library):
    """Three tasks, each new one fitted better afresh than from a remembered task: the
    library holds the last ``library`` tasks left."""
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    learner = CMAML(algorithm, gamma=0.5, lambda_=1.0, library=library)
    detected, ends = [], []
    for slope in (2.0, -2.0, 0.5):
        for batch in _slopes([slope] * 10, seed=len(ends)):
            detected.append(learner.observe(meta, batch.x, batch.y).detected_switch)
        ends.append(learner.fast)
    assert [step for step, found in enumerate(detected) if found] == [10, 20]
    assert [id(weights) for weights in learner.known] == [id(end) for end in ends[:2][-library:]]
    with pytest.raises(ValueError, match="library"):
        CMAML(algorithm, gamma=1.0, lambda_=1.0, library=-1)


def test_adapt_further_continues_the_inner_loop():
    algorithm = MAML(dm.models.MLP(1, (8,), 1), F.mse_loss, inner_rule=MetaSGDRule(0.05))
    params = algorithm.init_params()
    (batch,) = _slopes([0.5])
    two = algorithm.adapt(params, batch.x, batch.y, steps=2)
    one = algorithm.adapt(params, batch.x, batch.y, steps=1)
    for name, value in algorithm.adapt_further(params, one, batch.x, batch.y, steps=1).items():
        torch.testing.assert_close(value, two[name])
    with pytest.raises(ValueError, match="fast weights"):
        algorithm.adapt_further(params, params, batch.x, batch.y)


@pytest.mark.parametrize("overshoots", [False, True])
def test_adapted_afresh_runs_the_model_once_per_step_and_once_to_score(overshoots, monkeypatch):
    """Adapting afresh scores the adapted weights against the unadapted ones without running
    the model for the latter: the first inner step's forward pass has their loss. Where the
    rate overshoots, the unadapted weights come back with that loss."""
    algorithm = MAML(dm.models.MLP(1, (8,), 1), F.mse_loss, inner_lr=50.0 if overshoots else 0.05)
    meta = algorithm.init_params()
    (batch,) = _slopes([0.5])
    forward, calls = algorithm.forward, []
    monkeypatch.setattr(algorithm, "forward", lambda w, x: calls.append(x) or forward(w, x))
    afresh = adapted_afresh(algorithm, meta, batch.x, batch.y, 3)
    assert len(calls) == 3 + 1
    monkeypatch.undo()
    start_loss = loss_of(algorithm, meta, batch.x, batch.y)
    assert (afresh.loss == start_loss) is overshoots
    if overshoots:
        for name, value in afresh.weights.items():
            assert torch.equal(value, meta[name])
    else:
        assert afresh.loss < start_loss


# --- FTML -----------------------------------------------------------------------------------


def test_ftml_buffer_holds_the_recent_batches_of_the_recent_tasks():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    learner = FTML(
        algorithm,
        gamma=1.0,
        buffer_tasks=2,
        buffer_batches=3,
        meta_batch=2,
        rng=np.random.default_rng(0),
        told_switches=True,
    )
    slopes = [1.0] * 5 + [-2.0] * 2 + [3.0] * 4
    batches = _slopes(slopes)
    updates = [learner.observe(meta, b.x, b.y, b.switch) for b in batches]
    assert updates[0].gradient is None  # no task holds two batches yet
    assert all(u.gradient is not None for u in updates[1:])
    assert [u.detected_switch for u in updates] == [b.switch for b in batches]
    # The two most recent tasks, each with its three most recent batches (the same tensors).
    assert len(learner.tasks) == 2
    assert [x for x, _ in learner.tasks[0]] == [b.x for b in batches[5:7]]
    assert [x for x, _ in learner.tasks[1]] == [b.x for b in batches[8:11]]
    # The next batch is predicted by the meta-parameters adapted on the current task's data.
    support_x = torch.cat([b.x for b in batches[8:11]])
    support_y = torch.cat([b.y for b in batches[8:11]])
    expected = algorithm.adapt(meta, support_x, support_y)
    for name in expected:
        torch.testing.assert_close(learner.fast[name], expected[name])


def test_ftml_meta_update_is_the_meta_gradient_of_buffered_tasks_it_draws():
    algorithm = _linear_algorithm()
    meta = _zero(algorithm)
    batches = _slopes([1.0, 1.0, 1.0, -1.0, -1.0])
    learner = FTML(algorithm, 1.0, 10, 5, 3, np.random.default_rng(7), told_switches=True)
    for batch in batches[:-1]:
        learner.observe(meta, batch.x, batch.y, batch.switch)
    rng = np.random.default_rng(7)
    rng.bit_generator.state = learner.rng.bit_generator.state  # the draws it is about to make
    last = batches[-1]
    update = learner.observe(meta, last.x, last.y, last.switch)
    tasks = [batches[0:3], batches[3:5]]
    chosen = []
    for pick in rng.integers(2, size=3):
        support, query = rng.choice(len(tasks[pick]), size=2, replace=False)
        s, q = tasks[pick][support], tasks[pick][query]
        chosen.append((s.x, s.y, q.x, q.y))
    expected, _ = algorithm.meta_gradient(meta, TaskBatch.stack(chosen))
    for name in expected:
        torch.testing.assert_close(update.gradient[name], expected[name])


def test_ftml_refuses_a_buffer_that_cannot_hold_a_task():
    with pytest.raises(ValueError, match="support and a query"):
        FTML(_linear_algorithm(), 1.0, 4, 1, 2, np.random.default_rng(0))


# --- baselines ------------------------------------------------------------------------------


def test_baselines_do_what_their_names_say():
    algorithm = _linear_algorithm()
    start = {name: torch.full_like(p, 0.5) for name, p in algorithm.init_params().items()}
    first, second = _slopes([2.0, 2.0])
    fixed = NoAdaptation(algorithm, start)
    frozen = FrozenMeta(algorithm, start)
    trained = OnlineTraining(algorithm, start, lr=0.1, steps=5)
    before = float(F.mse_loss(trained.predict(None, first.x), first.y))
    for learner in (fixed, frozen, trained):
        assert learner.observe(None, first.x, first.y).gradient is None
    torch.testing.assert_close(fixed.predict(None, second.x), second.x * 0.5 + 0.5)
    adapted = algorithm.adapt(start, first.x, first.y)
    torch.testing.assert_close(frozen.predict(None, second.x), algorithm.forward(adapted, second.x))
    assert float(F.mse_loss(trained.predict(None, first.x), first.y)) < before
    assert torch.equal(start["net.0.weight"], torch.full((1, 1), 0.5))  # never written to


@pytest.mark.parametrize(("frozen_steps", "expected"), [(None, 4), (1, 1)])
def test_frozen_meta_takes_adapt_steps_unless_given_its_own(frozen_steps, expected):
    config = parse_config(
        {
            "task": {"name": "sinusoid", "shots": 10},
            "model": {"name": "mlp", "hidden": [8]},
            "stream": {"name": "sinusoid", "adapt_steps": 4, "frozen_steps": frozen_steps},
        }
    )
    stream = build_stream(config, 0)
    algorithm = build_online_algorithm(config, stream)
    params = algorithm.init_params()
    learners = build_learners(config, OnlineStart(config, params, params), stream, 0)
    first, second = stream.batch(0), stream.batch(1)
    learners["frozen_meta"].observe(None, first.x, first.y)
    adapted = algorithm.adapt(params, first.x, first.y, expected)
    torch.testing.assert_close(
        learners["frozen_meta"].predict(None, second.x), algorithm.forward(adapted, second.x)
    )
    assert learners["method"].steps == learners["oracle"].steps == 4


@pytest.mark.parametrize("kind", ["cmaml", "ftml", "finetune", "frozen_meta"])
def test_a_learner_goes_on_exactly_from_its_saved_state(kind):
    algorithm = _linear_algorithm()
    meta = {name: p + 0.2 for name, p in _zero(algorithm).items()}
    build = {
        "cmaml": lambda: CMAML(
            algorithm, 0.5, 1.0, memory=3, library=2, revise=0.9, jump=3.0, fitted_test=True
        ),
        "ftml": lambda: FTML(algorithm, 0.5, 4, 3, 2, np.random.default_rng(3)),
        "finetune": lambda: OnlineTraining(algorithm, meta, 0.05),
        "frozen_meta": lambda: FrozenMeta(algorithm, meta),
    }[kind]
    batches = _slopes([1.0] * 6 + [-1.0] * 6 + [1.0] * 4)  # the first task comes back
    original = build()
    for batch in batches[:7]:
        original.observe(meta, batch.x, batch.y)
    if kind == "cmaml":
        assert len(original.known) == 1  # the saved state holds a remembered task
    resumed = build()
    resumed.load_state_dict(original.state_dict())
    for batch in batches[7:]:
        torch.testing.assert_close(resumed.predict(meta, batch.x), original.predict(meta, batch.x))
        a, b = original.observe(meta, batch.x, batch.y), resumed.observe(meta, batch.x, batch.y)
        assert (a.detected_switch, a.revised_switch) == (b.detected_switch, b.revised_switch)
        assert (a.gradient is None) == (b.gradient is None)
        if a.gradient is not None:
            for name in a.gradient:
                torch.testing.assert_close(a.gradient[name], b.gradient[name])


# --- joint training -------------------------------------------------------------------------


@pytest.mark.parametrize("execution", ["loop", "vmap"])
def test_joint_training_fits_the_pooled_data_of_every_task(execution):
    model = dm.models.MLP(1, (8,), 1)
    algorithm = Joint(model, F.mse_loss, inner_rule=MetaSGDRule(0.01), execution=execution)
    params = algorithm.init_params()
    batch = dm.tasks.Sinusoid(5, 5).sample(0, 0, range(3))
    gradient, metrics = algorithm.meta_gradient(params, batch)
    weights = {n: p.clone().requires_grad_() for n, p in algorithm.model_params(params).items()}
    losses = []
    for i in range(3):
        sx, sy, qx, qy = batch.task(i)
        x, y = torch.cat([sx, qx]), torch.cat([sy, qy])
        losses.append(F.mse_loss(algorithm.forward(weights, x), y))
    total = torch.stack(losses).mean()
    expected = torch.autograd.grad(total, list(weights.values()))
    for (name, _), value in zip(weights.items(), expected, strict=True):
        torch.testing.assert_close(gradient[name], value)
    assert all(not gradient[name].any() for name in params if name.startswith("inner_lr."))
    assert metrics["loss"] == pytest.approx(float(total.detach()))


def test_joint_training_refuses_a_layer_held_at_zero():
    # A head at zero passes no gradient to the layers below it: nothing would ever train.
    with pytest.raises(ValueError, match=r"zero_init \[.net.2.weight.\]: joint training never"):
        Joint(dm.models.MLP(1, (8,), 1), F.mse_loss, zero_init=["net.2.weight"])


def test_a_joint_run_from_a_file_with_zero_init_learns_the_head():
    # The stream configs train both starting points from one file, whose MAML run holds the
    # classifier's head at zero: the joint run must learn it, or finetune starts untrained.
    config = parse_config(
        {"algorithm": {"name": "joint", "zero_init": ["net.2.weight", "net.2.bias"]}}
    )
    source = dm.tasks.Sinusoid(5, 5)
    model = dm.models.MLP(1, (8,), 1)
    algorithm = build_algorithm(config, model, source)
    assert algorithm.zero_init == ()
    gradient, _ = algorithm.meta_gradient(algorithm.init_params(), source.sample(0, 0, range(3)))
    assert gradient["net.2.weight"].abs().sum() > 0
    assert gradient["net.0.weight"].abs().sum() > 0
