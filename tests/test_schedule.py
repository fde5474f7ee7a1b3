"""The outer learning rate: held, then annealed, a pure function of the step; and a rate of
its own for a learned inner rule's parameters."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

import distmeta as dm
from distmeta.config import OuterLRDecay, parse_config
from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.engine.schedule import OuterLRSchedule, rule_lr_factors
from distmeta.errors import ConfigError
from distmeta.experiment import build_experiment


def test_without_decay_the_rate_is_constant():
    schedule = OuterLRSchedule(0.1, steps=10)
    assert [schedule(step) for step in (0, 5, 9, 50)] == [0.1] * 4


@pytest.mark.parametrize(
    ("shape", "midway"), [("cosine", 0.5 * (1 + math.cos(math.pi / 2))), ("linear", 0.5)]
)
def test_the_rate_is_held_until_start_then_falls_to_final(shape, midway):
    schedule = OuterLRSchedule(1.0, steps=30, decay=OuterLRDecay(shape=shape, start=10, final=0.2))
    assert schedule(0) == schedule(9) == schedule(10) == 1.0
    assert schedule(20) == pytest.approx(0.2 + 0.8 * midway)
    assert schedule(30) == schedule(99) == pytest.approx(0.2)
    rates = [schedule(step) for step in range(10, 31)]
    assert all(a > b for a, b in pairwise(rates))


def test_the_learner_steps_with_the_scheduled_rate():
    decay = OuterLRDecay(shape="linear", start=1, final=0.0)
    learner = Learner(
        ParamLayout(("w",), ((2,),)), torch.zeros(2), "sgd", OuterLRSchedule(1.0, 3, decay)
    )
    moves = []
    for _ in range(3):
        before = learner.theta.clone()
        learner.apply(torch.ones(2))
        moves.append(float((before - learner.theta)[0]))
    assert moves == pytest.approx([1.0, 1.0, 0.5])


def test_a_decay_that_would_never_begin_is_refused():
    with pytest.raises(ConfigError, match=r"outer_lr_decay.start \(20\) must be below train.steps"):
        parse_config({"train": {"steps": 20}, "algorithm": {"outer_lr_decay": {"start": 20}}})
    with pytest.raises(ConfigError, match="outer_lr_decay.final"):
        parse_config({"algorithm": {"outer_lr_decay": {"final": 1.5}}})


def test_a_run_extended_into_a_decay_equals_one_decayed_run(tmp_path, tiny_sinusoid_config):
    """Held until ``start``, a run's checkpoint there continues into the decay exactly."""
    held = tiny_sinusoid_config.model_copy(
        update={"train": tiny_sinusoid_config.train.model_copy(update={"steps": 10})}
    )
    decayed = parse_config(
        {
            **tiny_sinusoid_config.model_dump(mode="json"),
            "train": {**tiny_sinusoid_config.train.model_dump(), "steps": 30},
            "algorithm": {
                **tiny_sinusoid_config.algorithm.model_dump(mode="json"),
                "outer_lr": 0.01,
                "outer_lr_decay": {"start": 10},
            },
        }
    )
    held = held.model_copy(
        update={"algorithm": held.algorithm.model_copy(update={"outer_lr": 0.01})}
    )
    dm.train(decayed, run_dir=str(tmp_path / "whole"), progress=False)
    dm.train(held, run_dir=str(tmp_path / "part"), progress=False)
    dm.train(
        decayed,
        run_dir=str(tmp_path / "part"),
        resume=True,
        progress=False,
        allow_changes=["algorithm.outer_lr_decay"],
    )
    whole, part = dm.load_run(tmp_path / "whole").params, dm.load_run(tmp_path / "part").params
    assert all(torch.equal(whole[k], part[k]) for k in whole)
    constant = tmp_path / "constant"
    dm.train(
        decayed.model_copy(
            update={"algorithm": decayed.algorithm.model_copy(update={"outer_lr_decay": None})}
        ),
        run_dir=str(constant),
        progress=False,
    )
    assert not torch.equal(whole["net.0.weight"], dm.load_run(constant).params["net.0.weight"])


TWO = ParamLayout(("w", "rate"), ((2,), (3,)))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_named_parameters_step_at_their_factor_of_the_scheduled_rate(optimizer):
    """The learner's views of its buffer step as torch's optimizer over two groups would."""
    gradients = [torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0]) * (k + 1) for k in range(3)]
    decay = OuterLRDecay(shape="linear", start=1, final=0.5)
    schedule = OuterLRSchedule(0.1, 3, decay)
    learner = Learner(TWO, torch.arange(5.0), optimizer, schedule, {"rate": 0.01})
    w, rate = torch.arange(2.0), torch.arange(2.0, 5.0)
    reference = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer](
        [{"params": [w]}, {"params": [rate]}], lr=0.1
    )
    for version, gradient in enumerate(gradients):
        learner.apply(gradient)
        w.grad, rate.grad = gradient[:2].clone(), gradient[2:].clone()
        reference.param_groups[0]["lr"] = schedule(version)
        reference.param_groups[1]["lr"] = schedule(version) * 0.01
        reference.step()
    assert torch.allclose(learner.theta, torch.cat([w, rate]), rtol=0, atol=1e-7)
    assert learner.params()["rate"].data_ptr() == learner.theta[2:].data_ptr()  # one buffer


def _one_step(config, **algorithm):
    """``config`` trained for one step, with these ``algorithm`` settings."""
    return parse_config(
        {
            **config.model_dump(mode="json"),
            "algorithm": {**config.algorithm.model_dump(mode="json"), **algorithm},
            "train": {**config.train.model_dump(), "steps": 1},
        }
    )


@pytest.mark.parametrize("factors", [None, {"rate": 0.01}])
def test_a_meta_gradient_above_the_clip_norm_is_scaled_down_to_it(factors):
    """As ``torch.nn.utils.clip_grad_norm_`` over every meta-parameter before Adam's step (one
    group or two); a gradient under the norm is stepped as it is, and an asynchronous result's
    staleness damping applies after the clip."""
    gradients = [torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0]) * k for k in (100.0, 0.1, 1e9, 1.0)]
    learner = Learner(TWO, torch.arange(5.0), "adam", 0.1, factors, clip_norm=2.0)
    w, rate = torch.arange(2.0), torch.arange(2.0, 5.0)
    reference = torch.optim.Adam([{"params": [w]}, {"params": [rate]}], lr=0.1)
    reference.param_groups[1]["lr"] = 0.1 * (factors or {"rate": 1.0})["rate"]
    for k, gradient in enumerate(gradients):
        stale = k == 3
        if stale:
            assert learner.apply_stale(gradient, learner.version - 1, 2).accepted
        else:
            learner.apply(gradient)
        w.grad, rate.grad = gradient[:2].clone(), gradient[2:].clone()
        torch.nn.utils.clip_grad_norm_([w, rate], 2.0)
        if stale:
            w.grad, rate.grad = w.grad / 2, rate.grad / 2
        reference.step()
        assert torch.allclose(learner.theta, torch.cat([w, rate]), rtol=0, atol=1e-6), k
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        Learner(TWO, torch.arange(5.0), "adam", 0.1, clip_norm=0.0)


def test_a_run_steps_with_the_clipped_meta_gradient(tmp_path, tiny_sinusoid_config):
    """``algorithm.outer_clip_norm`` reaches the learner: one step of plain SGD moves the
    meta-parameters by exactly ``outer_lr`` times the clip norm."""
    config = _one_step(
        tiny_sinusoid_config, outer_optimizer="sgd", outer_lr=0.5, outer_clip_norm=1e-3
    )
    start = build_experiment(config).algorithm.init_params()
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    end = dm.load_run(tmp_path / "run").params
    moved = torch.cat([(end[name] - start[name]).reshape(-1) for name in start])
    assert float(moved.norm()) == pytest.approx(0.5 * 1e-3, rel=1e-4)


def test_a_learner_with_factors_resumes_its_checkpoint_exactly_and_refuses_one_without():
    def learner(factors):
        return Learner(TWO, torch.arange(5.0), "adam", 0.1, factors)

    whole, part = learner({"rate": 0.1}), learner({"rate": 0.1})
    gradients = [torch.randn(5, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    for gradient in gradients:
        whole.apply(gradient)
    for gradient in gradients[:2]:
        part.apply(gradient)
    resumed = learner({"rate": 0.1})
    resumed.load_state_dict(part.state_dict())
    for gradient in gradients[2:]:
        resumed.apply(gradient)
    assert torch.equal(whole.theta, resumed.theta)
    with pytest.raises(ValueError, match="was algorithm.rule_outer_lr changed"):
        learner(None).load_state_dict(part.state_dict())
    with pytest.raises(ValueError, match=r"lr_factors name parameters the layout does not have"):
        learner({"lstm.out.bias": 0.1})


def test_the_rule_rate_reaches_the_rules_parameters_only(tmp_path, tiny_sinusoid_config):
    """Meta-SGD's learned rates step at ``rule_outer_lr`` in a run, the model at ``outer_lr``:
    Adam's first step moves every element with a gradient by its rate."""
    config = _one_step(
        tiny_sinusoid_config, inner_rule="metasgd", outer_lr=1e-3, rule_outer_lr=1e-5
    )
    algorithm = build_experiment(config).algorithm
    factors = rule_lr_factors(config, algorithm)
    assert factors and all(name.startswith("inner_lr.") for name in factors)
    assert set(factors) == set(algorithm.param_names) - set(algorithm.model_param_names)
    assert list(factors.values()) == pytest.approx([1e-2] * len(factors))
    start = algorithm.init_params()
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    end = dm.load_run(tmp_path / "run").params
    for name, value in end.items():
        moved = (value - start[name]).abs()
        rate = 1e-5 if name in factors else 1e-3
        assert moved.max() == pytest.approx(rate, rel=1e-3), name


@pytest.mark.parametrize(
    ("algorithm", "problem"),
    [
        ({"inner_rule": "sgd"}, "the sgd rule learns none"),
        ({"name": "l2l", "inner_rule": "lstm"}, "l2l meta-trains the rule alone"),
    ],
)
def test_a_rule_rate_is_refused_without_a_learned_rule_beside_a_model_joint_ignores_it(
    algorithm, problem
):
    with pytest.raises(ConfigError, match=problem):
        parse_config({"algorithm": {**algorithm, "rule_outer_lr": 1e-4}})
    # A stream config's joint start comes from the MAML run's own file: joint ignores it.
    joint = {"name": "joint", "inner_rule": "metasgd", "rule_outer_lr": 1e-4}
    assert parse_config({"algorithm": joint}).algorithm.rule_outer_lr == 1e-4
