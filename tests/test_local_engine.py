"""The local engine: training, checkpoints, exact resume, evaluation, loading a run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import StopAt

import distmeta as dm
from distmeta.engine.rundir import MetricsLog, RunDir
from distmeta.errors import CheckpointError, ConfigError, RunError
from distmeta.runs import EvalResult


def _final(run_dir):
    return dm.load_run(run_dir).params


def test_training_reduces_the_loss_and_writes_the_run(tmp_path, tiny_sinusoid_config):
    config = tiny_sinusoid_config.model_copy(
        update={
            "train": tiny_sinusoid_config.train.model_copy(update={"steps": 300, "log_every": 50})
        }
    )
    result = dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    records = MetricsLog.read(RunDir(tmp_path / "run"))
    assert [r["step"] for r in records] == list(range(50, 301, 50))
    assert records[-1]["loss"] < records[0]["loss"]
    assert result.steps == 300 and result.tasks_per_second > 0
    assert RunDir(tmp_path / "run").checkpoint_steps() == list(range(5, 301, 5))


@pytest.mark.parametrize(
    ("algorithm", "rule"),
    [("maml", "sgd"), ("reptile", "sgd"), ("maml", "metasgd"), ("fomaml", "sgd")],
)
def test_resume_after_interruption_is_bit_identical(
    tmp_path, tiny_sinusoid_config, algorithm, rule
):
    chosen = {"name": algorithm, "inner_rule": rule}
    config = tiny_sinusoid_config.model_copy(
        update={"algorithm": tiny_sinusoid_config.algorithm.model_copy(update=chosen)}
    )
    dm.train(config, run_dir=str(tmp_path / "whole"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        dm.train(config, run_dir=str(tmp_path / "cut"), callbacks=[StopAt(15)], progress=False)
    assert RunDir(tmp_path / "cut").checkpoint_steps() == [5, 10]
    dm.train(config, run_dir=str(tmp_path / "cut"), resume=True, progress=False)
    whole, cut = _final(tmp_path / "whole"), _final(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    steps = [r["step"] for r in MetricsLog.read(RunDir(tmp_path / "cut"))]
    assert steps == [5, 10, 15, 20]


def test_a_longer_run_continues_a_finished_one_exactly(tmp_path, tiny_sinusoid_config):
    longer = tiny_sinusoid_config.model_copy(
        update={"train": tiny_sinusoid_config.train.model_copy(update={"steps": 30})}
    )
    dm.train(longer, run_dir=str(tmp_path / "whole"), progress=False)
    dm.train(tiny_sinusoid_config, run_dir=str(tmp_path / "part"), progress=False)
    dm.train(longer, run_dir=str(tmp_path / "part"), resume=True, progress=False)
    whole, part = _final(tmp_path / "whole"), _final(tmp_path / "part")
    assert all(torch.equal(whole[k], part[k]) for k in whole)


def test_resume_refuses_a_different_experiment(tmp_path, tiny_sinusoid_config):
    dm.train(tiny_sinusoid_config, run_dir=str(tmp_path / "run"), progress=False)
    other = tiny_sinusoid_config.model_copy(
        update={"algorithm": tiny_sinusoid_config.algorithm.model_copy(update={"inner_lr": 0.5})}
    )
    with pytest.raises(ConfigError, match="algorithm.inner_lr"):
        dm.train(other, run_dir=str(tmp_path / "run"), resume=True, progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        dm.train(tiny_sinusoid_config, run_dir=str(tmp_path / "run"), progress=False)


def test_zero_init_of_a_parameter_the_model_lacks_names_the_field(tmp_path, tiny_sinusoid_config):
    algorithm = tiny_sinusoid_config.algorithm.model_copy(update={"zero_init": ("head.weight",)})
    config = tiny_sinusoid_config.model_copy(update={"algorithm": algorithm})
    with pytest.raises(ConfigError, match=r"algorithm.zero_init: .*\['head.weight'\].*net.4.bias"):
        dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_evaluation_improves_with_adaptation(tmp_path, tiny_sinusoid_config):
    config = tiny_sinusoid_config.model_copy(
        update={
            "train": tiny_sinusoid_config.train.model_copy(update={"steps": 400, "log_every": 100})
        }
    )
    dm.train(config, run_dir=str(tmp_path / "run"), progress=False)
    run = dm.load_run(tmp_path / "run")
    result = dm.evaluate(run, tasks=50, steps=5)
    assert result.steps == [0, 1, 2, 3, 4, 5] and result.tasks == 50
    assert result.loss[5] < result.loss[0]
    assert result.accuracy is None
    again = dm.evaluate(run, tasks=50, steps=5)
    assert again.loss == result.loss


def test_loaded_run_predicts_with_adapted_parameters(tmp_path, tiny_sinusoid_config):
    dm.train(tiny_sinusoid_config, run_dir=str(tmp_path / "run"), progress=False)
    run = dm.load_run(tmp_path / "run")
    assert run.step == 20 and run.config == tiny_sinusoid_config
    batch = dm.tasks.Sinusoid(5, 5).sample(99, 0, [0])
    sx, sy, qx, _ = batch.task(0)
    task_params = run.algorithm.adapt(run.params, sx, sy)
    prediction = torch.func.functional_call(run.model, task_params, (qx,))
    assert prediction.shape == (5, 1)
    assert torch.equal(run.model(qx), torch.func.functional_call(run.model, run.params, (qx,)))


def test_an_override_that_changes_the_model_is_a_clear_error(tmp_path, tiny_sinusoid_config):
    dm.train(tiny_sinusoid_config, run_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(CheckpointError, match="model's shape"):
        dm.load_run(tmp_path / "run", ["model.hidden=[4]"])


def test_evaluation_counts_diverged_tasks_and_averages_the_others():
    """A task whose loss is infinite or NaN after adaptation is counted, not averaged in
    (the mean would be inf), and never hidden as a null."""
    inf, nan = math.inf, math.nan
    curve = torch.tensor(
        [[[1.0], [0.5]], [[2.0], [inf]], [[3.0], [nan]], [[4.0], [0.7]]], dtype=torch.float64
    )
    result = EvalResult.of(curve)
    assert result.diverged == [0, 2]
    assert result.loss == pytest.approx([2.5, 0.6])
    assert result.loss_median == [2.0, 0.7]  # the lower middle of [0.5, 0.7, inf, inf]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["diverged"] == [0, 2] and None not in data["loss"]
    everything = EvalResult.of(torch.full((2, 2, 1), inf, dtype=torch.float64))
    assert everything.to_dict()["loss"] == ["nan", "nan"]
    assert everything.to_dict()["loss_median"] == ["inf", "inf"]
