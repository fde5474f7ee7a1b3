"""Online (prequential) evaluation on streams: every learner predicts each batch before its
labels are revealed, on the same streams, from the same starting points.

``distmeta stream`` runs the config's online method (``stream.method``), its oracle (the
same method told the true switches) and the baselines on ``stream.streams`` streams per seed,
on the configured engine (one process, or a fleet in Ray's task workers), and reports what
:mod:`distmeta.runs.stream_metrics` defines, with 95 % intervals over seeds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from distmeta.config import ExperimentConfig, config_to_dict
from distmeta.engine.fleet import FleetResult, StreamRecord, build_fleet
from distmeta.engine.rundir import RunDir
from distmeta.engine.schedule import rule_lr_factors
from distmeta.errors import ConfigError, RunError
from distmeta.experiment import (
    BASELINES,
    OnlineStart,
    build_model,
    build_online_algorithm,
    build_stream,
)
from distmeta.runs.finished import Run, fit_params, load_run
from distmeta.runs.stream_metrics import LearnerSummary, summarize

__all__ = [
    "RECORDS_FILE",
    "REPORT_FILE",
    "StreamReport",
    "default_stream_dir",
    "load_start",
    "read_records",
    "run_streams",
]

REPORT_FILE = "report.json"
RECORDS_FILE = "records.npz"


@dataclass
class StreamReport:
    """Every learner's prequential summary over the seeds, and what produced it.

    Args:
        config: The experiment (its ``stream`` section).
        seeds: The seeds run (one fleet of ``stream.streams`` streams each).
        mode_names: The stream's modes, in-distribution first.
        method: The online method's summary.
        oracle: The same method told the true switches.
        baselines: Each baseline's summary.
        results: Each seed's fleet result (full records, final meta-parameters, speed).
    """

    config: ExperimentConfig
    seeds: list[int]
    mode_names: tuple[str, ...]
    method: LearnerSummary
    oracle: LearnerSummary
    baselines: dict[str, LearnerSummary]
    results: list[FleetResult] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"method": {...}, "baselines": {name: {...}}, "oracle": {...}}`` as ``distmeta
        stream --json`` prints it; the method and the oracle name the method."""
        name = self.config.stream.method
        return {
            "method": {"name": name, **self.method.to_dict()},
            "baselines": {key: value.to_dict() for key, value in self.baselines.items()},
            "oracle": {"name": name, **self.oracle.to_dict()},
        }


def default_stream_dir(config: ExperimentConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"stream-{config.stream.name}-{config.stream.method}-{stamp}")


def _comparable(section: Any) -> dict[str, Any]:
    """A config section as data, without where its files are (``task.path`` may differ
    between the machine that trained a run and the one that streams)."""
    data = section.model_dump(mode="json")
    data.pop("path", None)
    return data


def _load(field_name: str, run_dir: str | None, config: ExperimentConfig, how: str) -> Run:
    if run_dir is None:
        raise ConfigError(
            f"stream.{field_name}: no run given; train one on the in-distribution mode with "
            f"`distmeta train CONFIG{how} --run-dir DIR` and set stream.{field_name}: DIR"
        )
    try:
        run = load_run(run_dir)
    except RunError as error:
        raise RunError(f"stream.{field_name}: {error}") from None
    for section in ("task", "model"):
        theirs, ours = getattr(run.config, section), getattr(config, section)
        if _comparable(theirs) != _comparable(ours):
            raise ConfigError(
                f"stream.{field_name}: {run_dir} was trained with another {section} section "
                f"({_comparable(theirs)}) than this config's ({_comparable(ours)}): the "
                "in-distribution mode must be what it was trained on"
            )
    return run


def load_start(config: ExperimentConfig) -> OnlineStart:
    """The meta-learned run (``stream.pretrained``) and the jointly trained one
    (``stream.joint``), checked against the config and fitted to its stream.

    Raises:
        ConfigError: A run is not given, or was trained on another task or model, or its
            parameters do not fit the stream.
        RunError: A run folder is missing or unfinished.
    """
    spec = config.stream
    if spec is None:
        raise ConfigError("stream: the config has no stream section (see README, Streams)")
    pretrained = _load("pretrained", spec.pretrained, config, "")
    joint = _load("joint", spec.joint, config, " --set algorithm.name=joint")
    stream = build_stream(config, config.seed, 0)
    algorithm = build_online_algorithm(pretrained.config, stream)
    meta = fit_params(algorithm, pretrained.params, build_model(pretrained.config, stream))
    joint_params = fit_params(joint.algorithm, joint.params, build_model(joint.config, stream))
    for name, fitted in (("pretrained", meta), ("joint", joint_params)):
        if fitted is None:
            raise ConfigError(
                f"stream.{name}: the run's parameters do not fit the stream's "
                f"{stream.output_size} outputs (a classifier's head fits other numbers of "
                "classes only when algorithm.zero_init names it)"
            )
    factors = rule_lr_factors(pretrained.config, algorithm)
    return OnlineStart(pretrained.config, meta, joint_params, factors)


def _write(folder: RunDir, report: StreamReport, start: OnlineStart) -> None:
    config = {**config_to_dict(start.run_config), "stream": config_to_dict(report.config)["stream"]}
    folder.write_config(config)
    folder.write_bytes(REPORT_FILE, (json.dumps(report.to_dict(), indent=1) + "\n").encode())
    arrays: dict[str, np.ndarray] = {}
    for seed, result in zip(report.seeds, report.results, strict=True):
        for record in result.records:
            prefix = f"seed{seed}/stream{record.index}"
            for key in ("mode", "switch", "task"):
                arrays[f"{prefix}/{key}"] = getattr(record, key)
            for kind in ("loss", "accuracy", "detected", "revised"):
                for name, values in getattr(record, kind).items():
                    arrays[f"{prefix}/{kind}/{name}"] = values
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    folder.write_bytes(RECORDS_FILE, buffer.getvalue())
    # The method's meta-parameters after the first seed's streams: a run folder that
    # stream.pretrained (or distmeta eval) can load.
    folder.save_final(report.results[0].meta_params["method"], config["stream"]["steps"])


def read_records(run_dir: str | Path) -> dict[int, list[StreamRecord]]:
    """Every stream's record of a finished ``distmeta stream`` run, by seed (each seed's
    streams in index order): what :func:`run_streams` wrote to ``records.npz``."""
    folder = RunDir(run_dir)
    if not folder.exists(RECORDS_FILE):
        raise RunError(f"{folder.describe(RECORDS_FILE)} not found: not a finished stream run")
    arrays = np.load(io.BytesIO(folder.read_bytes(RECORDS_FILE)))
    streams: dict[tuple[int, int], dict[str, dict[str, np.ndarray]]] = {}
    for key in arrays.files:
        seed, stream, *rest = key.split("/")
        place = (int(seed.removeprefix("seed")), int(stream.removeprefix("stream")))
        entry = streams.setdefault(place, {})
        kind, name = rest if len(rest) == 2 else ("truth", rest[0])
        entry.setdefault(kind, {})[name] = arrays[key]
    records: dict[int, list[StreamRecord]] = {}
    for (seed, index), entry in sorted(streams.items()):
        truth = entry["truth"]
        record = StreamRecord(
            seed,
            index,
            0,
            truth["mode"],
            truth["switch"],
            truth["task"],
            entry["loss"],
            entry.get("accuracy", {}),
            entry.get("detected", {}),
            entry.get("revised", {}),
        )
        records.setdefault(seed, []).append(record)
    return records


def run_streams(
    config: ExperimentConfig,
    seeds: int = 1,
    run_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> StreamReport:
    """Run the config's streams for ``seeds`` seeds and summarize every learner.

    Seeds are ``seed, seed + 1, ...``; each runs ``stream.streams`` streams on the configured
    engine (``engine.name``), all learners on the same streams.

    Args:
        config: The experiment with a ``stream`` section.
        seeds: Number of seeds (95 % intervals are over them).
        run_dir: Where to write the resolved config, ``report.json``, every stream's record
            (``records.npz``) and the method's final meta-parameters (``final.pt``);
            nothing is written when omitted.
        progress: Called with the number of stream steps just completed.

    Returns:
        The :class:`StreamReport`.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds: at least one seed, got {seeds}")
    start = load_start(config)
    folder = RunDir(run_dir) if run_dir is not None else None
    if folder is not None and folder.exists(REPORT_FILE):
        raise RunError(f"{folder.uri} already holds a stream report: choose another --run-dir")
    names = tuple(build_stream(config, config.seed, 0).mode_names)
    chosen = [config.seed + k for k in range(seeds)]
    fleet = build_fleet(config, start)
    try:
        results = [fleet.run(seed, progress) for seed in chosen]
    finally:
        fleet.close()
    records = [result.records for result in results]
    window = config.stream.switch_window
    report = StreamReport(
        config,
        chosen,
        names,
        summarize(records, "method", names, window),
        summarize(records, "oracle", names, window),
        {name: summarize(records, name, names, window) for name in BASELINES},
        results,
    )
    if folder is not None:
        _write(folder, report, start)
    return report
