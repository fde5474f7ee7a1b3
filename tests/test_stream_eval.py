"""Prequential evaluation: the report of every learner over seeds, its metrics' definitions,
what a run folder and MLflow keep, ``distmeta stream``, and bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import STREAM_BASE, stream_config
from scipy import stats

import distmeta as dm
from distmeta.cli import main
from distmeta.config import parse_config
from distmeta.engine.fleet import LocalFleet, StreamRecord
from distmeta.errors import ConfigError, RunError
from distmeta.runs import load_start, read_records, run_streams
from distmeta.runs.stream_metrics import (
    detection_scores,
    interval,
    recoveries,
    summarize,
)

BASELINE_NAMES = {"no_adaptation", "frozen_meta", "finetune", "online_sgd"}


@pytest.fixture(scope="module")
def report(stream_runs, tmp_path_factory):
    """Two seeds of a 40-step C-MAML stream, written to a run folder."""
    folder = tmp_path_factory.mktemp("stream") / "run"
    config = stream_config(stream_runs, steps=40)
    return run_streams(config, seeds=2, run_dir=str(folder)), folder


def test_the_report_covers_every_learner_on_the_same_streams(report):
    report, _ = report
    assert report.seeds == [0, 1]
    entry = report.to_dict()
    assert set(entry) == {"method", "baselines", "oracle"}
    assert set(entry["baselines"]) == BASELINE_NAMES
    for summary in [entry["method"], entry["oracle"], *entry["baselines"].values()]:
        assert {"mean_loss", "modes", "recovery_steps", "regret"} <= set(summary)
        assert set(summary["modes"]) == {"in_distribution", "ood_amplitude", "ood_frequency"}
        assert summary["mean_loss_ci95"] >= 0
    assert entry["method"]["name"] == "cmaml" and "switch_detection" in entry["method"]
    assert entry["oracle"]["switch_detection"]["f1"] == 1.0
    # Every learner saw every step of the same streams.
    for result in report.results:
        for record in result.records:
            assert len(record) == 40
            assert {len(v) for v in record.loss.values()} == {40}
    per_seed = [np.mean(r.records[0].loss["frozen_meta"]) for r in report.results]
    mean, half = (
        report.baselines["frozen_meta"].mean_loss.mean,
        report.baselines["frozen_meta"].mean_loss.ci95,
    )
    assert mean == pytest.approx(np.mean(per_seed))
    assert half == pytest.approx(stats.t.ppf(0.975, 1) * np.std(per_seed, ddof=1) / math.sqrt(2))
    assert report.oracle.regret.mean == 0.0


def test_the_run_folder_keeps_report_records_and_the_learned_meta_parameters(report, stream_runs):
    report, folder = report
    saved = json.loads((folder / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    records = np.load(folder / "records.npz")
    loss = records["seed1/stream0/loss/method"]
    assert np.array_equal(loss, report.results[1].records[0].loss["method"])
    assert np.array_equal(records["seed0/stream0/switch"], report.results[0].records[0].switch)
    # read_records gives back every field of every record, by seed.
    read = read_records(folder)
    assert sorted(read) == report.seeds
    for seed, result in zip(report.seeds, report.results, strict=True):
        (back,), (kept,) = read[seed], result.records
        assert (back.seed, back.index, back.start) == (kept.seed, kept.index, kept.start)
        for field in ("mode", "switch", "task"):
            assert np.array_equal(getattr(back, field), getattr(kept, field))
        for kind in ("loss", "accuracy", "detected", "revised"):
            ours, theirs = getattr(back, kind), getattr(kept, kind)
            assert set(ours) == set(theirs)
            assert all(np.array_equal(ours[name], theirs[name]) for name in theirs)
    # final.pt: the method's meta-parameters after the first seed, loadable as a run, which
    # another stream can start from.
    run = dm.load_run(folder)
    for name, value in report.results[0].meta_params["method"].items():
        assert torch.equal(run.params[name], value)
    assert any(
        not torch.equal(value, dm.load_run(stream_runs[0]).params[name])
        for name, value in run.params.items()
    )
    again = stream_config((str(folder), stream_runs[1]), steps=5)
    assert len(run_streams(again).results[0].records[0]) == 5


def _record(
    loss: dict[str, list[float]],
    switch: list[int],
    task=None,
    mode=None,
    detected=None,
    revised=None,
):
    n = len(switch)
    return StreamRecord(
        0,
        0,
        0,
        np.array(mode if mode is not None else [0] * n, dtype=np.int8),
        np.array(switch, dtype=bool),
        np.array(task if task is not None else np.cumsum(switch)),
        {k: np.array(v, dtype=float) for k, v in loss.items()},
        {},
        {k: np.array(v, dtype=bool) for k, v in (detected or {}).items()},
        {k: np.array(v, dtype=np.int8) for k, v in (revised or {}).items()},
    )


def test_recovery_counts_the_steps_until_the_loss_is_back_near_its_level():
    # Level before the switch at step 10: the mean of steps 0..9, 1.0. After it the loss
    # decays; the mean of the next three steps first falls to <= 1.1 three steps in.
    loss = [1.0] * 10 + [9.0, 5.0, 2.0, 1.1, 1.0, 1.05, 1.0, 1.0]
    record = _record({"a": loss}, [0] * 10 + [1] + [0] * 7)
    (found,) = recoveries(record, "a", 2)
    assert (found.steps, found.recovered, found.visit) == (3, True, 1)
    never = _record({"a": [1.0] * 10 + [9.0] * 6}, [0] * 10 + [1] + [0] * 5)
    (censored,) = recoveries(never, "a", 2)
    assert (censored.steps, censored.recovered) == (6, False)  # the task's whole length


def test_recovery_is_counted_by_visit_of_a_task_that_comes_back():
    loss = [1.0] * 4 + [5.0, 1, 1, 1] + [9.0, 9, 1, 1] + [1.0] * 4 + [5.0, 5, 5, 1, 1, 1]
    switch = [0] * 4 + [1, 0, 0, 0] * 3 + [1, 0, 0, 0, 0, 0]
    task = [0] * 4 + [1] * 4 + [2] * 4 + [0] * 4 + [1] * 6
    record = _record({"a": loss}, switch, task=task)
    found = recoveries(record, "a", 2)
    expected = [(1, 1, 1), (2, 1, 2), (0, 2, 0), (1, 2, 3)]  # (task, visit, steps)
    assert [(f.task, f.visit, f.steps) for f in found] == expected
    assert [f.loss_after for f in found] == [3.0, 9.0, 1.0, 5.0]  # the 2 steps from each switch
    # By visit: task 1's two visits only. Task 2 never came back, and task 0's first visit
    # began the stream, not at a switch.
    summary = summarize([[record]], "a", ("in", "out1", "out2"), switch_window=2, oracle="a")
    visits = summary.recovery_by_visit
    assert (visits["first"].mean, visits["second"].mean) == (1.0, 3.0)
    after = summary.loss_after_switch_by_visit
    assert (after["first"].mean, after["second"].mean) == (3.0, 5.0)


def test_switch_detection_scores_against_the_true_switches():
    switch = [0, 0, 1, 0, 0, 1, 0, 1]
    declared = [1, 1, 1, 0, 1, 0, 0, 1]  # step 0 never counts; 2 hits, 2 false, 1 missed
    record = _record({"a": [0.0] * 8}, switch, detected={"a": declared})
    precision, recall, f1 = detection_scores([record], "a")
    assert (precision, recall) == (0.5, pytest.approx(2 / 3))
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_switch_detection_counts_a_revised_declaration_at_the_step_it_concerns():
    """A second look one step later withdraws the false declarations at steps 1 and 4 and
    finds the missed switch at step 5: every switch found, nothing else declared."""
    switch = [0, 0, 1, 0, 0, 1, 0, 1]
    declared = [1, 1, 1, 0, 1, 0, 0, 1]
    revised = [0, 0, -1, 0, 0, -1, 1, 0]
    record = _record({"a": [0.0] * 8}, switch, detected={"a": declared}, revised={"a": revised})
    assert record.declared("a").tolist() == [True, False, True, False, False, True, False, True]
    assert detection_scores([record], "a") == (1.0, 1.0, 1.0)


def test_summary_definitions_on_a_known_record():
    loss = {"a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "oracle": [1.0] * 6}
    record = _record(loss, [0, 0, 0, 1, 0, 0], mode=[0, 0, 0, 2, 2, 2])
    summary = summarize([[record]], "a", ("in", "out1", "out2"), switch_window=2)
    assert summary.mean_loss.mean == 3.5
    assert summary.modes["in"].mean == 2.0 and summary.modes["out2"].mean == 5.0
    assert math.isnan(summary.modes["out1"].mean)  # never visited: undefined, not zero
    assert summary.loss_after_switch.mean == 4.5
    assert summary.regret.mean == 15.0
    assert summary.recovery_by_visit is None  # no task came back
    assert summary.loss_after_switch_by_visit is None
    assert interval([1.0, float("inf")]).mean == math.inf
    assert interval([2.0]).ci95 == 0.0
    assert summary.nonfinite_steps.mean == 0


def test_steps_whose_loss_is_not_finite_are_counted_per_seed():
    diverged = {"a": [1.0, 1e30, math.inf, math.nan, math.inf, 2.0], "oracle": [1.0] * 6}
    records = [_record(diverged, [0] * 6), _record({"a": [1.0] * 6, "oracle": [1.0] * 6}, [0] * 6)]
    summary = summarize([records[:1], records[1:]], "a", ("in", "out1", "out2"), switch_window=2)
    # A NaN loss is a diverged learner: the seed's means are infinite, not left out.
    assert [summary.nonfinite_steps.mean, summary.mean_loss.mean] == [1.5, math.inf]
    assert summary.regret.mean == math.inf
    assert summary.to_dict()["nonfinite_steps"] == 1.5


def test_a_local_fleet_shares_the_meta_parameters_of_its_streams(stream_runs):
    # Without prolonged adaptation every prediction starts from the meta-parameters.
    config = stream_config(stream_runs, steps=12, streams=2, prolonged=False)
    start = load_start(config)
    result = LocalFleet(config, start).run(seed=3)
    assert [r.index for r in result.records] == [0, 1]
    assert not np.array_equal(result.records[0].loss["method"], result.records[1].loss["method"])
    changed = result.meta_params["method"]
    assert any(not torch.equal(changed[n], start.meta_params[n]) for n in changed)
    single = LocalFleet(stream_config(stream_runs, steps=12, prolonged=False), start).run(seed=3)
    # Stream 0 is the same stream alone or in a fleet; its frozen baseline scores the same,
    # its meta-learner does not (the fleet's meta-updates include stream 1's gradients).
    assert np.array_equal(
        single.records[0].loss["frozen_meta"], result.records[0].loss["frozen_meta"]
    )
    assert not np.array_equal(single.records[0].loss["method"], result.records[0].loss["method"])


def test_online_meta_updates_keep_a_learned_rule_at_its_own_rate(stream_runs, tmp_path):
    """A Meta-SGD start meta-trained with ``rule_outer_lr`` keeps its rates at that fraction
    of the online meta-rate: Adam moves each rate by about 1e-7 per meta-update here, the
    network's weights by about 1e-3."""
    rule = {"inner_rule": "metasgd", "outer_lr": 0.003, "rule_outer_lr": 3e-7}
    raw = {**STREAM_BASE, "algorithm": {**STREAM_BASE["algorithm"], **rule}}
    dm.train(parse_config(raw), run_dir=str(tmp_path / "metasgd"), progress=False)
    runs = (str(tmp_path / "metasgd"), stream_runs[1])
    config = stream_config(runs, steps=8, prolonged=False, meta_lr=1e-3)
    start = load_start(config)
    factors = start.meta_lr_factors
    assert sorted(factors) == sorted(n for n in start.meta_params if "inner_lr." in n)
    assert list(factors.values()) == pytest.approx([1e-4] * len(factors))
    learned = LocalFleet(config, start).run(seed=3).meta_params["method"]
    moves = {n: float((learned[n] - start.meta_params[n]).abs().max()) for n in learned}
    rates = [move for name, move in moves.items() if name in factors]
    weights = [move for name, move in moves.items() if name not in factors]
    assert 0 < max(rates) <= 8 * 1e-7 * 1.01
    assert max(weights) > 1e-3


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"pretrained": None}, ConfigError, "stream.pretrained: no run given"),
        ({"joint": None}, ConfigError, "stream.joint: no run given.*algorithm.name=joint"),
        ({"pretrained": "/nonexistent/run"}, RunError, "stream.pretrained: run directory"),
    ],
)
def test_missing_starting_points_are_named(stream_runs, change, error, match):
    with pytest.raises(error, match=match):
        run_streams(stream_config(stream_runs, **change))


def test_a_run_trained_on_another_task_is_refused(stream_runs):
    raw = {**STREAM_BASE, "task": {"name": "sinusoid", "shots": 5, "query": 5, "amplitude": [1, 2]}}
    raw["stream"] = {"steps": 5, "pretrained": stream_runs[0], "joint": stream_runs[1]}
    with pytest.raises(ConfigError, match="stream.pretrained: .* another task section"):
        run_streams(parse_config(raw))


def test_bad_arguments_are_refused(stream_runs, report):
    with pytest.raises(ConfigError, match="no stream section"):
        load_start(parse_config(STREAM_BASE))
    with pytest.raises(ConfigError, match="--seeds"):
        run_streams(stream_config(stream_runs), seeds=0)
    with pytest.raises(RunError, match="already holds a stream report"):
        run_streams(stream_config(stream_runs, steps=5), run_dir=str(report[1]))
    with pytest.raises(RunError, match="records.npz not found"):
        read_records(stream_runs[0])  # a training run, not a stream run


# --- distmeta stream ------------------------------------------------------------------------


def _write_config(path, runs, **stream):
    import yaml

    raw = {**STREAM_BASE, "stream": {"steps": 8, "pretrained": runs[0], "joint": runs[1], **stream}}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_json_is_the_last_line_and_holds_exactly_the_report(stream_runs, tmp_path, capsys):
    config = _write_config(tmp_path / "stream.yaml", stream_runs)
    run_dir = tmp_path / "s"
    arguments = ["stream", str(config), "--json", "--seeds", "2", "--run-dir", str(run_dir)]
    assert main([*arguments, "--set", "stream.method=ftml"]) == 0
    entry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(entry) == {"method", "baselines", "oracle"}
    assert entry["method"]["name"] == "ftml" and set(entry["baselines"]) == BASELINE_NAMES
    assert (run_dir / "stream.png").stat().st_size > 10_000
    assert main(["stream", str(config), "--no-progress", "--run-dir", str(tmp_path / "t")]) == 0
    table = capsys.readouterr().out
    assert "frozen_meta" in table and "no_adaptation" in table and "ftml" not in table


def test_cli_warns_of_a_learner_whose_loss_stopped_being_finite(stream_runs, tmp_path, capsys):
    """A fine-tuning rate far too large makes ``finetune`` diverge: the table's means are then
    not numbers, and a warning says which learner and on how many steps."""
    config = _write_config(tmp_path / "stream.yaml", stream_runs, finetune_lr=1e12)
    arguments = ["stream", str(config), "--no-progress", "--json", "--run-dir", str(tmp_path / "s")]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    entry = json.loads(captured.out.strip().splitlines()[-1])
    count = entry["baselines"]["finetune"]["nonfinite_steps"]
    assert 0 < count <= 8 and entry["baselines"]["frozen_meta"]["nonfinite_steps"] == 0
    assert f"finetune: {count:.0f} of 8 stream steps had a loss that is not finite" in captured.err
    assert "frozen_meta:" not in captured.err


def test_cli_refuses_bad_input_in_one_line(stream_runs, tmp_path, capsys):
    config = _write_config(tmp_path / "stream.yaml", stream_runs)
    cases = [
        (["--set", "stream.pretrained=null"], "stream.pretrained"),
        (["--set", "stream.alpha=1.5"], "stream.alpha"),
        (["--set", "stream.joint=/nonexistent"], "stream.joint: run directory"),
    ]
    for extra, message in cases:
        assert main(["stream", str(config), "--no-progress", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    plain = tmp_path / "plain.yaml"
    plain.write_text(json.dumps(STREAM_BASE))
    assert main(["stream", str(plain)]) == 2
    assert "no stream section" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stream", str(config), "--seeds", "0"])
    assert "must be positive" in capsys.readouterr().err


def test_cli_logs_metrics_curves_and_the_plot_to_mlflow(stream_runs, tmp_path):
    from mlflow import MlflowClient

    config = _write_config(tmp_path / "stream.yaml", stream_runs, steps=15)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["--set", "tracking.enabled=true", "--set", f"tracking.uri={store}"]
    run_dir = str(tmp_path / "s")
    assert main(["stream", str(config), "--no-progress", *overrides, "--run-dir", run_dir]) == 0
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("distmeta").experiment_id])
    metrics = run.data.metrics
    expected = {
        "method.mean_loss",
        "method.mean_loss_ci95",
        "frozen_meta.modes.in_distribution",
        "method.switch_detection.f1",
    }
    assert expected <= set(metrics)
    assert len(client.get_metric_history(run.info.run_id, "method.loss")) == 15
    assert run.data.params["stream.method"] == "cmaml"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/stream.png"]
