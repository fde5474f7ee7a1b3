"""Streams: reproducible by seed, switching at rate 1 - alpha to modes drawn with their
probabilities, and each stream's tasks as its modes say (sinusoid, pendulum, images)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from imagesets import read_mark, synthetic_image_set
from scipy import stats

import distmeta as dm
from distmeta.config import parse_config
from distmeta.errors import ConfigError
from distmeta.experiment import build_stream, build_task_source
from distmeta.tasks import (
    DigitImages,
    FewShotImages,
    ImageStream,
    PendulumDynamics,
    PendulumSimulator,
    PendulumStream,
    Regime,
    SinusoidStream,
    StreamPlan,
    SwitchingProcess,
)

PROCESS = SwitchingProcess(0.9, (0.5, 0.25, 0.25))


# --- the switching process ----------------------------------------------------------------


def test_a_schedule_is_reproduced_by_its_seed_and_index_alone():
    first = PROCESS.schedule(seed=4, index=1, steps=500)
    again = PROCESS.schedule(seed=4, index=1, steps=500)
    assert all(np.array_equal(getattr(first, k), getattr(again, k)) for k in ("switch", "mode"))
    other_seed = PROCESS.schedule(seed=5, index=1, steps=500)
    other_index = PROCESS.schedule(seed=4, index=2, steps=500)
    assert not np.array_equal(first.switch, other_seed.switch)
    assert not np.array_equal(first.switch, other_index.switch)


@pytest.mark.parametrize("alpha", [0.9, 0.98])
def test_switches_occur_at_rate_one_minus_alpha(alpha):
    process = SwitchingProcess(alpha, (0.5, 0.25, 0.25))
    switches = sum(int(process.schedule(0, i, 5_000).switch[1:].sum()) for i in range(8))
    trials = 8 * 4_999
    # Two-sided exact binomial test: a wrong rate (alpha itself, or 1 - alpha off by 10 %)
    # would fail it at these sizes.
    assert stats.binomtest(switches, trials, 1 - alpha).pvalue > 1e-3
    assert abs(switches / trials - (1 - alpha)) < 0.15 * (1 - alpha)


def test_modes_are_drawn_with_their_probabilities():
    process = SwitchingProcess(0.8, (0.6, 0.3, 0.1))
    modes = np.concatenate(
        [process.schedule(1, i, 5_000).segment_modes[1:] for i in range(4)]
    )  # the first task is always in-distribution; the drawn ones follow
    counts = np.bincount(modes, minlength=3)
    expected = np.array([0.6, 0.3, 0.1]) * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_the_first_task_is_in_distribution_and_step_zero_is_no_switch():
    for index in range(20):
        schedule = PROCESS.schedule(2, index, 50)
        assert schedule.mode[0] == 0 and not schedule.switch[0]
        assert np.array_equal(schedule.starts, np.flatnonzero(np.r_[True, schedule.switch[1:]]))


def test_drift_restarts_at_every_switch():
    schedule = PROCESS.schedule(0, 0, 400)
    walk = SwitchingProcess.drift_walk(schedule, 0, 0, dims=2)
    assert np.all(walk[schedule.starts] == 0)
    inside = np.flatnonzero(~np.r_[True, schedule.switch[1:]])
    assert np.all(walk[inside] != 0)


@pytest.mark.parametrize(
    ("alpha", "probs", "match"),
    [(1.0, (0.5, 0.25, 0.25), "alpha"), (0.9, (0.5, 0.5, 0.5), "mode_probs")],
)
def test_bad_switching_settings_are_refused(alpha, probs, match):
    with pytest.raises(ValueError, match=match):
        SwitchingProcess(alpha, probs)


# --- sinusoid -----------------------------------------------------------------------------


def test_sinusoid_stream_modes_draw_from_their_ranges_and_noise_has_its_variance():
    stream = SinusoidStream(PROCESS, 0, 0, 3_000, noise_var=0.05)
    mode = stream.schedule.mode
    assert np.all((stream.amplitude[mode == 0] >= 0.1) & (stream.amplitude[mode == 0] <= 5))
    assert np.all((stream.amplitude[mode == 1] >= 5) & (stream.amplitude[mode == 1] <= 10))
    assert np.all(stream.frequency[mode != 2] == 1.0)
    assert np.all((stream.frequency[mode == 2] >= 1.5) & (stream.frequency[mode == 2] <= 2.5))
    residuals = []
    for step in range(0, 3_000, 7):
        batch = stream.batch(step)
        assert batch.x.shape == batch.y.shape == (10, 1)
        assert (batch.mode, batch.switch) == (mode[step], stream.schedule.switch[step])
        clean = stream.amplitude[step] * np.sin(
            stream.frequency[step] * batch.x.double().numpy() - stream.phase[step]
        )
        residuals.append((batch.y.double().numpy() - clean).flatten())
    variance = float(np.concatenate(residuals).var())
    assert variance == pytest.approx(0.05, rel=0.1)


def test_sinusoid_stream_holds_its_task_between_switches_without_drift_and_drifts_with_it():
    still = SinusoidStream(PROCESS, 1, 0, 300)
    drifting = SinusoidStream(PROCESS, 1, 0, 300, drift=0.01)
    for start, end in zip(still.schedule.starts, [*still.schedule.starts[1:], 300], strict=True):
        assert np.ptp(still.amplitude[start:end]) == 0
        assert np.ptp(still.phase[start:end]) == 0
    assert np.array_equal(
        drifting.amplitude[drifting.schedule.starts], still.amplitude[still.schedule.starts]
    )
    assert np.any(drifting.amplitude != still.amplitude)


def test_a_stream_step_is_rebuilt_from_its_name_alone():
    a = SinusoidStream(PROCESS, 3, 2, 100).batch(57)
    b = SinusoidStream(PROCESS, 3, 2, 100).batch(57)
    c = SinusoidStream(PROCESS, 3, 1, 100).batch(57)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    with pytest.raises(IndexError, match="outside"):
        SinusoidStream(PROCESS, 3, 2, 100).batch(100)


def test_stream_plan_gives_every_stream_one_worker_and_covers_the_steps():
    plan = StreamPlan(seed=0, streams=5, steps=23)
    groups = plan.assignment(workers=2)
    assert sorted(i for group in groups for i in group) == list(range(5))
    assert plan.assignment(workers=9) == [range(i, i + 1) for i in range(5)]
    chunks = plan.chunks(steps_per_call=10)
    assert chunks == [(0, 10), (10, 20), (20, 23)]
    with pytest.raises(ValueError, match="streams"):
        StreamPlan(0, 0, 10)


# --- pendulum -----------------------------------------------------------------------------


def _conserved(states: np.ndarray, regime: Regime, dt: float) -> np.ndarray:
    """The energy per unit inertia that gymnasium's step (semi-implicit Euler) conserves:
    ``w**2 / 2 + k cos(theta)`` with ``k = 3 g / (2 l)``, plus the scheme's first-order
    correction ``dt / 2 * w * k sin(theta)`` (its modified Hamiltonian)."""
    theta, speed = states[:, 0], states[:, 1]
    k = 1.5 * regime.gravity / regime.length
    return 0.5 * speed**2 + k * np.cos(theta) + 0.5 * dt * speed * k * np.sin(theta)


@pytest.mark.parametrize(
    "regime", [Regime(10.0, 1.0, 1.0), Regime(12.0, 0.5, 0.8), Regime(8.0, 2.0, 1.2)]
)
def test_without_damping_or_torque_the_pendulum_keeps_its_energy(regime):
    simulator = PendulumSimulator()
    states = simulator.states(regime, np.array([2.0, 0.5]), np.zeros(2_000))
    energy = _conserved(states, regime, simulator.env.dt)
    assert np.ptp(energy) / abs(energy.mean()) < 0.01  # over 100 s of swinging
    # The check can fail: the same states measured with another gravity drift by far more.
    wrong = _conserved(states, Regime(regime.gravity * 0.9, regime.mass, regime.length), 0.05)
    assert np.ptp(wrong) / abs(wrong.mean()) > 0.05


def test_pendulum_targets_are_the_change_of_state_and_torque_scales_with_the_gain():
    simulator = PendulumSimulator()
    env = simulator.env
    rng = np.random.default_rng(0)
    x, y = simulator.rollout(Regime(10.0, 1.0, 1.0, gain=-1.0), rng, 16)
    assert x.shape == (16, 4) and y.shape == (16, 2)
    # Consecutive transitions of one rollout: the next state is this one plus the change.
    theta = np.arctan2(x[:, 1], x[:, 0])
    speed = x[:, 2] * env.max_speed
    change = y * env.dt * env.max_speed
    assert np.allclose(np.cos(theta[:-1] + change[:-1, 0]), x[1:, 0], atol=1e-9)
    assert np.allclose(speed[:-1] + change[:-1, 1], speed[1:], atol=1e-9)
    # gymnasium's dynamics: dw = (3 g / (2 l) sin(theta) + 3 / (m l^2) * gain * u) * dt.
    torque = x[:, 3] * env.max_torque
    expected = 15.0 * np.sin(theta) + 3.0 * (-1.0) * torque
    unclipped = np.abs(speed + change[:, 1]) < env.max_speed
    assert np.allclose(change[unclipped, 1], expected[unclipped] * env.dt, atol=1e-6)


def test_pendulum_task_source_draws_regimes_from_its_ranges():
    source = PendulumDynamics(shots=8, query=12, gravity=(9.0, 9.5))
    batch = source.sample(0, 3, range(5))
    assert batch.support_x.shape == (5, 8, 4) and batch.query_y.shape == (5, 12, 2)
    assert torch.equal(source.sample(0, 3, [4]).query_y[0], batch.query_y[4])
    rng = dm.tasks.task_rng(0, 0, 0)
    for _ in range(20):
        regime = source.regime(rng)
        assert 9.0 <= regime.gravity <= 9.5 and 0.8 <= regime.mass <= 1.2 and regime.gain == 1


def test_pendulum_stream_regimes_come_back_and_each_mode_has_its_kind():
    stream = PendulumStream(SwitchingProcess(0.9, (0.5, 0.25, 0.25)), 0, 0, 2_000)
    inside, outside = stream.regimes[:4], stream.regimes[4:6]
    crippled = stream.regimes[6:]
    assert all(8 <= r.gravity <= 12 and r.gain == 1 for r in inside)
    assert all(14 <= r.gravity <= 18 and 1.5 <= r.mass <= 2.0 for r in outside)
    assert {r.gain for r in crippled} == {0.3, -1.0} and len(crippled) == 8
    segments = stream.task[stream.schedule.starts]
    modes = stream.schedule.segment_modes
    assert np.all(segments[modes == 0] < 4)
    assert np.all((segments[modes == 1] >= 4) & (segments[modes == 1] < 6))
    assert np.all(segments[modes == 2] >= 6)
    assert np.all(segments[1:] != segments[:-1])  # a switch changes the regime
    assert np.bincount(segments).max() > 2  # regimes come back
    batch = stream.batch(11)
    assert batch.x.shape == (16, 4) and batch.task == stream.task[11]


# --- images -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def marked_set(tmp_path_factory):
    """24 classes of 8 drawings in three alphabets, each image naming its class."""
    return synthetic_image_set(tmp_path_factory.mktemp("marked") / "set.arrow", 24, 8, size=6)


def _pools(path, ways=3, shots=2):
    options = dict(ways=ways, shots=shots, query=1, val_fraction=0.34, split_by="alphabet")
    train = FewShotImages(path, split="train", **options)
    val = FewShotImages(path, split="val", **options)
    return train, val, DigitImages((6, 6))


def _marks(x: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(class, drawer, quarter turns)`` of each marked image of ``x`` ``[n, 1, H, W]``."""
    pixels = (255 * x.permute(0, 2, 3, 1)).round().to(torch.uint8).numpy()
    return [read_mark(image) for image in pixels]


def test_images_of_draws_distinct_images_of_the_picked_classes(marked_set):
    pool = FewShotImages(marked_set, ways=3, shots=2, query=1, rotations=True)
    picks = np.array([5, 0, 17])
    x = pool.images_of(picks, np.random.default_rng(0), 4)
    assert x.shape == (12, 1, 6, 6)
    marks = _marks(x)
    per_pick = [marks[4 * i : 4 * i + 4] for i in range(3)]
    for pick, of_pick in zip(picks, per_pick, strict=True):
        assert len({m[0] for m in of_pick}) == 1  # one class
        assert {m[2] for m in of_pick} == {pick % 4}  # turned as its variant says
        assert len({m[1] for m in of_pick}) == 4  # distinct drawings
    assert len({(p[0][0], p[0][2]) for p in per_pick}) == 3
    again = pool.images_of(picks, np.random.default_rng(0), 4)
    assert torch.equal(x, again)
    with pytest.raises(ValueError, match="per_class"):
        pool.images_of(picks, np.random.default_rng(0), 9)
    with pytest.raises(ValueError, match="class numbers"):
        pool.images_of(np.array([pool.classes]), np.random.default_rng(0), 1)


def test_digits_are_sklearns_upsampled_with_ink_at_one():
    from sklearn.datasets import load_digits

    digits = DigitImages((28, 28))
    bunch = load_digits()
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(bunch.images / 16).float()[:, None], size=(28, 28), mode="bilinear"
    )
    assert digits.classes == 10 and torch.allclose(digits.images, expected.clamp(0, 1))
    assert digits.images.min() >= 0 and digits.images.max() == 1
    x = digits.images_of(np.array([7, 1]), np.random.default_rng(1), 3)
    sevens, ones = expected[bunch.target == 7], expected[bunch.target == 1]
    for image, pool in zip(x, [sevens] * 3 + [ones] * 3, strict=True):
        assert (pool == image).flatten(1).all(dim=1).any()


def test_image_stream_keeps_a_tasks_classes_until_a_switch(marked_set):
    train, val, digits = _pools(marked_set)
    stream = ImageStream(PROCESS, 0, 0, 80, (train, val, digits), ways=3, shots=2)
    assert stream.input_shape == (1, 6, 6) and stream.output_size == 3
    seen: dict[int, set] = {}
    by_mode: dict[int, set] = {0: set(), 1: set()}
    for step in range(80):
        batch = stream.batch(step)
        assert batch.x.shape == (6, 1, 6, 6)
        assert batch.y.tolist() == [0, 0, 1, 1, 2, 2]
        if batch.mode == 2:
            assert any(torch.equal(batch.x[0], image) for image in digits.images)
            continue
        marks = _marks(batch.x)
        classes = tuple((m[0], m[2]) for m in marks[::2])
        assert classes == tuple((m[0], m[2]) for m in marks[1::2])  # a label is one class
        seen.setdefault(batch.task, set()).add(classes)
        by_mode[batch.mode].update(c for c, _ in classes)
    assert all(len(classes) == 1 for classes in seen.values()), "classes changed mid-task"
    assert len({next(iter(c)) for c in seen.values()}) == len(seen)  # switches bring new ones
    # In-distribution classes come from the training alphabets, mode 1 from the held-out one.
    assert by_mode[0] and by_mode[1] and not by_mode[0] & by_mode[1]
    assert len({c % 3 for c in by_mode[1]}) == 1


@pytest.mark.parametrize("kind", ["sinusoid", "pendulum", "images"])
def test_every_kind_of_stream_is_reproduced_by_its_seed_and_index(kind, marked_set):
    def build(seed: int, index: int):
        if kind == "sinusoid":
            return SinusoidStream(PROCESS, seed, index, 60, drift=0.01)
        if kind == "pendulum":
            return PendulumStream(PROCESS, seed, index, 60, drift=0.01)
        return ImageStream(PROCESS, seed, index, 60, _pools(marked_set), ways=3, shots=2)

    first, again, other = build(7, 1), build(7, 1), build(7, 2)
    for step in (0, 31, 59):
        a, b = first.batch(step), again.batch(step)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert (a.mode, a.switch, a.task) == (b.mode, b.switch, b.task)
    assert any(not torch.equal(first.batch(t).x, other.batch(t).x) for t in (0, 31, 59))


def test_image_stream_refuses_pools_that_cannot_hold_its_tasks(marked_set):
    train, val, digits = _pools(marked_set)
    with pytest.raises(ValueError, match="too few"):
        ImageStream(PROCESS, 0, 0, 10, (train, val, digits), ways=11, shots=1)
    with pytest.raises(ValueError, match="differ in shape"):
        ImageStream(PROCESS, 0, 0, 10, (train, val, DigitImages((8, 8))), ways=3, shots=1)


# --- configs --------------------------------------------------------------------------------


def test_stream_configs_build_their_streams_and_pendulum_its_task_source(marked_set):
    sinusoid = parse_config({"stream": {"steps": 30, "lambda": 2.0}})
    assert sinusoid.stream.name == "sinusoid" and sinusoid.stream.lambda_ == 2.0
    assert isinstance(build_stream(sinusoid, 0, 1), SinusoidStream)
    pendulum = parse_config({"task": {"name": "pendulum"}, "stream": {"steps": 30}})
    assert isinstance(build_stream(pendulum, 0), PendulumStream)
    assert isinstance(build_task_source(pendulum), PendulumDynamics)
    images = parse_config(
        {
            "task": {
                "name": "fewshot",
                "path": str(marked_set),
                "ways": 3,
                "split_by": "alphabet",
                "val_fraction": 0.34,
            },
            "stream": {"steps": 30, "ways": 3, "shots": 2},
        }
    )
    stream = build_stream(images, 0)
    assert isinstance(stream, ImageStream) and stream.mode_names[2] == "ood_digits"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"task": {"name": "pendulum"}, "stream": {"name": "sinusoid"}}, "stream.name"),
        ({"stream": {"mode_probs": [0.5, 0.4, 0.4]}}, "mode_probs must sum to 1"),
        ({"stream": {"alpha": 1.0}}, "stream.alpha"),
        ({"stream": {"lambda": 0}}, "stream.lambda"),
        ({"stream": {"method": "ewc"}}, "stream.method"),
        ({"stream": {"method": "ftml", "memory": 5}}, "memory: 5 apply to method cmaml only"),
        ({"stream": {"method": "ftml", "library": 8}}, "library: 8 apply to method cmaml only"),
        ({"stream": {"method": "ftml", "revise": 0.5}}, "revise: 0.5 apply to method cmaml only"),
        ({"stream": {"library": -1}}, "stream.library"),
        ({"stream": {"revise": 0}}, "stream.revise"),
        ({"stream": {"method": "ftml", "jump": 8}}, "jump: 8.0 apply to method cmaml only"),
        ({"stream": {"jump": 1}}, "stream.jump"),
        ({"stream": {"method": "ftml", "fitted_test": True}}, "fitted_test: True apply to"),
        ({"stream": {"method": "ftml", "prolong_lr": 0.01}}, "prolong_lr: 0.01 apply to method"),
        ({"stream": {"prolonged": False, "prolong_lr": 0.01}}, "prolonged is false"),
        ({"stream": {"prolong_lr": 0}}, "stream.prolong_lr"),
        ({"stream": {"method": "ftml", "prolong_steps": 20}}, "prolong_steps: 20 apply to"),
        ({"stream": {"prolonged": False, "prolong_steps": 20}}, "step count of prolonged"),
        ({"stream": {"prolong_steps": 0}}, "stream.prolong_steps"),
        ({"stream": {"points": 10, "transitions": 16}}, "stream.transitions: unknown key"),
        ({"stream": {"ood_amplitude": [10, 5]}}, "ood_amplitude must be"),
        (
            {"task": {"name": "fewshot", "path": "x"}, "stream": {"drift": 0.1}},
            "no parameters to drift",
        ),
        ({"task": {"name": "fewshot", "path": "x"}, "stream": {"ways": 12}}, "digits mode has 10"),
        ({"task": {"name": "pendulum", "gravity": [12, 8]}}, "gravity must be"),
    ],
)
def test_bad_stream_configs_name_the_field(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_image_stream_of_colour_images_is_refused(tmp_path):
    from imagesets import marked_image

    from distmeta.data import ImageRows, write_image_set

    keys = [(c, d) for c in range(6) for d in range(4)]
    rows = ImageRows(
        alphabet=[f"a{c % 2}" for c, _ in keys],
        character=[f"c{c}" for c, _ in keys],
        drawer=[d + 1 for _, d in keys],
        file=[f"{c}/{d}.png" for c, d in keys],
        pixels=np.stack([np.repeat(marked_image(c, d, 6), 3, axis=2) for c, d in keys]),
    )
    path = tmp_path / "rgb.arrow"
    write_image_set(
        path,
        rows,
        dataset="synthetic",
        source="synthetic",
        source_sha256=None,
        content_sha256="0" * 64,
        invert=False,
        held_out=False,
    )
    config = parse_config(
        {
            "task": {
                "name": "fewshot",
                "path": str(path),
                "ways": 2,
                "split_by": "alphabet",
                "val_fraction": 0.5,
                "rotations": False,
            },
            "stream": {"steps": 5, "ways": 2, "shots": 1},
        }
    )
    with pytest.raises(ConfigError, match="grayscale"):
        build_stream(config, 0)


def test_stream_section_is_left_out_of_configs_without_one():
    from distmeta.config import config_to_dict

    assert "stream" not in config_to_dict(parse_config({}))
    round_trip = parse_config(config_to_dict(parse_config({"stream": {"lambda": 3.0}})))
    assert round_trip.stream.lambda_ == 3.0
    assert math.isclose(sum(round_trip.stream.mode_probs), 1.0)
