"""Hyperparameter search with Ray Tune: ASHA stops bad trials early, every trial is a child
MLflow run of the search's run, the best config reproduces the best trial, the Ray engine's
workers live in their trial's placement group, and bad searches fail before any trial.

Searches run on the session's Ray cluster (4 logical CPUs on this 2-core machine) and record
in a real ``mlflow server``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

import distmeta as dm
from distmeta.cli import main
from distmeta.config import config_to_dict, load_config, parse_config
from distmeta.engine.rundir import RunDir
from distmeta.errors import ConfigError
from distmeta.tracking.link import read_link
from distmeta.tune import run_search

REPO = Path(__file__).resolve().parents[1]
REPORTS = 4
BUDGET = 200
"""Training steps of the ASHA search; the best trial continues with what its trials leave."""
BAD_LRS = (1.0, 2.0)
"""Outer learning rates so large that Adam throws the parameters around: worse than the good
ones at the first report already, but finite."""

TINY = {
    "seed": 3,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "outer_lr": 0.001},
    "train": {"steps": 40, "meta_batch_size": 4, "log_every": 5},
    "eval": {"tasks": 20, "query": 20, "inner_steps": 1},
    "tracking": {"enabled": False},
    "tune": {
        "space": {"algorithm.outer_lr": {"type": "grid", "values": [0.001, 0.003, *BAD_LRS]}},
        "search": "grid",
        "report_every": 10,
        "val_tasks": 20,
        # The good trials first, two at a time: the bad ones meet their results at every rung.
        "max_concurrent_trials": 2,
        "trial_resources": {"num_cpus": 0.5},
    },
}


def _config(**sections) -> dm.ExperimentConfig:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    return parse_config(raw)


@pytest.fixture(scope="module")
def asha_search(ray_cluster, server, tmp_path_factory):
    """The 4-trial ASHA search, tracked in the test server."""
    root = tmp_path_factory.mktemp("asha")
    config = _config(
        tracking={"enabled": True, "uri": server, "experiment": "tune-tests"},
        tune={**TINY["tune"], "continue_best": {"budget_steps": BUDGET}},
    )
    result = run_search(config, str(root / "search"), progress=False)
    return {"result": result, "uri": server}


def test_asha_search_stops_the_bad_trials_early(asha_search):
    result = asha_search["result"]
    by_lr = {t.values["algorithm.outer_lr"]: t for t in result.trials}
    assert sorted(by_lr) == [0.001, 0.003, *BAD_LRS]
    for lr in BAD_LRS:
        assert by_lr[lr].status == "stopped" and by_lr[lr].reports < REPORTS, by_lr[lr]
    assert any(t.status == "completed" and t.reports == REPORTS for t in result.trials)
    assert result.best.values["algorithm.outer_lr"] not in BAD_LRS
    assert result.best.status == "continued" and result.steps == BUDGET
    assert all(t.error is None and math.isfinite(t.metrics["val_loss"]) for t in result.trials)

    with open(f"{result.search_dir}/trials.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["trial"] for row in rows} == {t.name for t in result.trials} | {result.best.name}
    assert {row["status"] for row in rows} == {"stopped", "completed", "continued"}
    for trial in result.trials:  # each trial's run folder is an ordinary run folder
        assert RunDir(trial.run_dir).checkpoint_steps()[-1] == trial.step


def test_every_trial_is_a_child_run_of_the_search(asha_search):
    result, client = asha_search["result"], MlflowClient(asha_search["uri"])
    links = {t.name: read_link(RunDir(t.run_dir)) for t in result.trials}
    parent_id = result.tracking_run.rsplit("/", 1)[-1]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(result.best.metrics["val_loss"])
    assert parent.data.tags["distmeta.tune.best_trial"] == result.best.name
    assert parent.data.params["tune.search"] == "grid"
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"best.yaml", "trials.csv", "config.yaml"} <= artifacts

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    by_trial = {child.data.tags["distmeta.tune.trial"]: child for child in children}
    assert set(by_trial) == {t.name for t in result.trials} | {result.best.name}
    assert by_trial[result.best.name].info.status == "FINISHED"
    for trial in result.trials:
        child = by_trial[trial.name]
        assert child.info.run_id == links[trial.name].run_id
        assert child.data.tags["distmeta.tune.status"] == trial.status
        assert child.data.params["algorithm.outer_lr"] == str(trial.values["algorithm.outer_lr"])
        expected = "FINISHED" if trial.status == "completed" else "KILLED"
        assert child.info.status == expected, (trial, child.info)
        # The tracking URI the trials used is absolute: the server, not a folder in the trial.
        assert links[trial.name].tracking_uri == asha_search["uri"]


def test_the_best_trial_continues_with_the_steps_the_trials_left(asha_search):
    """ASHA stopped the bad trials early; the best trial resumes its last checkpoint and
    trains the rest of the budget with its outer learning rate annealed."""
    result = asha_search["result"]
    trial_steps = sum(t.step for t in result.trials)
    assert trial_steps < BUDGET
    name = result.best.name.removesuffix("-continued")
    trial = next(t for t in result.trials if t.name == name)
    assert trial.metrics["val_loss"] == min(t.metrics["val_loss"] for t in result.trials)
    continued = dm.load_run(result.best.run_dir)
    assert continued.step == result.best.step == trial.step + BUDGET - trial_steps
    decay = continued.config.algorithm.outer_lr_decay
    assert decay.start == trial.step and decay.shape == "cosine" and decay.final == 0.0
    assert RunDir(result.best.run_dir).checkpoint_steps()[0] == trial.step
    assert math.isfinite(result.best.metrics["val_loss"])


def test_best_config_trains_to_the_reported_metric(asha_search, tmp_path):
    result = asha_search["result"]
    best_file = result.best_config
    raw = yaml.safe_load(Path(best_file).read_text())
    assert "tune" not in raw and raw["tracking"]["uri"] == asha_search["uri"]
    assert raw["algorithm"]["outer_lr"] == result.best.values["algorithm.outer_lr"]
    run_dir = tmp_path / "best"
    arguments = ["train", best_file, "--run-dir", str(run_dir), "--no-progress"]
    assert main([*arguments, "--set", "tracking.enabled=false"]) == 0

    run = dm.load_run(run_dir)
    assert run.step == result.best.step
    measured = dm.evaluate(run, tasks=TINY["tune"]["val_tasks"])
    assert measured.loss[-1] == pytest.approx(result.best.metrics["val_loss"], rel=1e-4)


def test_ray_engine_trials_with_two_workers_each(ray_cluster, tmp_path):
    """Each trial reserves its own bundle and one per worker (fractional CPUs); both trials
    run their Ray engine to the end."""
    config = _config(
        train={"steps": 6},
        engine={
            "name": "ray",
            "workers": 2,
            "worker_resources": {"num_cpus": 0.5},
            "step_timeout_s": 120.0,
        },
        tune={
            "space": {"algorithm.inner_lr": {"type": "loguniform", "low": 0.003, "high": 0.03}},
            "search": None,  # Optuna
            "scheduler": "fifo",
            "num_samples": 2,
            "report_every": 3,
            "max_concurrent_trials": None,
        },
    )
    result = run_search(config, str(tmp_path / "search"), progress=False)
    assert [t.status for t in result.trials] == ["completed", "completed"]
    assert len({t.values["algorithm.inner_lr"] for t in result.trials}) == 2
    for trial in result.trials:
        assert trial.step == 6 and trial.reports == 2
        run = dm.load_run(trial.run_dir)
        assert run.config.engine.name == "ray" and run.config.engine.workers == 2
        assert run.config.algorithm.inner_lr == trial.values["algorithm.inner_lr"]


def test_pbt_trials_continue_the_checkpoints_of_better_ones(ray_cluster, tmp_path):
    """The worse trial exploits the better one: it resumes the better trial's checkpoint in
    its own run folder, with perturbed values, and finishes."""
    config = _config(
        # Several seconds per trial and 8 reports each: they overlap despite their start-up,
        # and more checkpoints than Tune keeps under other schedulers (with a limit, PBT's
        # restores and Tune's retention collided and failed a trial).
        train={"steps": 2000},
        tune={
            # Continuous, so that a perturbed value never equals the donor's: a clone with the
            # same values would train exactly like its donor (tasks are named by seed and
            # step), and PBT keeps exploiting such ties.
            "space": {"algorithm.outer_lr": {"type": "loguniform", "low": 0.001, "high": 1.0}},
            "search": None,  # random, as PBT needs
            "scheduler": "pbt",
            "pbt": {"perturbation_interval": 1},
            "report_every": 250,
            "num_samples": 2,
            "max_concurrent_trials": None,
        },
    )
    result = run_search(config, str(tmp_path / "search"), progress=False)
    assert [t.status for t in result.trials] == ["completed", "completed"]
    exploits = (tmp_path / "search" / "trials" / "pbt_global.txt").read_text().splitlines()
    assert exploits, "no trial exploited the other"
    for trial in result.trials:
        run = dm.load_run(trial.run_dir)
        assert run.step == 2000
        assert run.config.algorithm.outer_lr == trial.values["algorithm.outer_lr"]


def test_a_resume_may_change_the_searched_values(tmp_path):
    """What PBT does when a trial exploits another: continue its checkpoint with perturbed
    values, the outer learning rate included."""
    config = _config(train={"checkpoint_every": 10, "steps": 10})
    dm.train(config, run_dir=str(tmp_path / "r"), progress=False)
    changed = _config(
        train={"checkpoint_every": 10, "steps": 20}, algorithm={"outer_lr": 0.02, "inner_lr": 0.05}
    )
    with pytest.raises(ConfigError, match="differs from the run's in algorithm.inner_lr"):
        dm.train(changed, run_dir=str(tmp_path / "r"), resume=True, progress=False)
    searched = ["algorithm.inner_lr", "algorithm.outer_lr"]
    dm.train(changed, str(tmp_path / "r"), resume=True, progress=False, allow_changes=searched)
    state = RunDir(tmp_path / "r").latest_checkpoint()
    assert state["step"] == 20
    assert [g["lr"] for g in state["engine"]["learner"]["optimizer"]["param_groups"]] == [0.02]


def test_list_choices_reach_the_trials_as_lists():
    """Tune and Optuna hold choices of plain values: a list (``model.hidden``) travels as its
    JSON text and becomes the list again in the trial's config."""
    from distmeta.tune.space import base_config, plan_search, trial_config

    config = _config(
        tune={
            "space": {"model.hidden": {"type": "choice", "values": [[8], [16, 16]]}},
            "search": "random",
        }
    )
    plan = plan_search(config)
    assert sorted(plan.param_space["model.hidden"].categories) == ["[16, 16]", "[8]"]
    trial = trial_config(base_config(config), config.tune, {"model.hidden": "[16, 16]"})
    assert trial.model.hidden == (16, 16) and trial.train.checkpoint_every == 10
    assert trial.tune is None


@pytest.mark.parametrize(
    ("space", "tune", "message"),
    [
        (
            {"algorithm.inner_lrr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
            {},
            "tune.space.algorithm.inner_lrr: algorithm.inner_lrr is not a config key",
        ),
        (
            {"algorithm.outer_lr": {"type": "uniform", "low": -0.01, "high": 0.1}},
            {},
            "tune.space.algorithm.outer_lr: -0.01 is not a valid value "
            "(algorithm.outer_lr: Input should be greater than 0)",
        ),
        (
            {"algorithm.inner_lr": {"type": "choice", "values": [0.01, -1.0]}},
            {},
            "tune.space.algorithm.inner_lr: -1.0 is not a valid value",
        ),
        (
            {"algorithm.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
            {"metric": "val_accuracy"},
            "tune.metric: sinusoid is a regression task: its trials report val_loss only",
        ),
        (
            {"algorithm.inner_lr": {"type": "loguniform", "low": 0.001, "high": 0.1}},
            {"search": "grid"},
            "tune.space.algorithm.inner_lr: a grid search needs choice or grid values",
        ),
        (
            {"algorithm.inner_lr": {"type": "grid", "values": [0.01, 0.1]}},
            {"search": "optuna"},
            "grid values need tune.search: grid or random",
        ),
        (
            {"algorithm.inner_lr": {"type": "choice", "values": [0.01, 0.1]}},
            {"scheduler": "pbt", "search": "optuna"},
            "tune.search: PBT samples and perturbs its own population",
        ),
        (
            {"engine.workers": {"type": "choice", "values": [1, 2]}},
            {},
            "tune.space.engine.workers: cannot be searched",
        ),
        (
            {"algorithm.inner_steps": {"type": "choice", "values": [1, 2]}},
            {},
            "set eval.inner_steps",
        ),
        (
            {"algorithm.inner_lr": {"type": "choice", "values": [0.01]}},
            {"asha": {"grace_period": 5}},
            "tune.asha.grace_period: 5 reports, but a trial makes 4",
        ),
        (
            {"algorithm.outer_lr_decay.final": {"type": "uniform", "low": 0.0, "high": 0.5}},
            {"continue_best": {"budget_steps": 200}},
            "tune.continue_best: it anneals the outer learning rate of the continued trial",
        ),
        (
            {"algorithm.inner_lr": {"type": "choice", "values": [0.01]}},
            {"continue_best": {"budget_steps": 30}},
            "tune.continue_best.budget_steps: 30 is less than one trial's train.steps (40)",
        ),
    ],
)
def test_bad_searches_fail_before_any_trial(space, tune, message, tmp_path):
    config = _config(
        tune={**TINY["tune"], "space": space, "search": None, **tune},
        eval={"inner_steps": None},
    )
    with pytest.raises(ConfigError) as error:
        run_search(config, str(tmp_path / "search"), progress=False)
    assert message in str(error.value)
    assert not (tmp_path / "search").exists()


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        (
            {"space": {"algorithm.inner_lr": {"type": "loguniform", "low": -1, "high": 0.1}}},
            "tune.space.algorithm.inner_lr: loguniform needs low > 0, got -1",
        ),
        ({"space": {}}, "tune.space: Dictionary should have at least 1 item"),
        (
            {"space": {"seed": {"type": "uniform", "low": 1, "high": 1}}},
            "uniform needs low < high",
        ),
        ({"metric": "val_f1"}, "tune.metric: Input should be 'val_loss' or 'val_accuracy'"),
    ],
)
def test_malformed_tune_sections_name_the_field(tune, message, tmp_path, capsys):
    raw = {**TINY, "tune": {**TINY["tune"], **tune}}
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["tune", str(path), "--run-dir", str(tmp_path / "search")]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "search").exists()


def test_train_ignores_the_tune_section(tmp_path):
    config = _config(train={"steps": 4})
    result = dm.train(config, run_dir=str(tmp_path / "r"), progress=False)
    assert result.steps == 4
    stored = RunDir(tmp_path / "r").read_config()
    assert stored["tune"] == config_to_dict(config)["tune"]
    assert "tune" not in config_to_dict(config.model_copy(update={"tune": None}))


@pytest.mark.parametrize("name", ["tune_sinusoid", "tune_omniglot"])
def test_shipped_search_configs_are_valid(name, request):
    from distmeta.tune.space import check_search

    path = REPO / "configs" / f"{name}.yaml"
    config = load_config(path)
    if config.task.name == "fewshot":  # on the shared background set, prepared or not here
        config = load_config(path, [f"task.path={request.getfixturevalue('omniglot_background')}"])
    tune = check_search(config)
    assert {"algorithm.inner_lr", "algorithm.outer_lr"} <= set(tune.space)
    assert config.train.steps % tune.report_every == 0


def test_a_trial_error_given_as_text_is_summarised_by_its_last_line():
    """Ray reports a trial that never ran (its actor could not be reused) by the failure's
    text, not an exception; the search summary must not crash on it (it once did)."""
    from distmeta.tune.search import _last_line

    text = "Failure # 1 (occurred at 2026-12-04_13-50-11)\nTrainable runner reuse failed.\n"
    assert _last_line(text) == "Trainable runner reuse failed."
    try:
        raise ValueError("outer") from KeyError("inner")
    except ValueError as error:
        assert _last_line(error) == "KeyError: 'inner'"
