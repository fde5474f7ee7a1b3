"""The outer learning rate schedule: held, then annealed; a pure function of the step."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

import distmeta as dm
from distmeta.config import OuterLRDecay, parse_config
from distmeta.engine.layout import ParamLayout
from distmeta.engine.learner import Learner
from distmeta.engine.schedule import OuterLRSchedule
from distmeta.errors import ConfigError


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
