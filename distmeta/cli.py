"""The ``distmeta`` command line: train, eval, stream, export (and the subcommands of later
layers).

Every error distmeta raises on purpose becomes one red line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from distmeta.config import load_config
from distmeta.data import ImageSet, prepare_imagefolder, prepare_omniglot
from distmeta.errors import ConfigError, DistmetaError
from distmeta.runs import (
    EvalResult,
    OptimizerComparison,
    Run,
    StreamReport,
    evaluate_run,
    load_run,
    train,
)
from distmeta.runs.stream_metrics import LearnerSummary

__all__ = ["main"]

_err = Console(stderr=True)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set algorithm.inner_lr=0.05 (repeatable)",
    )


class _RecordLines:
    """Prints each logged record as one line on stderr: what ``--no-progress`` shows instead
    of the bar (the logs of a Ray Job, a file)."""

    def on_start(self, *args: object) -> None:
        pass

    def on_metrics(self, record: dict[str, float]) -> None:
        values = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step")
        _err.print(f"step {record['step']}: {values}", soft_wrap=True, highlight=False)

    def on_checkpoint(self, *args: object) -> None:
        pass

    def on_end(self, *args: object) -> None:
        pass


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    tracker = None
    if config.tracking.enabled:
        from distmeta.tracking import MLflowTracker  # MLflow loads only for tracked runs

        tracker = MLflowTracker(config, config_file=args.config)  # checks the store first
    callbacks = [c for c in (tracker, _RecordLines() if args.no_progress else None) if c]
    with tracker or nullcontext():
        result = train(
            config,
            run_dir=args.run_dir,
            resume=args.resume,
            callbacks=callbacks,
            progress=not args.no_progress,
        )
    shown = {k: v for k, v in result.metrics.items() if k not in ("step", "time", "tasks_per_s")}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
    tracked = f"; MLflow run {tracker.run_url}" if tracker else ""
    _err.print(
        f"[green]done[/]: {result.steps} steps in {result.wall_time:.1f} s "
        f"({result.tasks_per_second:.0f} tasks/s); {summary}; run in {result.run_dir}{tracked}",
        soft_wrap=True,
    )
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from distmeta.tune import run_search  # Ray Tune loads only for a search

    config = load_config(args.config, args.overrides)
    result = run_search(
        config, args.run_dir, config_file=args.config, progress=not args.no_progress
    )
    table = Table(title=f"{len(result.trials)} trials, {result.metric} ({result.mode})")
    for column in ("trial", "status", "step", result.metric, *config.tune.space):
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")
    ranked = sorted(
        result.trials,
        key=lambda t: t.metrics.get(result.metric, float("nan")),
        reverse=result.mode == "max",
    )
    for trial in ranked:
        value = trial.metrics.get(result.metric)
        style = "bold green" if trial is result.best else None
        table.add_row(
            trial.name,
            trial.status if trial.error is None else f"error: {trial.error[:60]}",
            str(trial.step),
            "-" if value is None else f"{value:.4g}",
            *(_short(trial.values.get(key)) for key in config.tune.space),
            style=style,
        )
    Console().print(table)
    tracked = f"; MLflow run {result.tracking_run}" if result.tracking_run else ""
    _err.print(
        f"[green]done[/]: best {result.best.name}, {result.metric} "
        f"{result.best.metrics[result.metric]:.4g}, in {result.wall_time:.0f} s; trials in "
        f"{result.search_dir}/trials.csv{tracked}; train the best config with: "
        f"distmeta train {result.best_config}",
        soft_wrap=True,
    )
    return 0


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cmd_export(args: argparse.Namespace) -> int:
    from distmeta.tracking import export_model

    exported = export_model(args.run, args.name, alias=args.alias, tracking_uri=args.tracking_uri)
    alias = f" (alias {exported.alias})" if exported.alias else ""
    _err.print(
        f"[green]registered[/]: {exported.name} version {exported.version}{alias} in "
        f"{exported.tracking_uri}; load it as {exported.model_uri}",
        soft_wrap=True,
    )
    return 0


def _load(args: argparse.Namespace) -> Run:
    """A run folder, or a registered model (``models:/NAME@alias``) loaded like one."""
    if args.run.startswith("models:/"):
        from distmeta.tracking import load_registered_run

        return load_registered_run(args.run, args.overrides, tracking_uri=args.tracking_uri)
    return load_run(args.run, args.overrides)


def _show_adaptation(result: EvalResult) -> None:
    table = Table(title=f"{result.tasks} fresh tasks")
    table.add_column("steps", justify="right")
    table.add_column("loss (finite tasks)", justify="right")
    table.add_column("median", justify="right")
    if result.accuracy is not None:
        table.add_column("accuracy", justify="right")
    diverging = any(result.diverged)
    if diverging:
        table.add_column("diverged", justify="right")
    for i, step in enumerate(result.steps):
        row = [
            str(step),
            f"{result.loss[i]:.4f} ± {result.loss_ci95[i]:.4f}",
            f"{result.loss_median[i]:.4f}",
        ]
        if result.accuracy is not None:
            row.append(f"{100 * result.accuracy[i]:.2f}% ± {100 * result.accuracy_ci95[i]:.2f}")
        if diverging:
            row.append(str(result.diverged[i]))
        table.add_row(*row)
    Console().print(table)
    if diverging:
        _err.print(
            f"[yellow]warning[/]: {max(result.diverged)} of {result.tasks} tasks diverged "
            "(their loss is not finite); the means are over the others"
        )


def _show_comparison(result: OptimizerComparison) -> None:
    horizon, last = str(result.horizon), str(result.steps[-1])
    table = Table(title=f"{result.problems} fresh problems, training horizon {horizon} steps")
    for column in ("optimizer", "learning rate", f"log10 loss @{horizon}", f"@{last}"):
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    if result.redraw_at is not None:
        table.add_column(f"steps back after the redraw at {result.redraw_at}", justify="right")
    for name, curve in result.curves.items():
        row = [
            name,
            f"learned (step {curve.step})" if curve.lr is None else f"{curve.lr:g}",
            f"{curve.log10_final[horizon]:.3f}",
            f"{curve.log10_final[last]:.3f}"
            + (f" ({curve.diverged[-1]} diverged)" if curve.diverged[-1] else ""),
        ]
        if result.redraw_at is not None:
            row.append("-" if curve.recovery_steps is None else str(curve.recovery_steps))
        table.add_row(*row)
    Console().print(table)


_SHOW = {EvalResult: _show_adaptation, OptimizerComparison: _show_comparison}
"""How ``distmeta eval`` prints each kind of evaluation as a table."""


def _cmd_eval(args: argparse.Namespace) -> int:
    run = _load(args)
    result = evaluate_run(run, tasks=args.tasks, seed=args.seed)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        _SHOW[type(result)](result)
    return 0


# --- distmeta stream ----------------------------------------------------------------------


def _learner_rows(report: StreamReport) -> dict[str, LearnerSummary]:
    """Every learner's summary by the name the table and the warnings show: the method's
    own name, ``oracle``, then the baselines."""
    return {report.config.stream.method: report.method, "oracle": report.oracle, **report.baselines}


def _stream_table(report: StreamReport) -> Table:
    """One row per learner: online loss (accuracy for classification) overall, with its 95 %
    interval over seeds, and per mode; recovery steps, regret and switch detection F1."""
    spec = report.config.stream
    table = Table(
        title=f"online {spec.name} stream: {len(report.seeds)} seed(s), "
        f"{spec.streams} stream(s) of {spec.steps} steps"
    )
    rows = _learner_rows(report)
    classification = report.method.mean_accuracy is not None
    table.add_column("learner", no_wrap=True)
    table.add_column("accuracy %" if classification else "mean loss", justify="right")
    for mode in report.mode_names:
        table.add_column(mode.replace("_", " "), justify="right")
    for column in ("recovery steps", "regret", "switch F1"):
        table.add_column(column, justify="right")
    for name, summary in rows.items():
        overall, modes, scale = summary.mean_loss, summary.modes, 1.0
        if classification:
            overall, modes, scale = summary.mean_accuracy, summary.modes_accuracy, 100.0
        detection = summary.switch_detection
        table.add_row(
            name,
            f"{scale * overall.mean:.4g} ± {scale * overall.ci95:.2g}",
            *(f"{scale * modes[mode].mean:.4g}" for mode in report.mode_names),
            f"{summary.recovery_steps.mean:.3g}",
            f"{summary.regret.mean:.4g}",
            f"{detection['f1'].mean:.2f}" if detection and name != "oracle" else "-",
            style="bold" if name == spec.method else None,
        )
    return table


def _cmd_stream(args: argparse.Namespace) -> int:
    from distmeta.engine.rundir import RunDir
    from distmeta.runs import default_stream_dir, run_streams
    from distmeta.tracking import plot_stream

    config = load_config(args.config, args.overrides)
    if config.stream is None:
        raise ConfigError(f"{args.config}: no stream section: distmeta stream needs one")
    tracker = None
    if config.tracking.enabled:
        from distmeta.tracking import StreamTracker  # checks the store before any stream runs

        tracker = StreamTracker(config)
    run_dir = args.run_dir or default_stream_dir(config)
    spec = config.stream
    total = args.seeds * spec.streams * spec.steps
    bar = _stream_progress() if not args.no_progress else None
    task = bar.add_task("stream", total=total) if bar else None
    began = time.perf_counter()
    if bar:
        bar.start()
    try:
        report = run_streams(
            config,
            seeds=args.seeds,
            run_dir=run_dir,
            progress=(lambda done: bar.advance(task, done)) if bar else None,
        )
    finally:
        if bar:
            bar.stop()
    with tempfile.TemporaryDirectory(prefix="distmeta-stream-") as scratch:
        plot = Path(scratch) / "stream.png"
        plot_stream(report, plot, f"{spec.name} stream: online loss ({spec.method})")
        RunDir(run_dir).write_bytes("stream.png", plot.read_bytes())
    tracked = f"; MLflow run {tracker.log(report, run_dir)}" if tracker else ""
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        Console().print(_stream_table(report))
    _warn_nonfinite(report)
    rate = sum(result.stream_steps_per_s for result in report.results) / len(report.results)
    _err.print(
        f"[green]done[/]: {total} stream steps in {time.perf_counter() - began:.1f} s "
        f"({rate:.1f} stream steps/s while streaming); report, records and plot in "
        f"{run_dir}{tracked}",
        soft_wrap=True,
    )
    return 0


def _warn_nonfinite(report: StreamReport) -> None:
    """A warning on stderr for each learner with steps whose loss is not finite: its means
    are then infinite, and the count says whether that was one step or most."""
    spec = report.config.stream
    steps = len(report.seeds) * spec.streams * spec.steps
    for name, summary in _learner_rows(report).items():
        count = round(summary.nonfinite_steps.mean * len(report.seeds))
        if count:
            _err.print(
                f"[yellow]warning[/]: {name}: {count} of {steps} stream steps had a loss that "
                "is not finite (it diverged); its means include them",
                soft_wrap=True,
            )


def _stream_progress() -> Progress:
    return Progress(
        TextColumn("[bold]stream"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=_err,
        refresh_per_second=4,
    )


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dataset == "omniglot":
        path = prepare_omniglot(args.src, args.out, size=tuple(args.size))
    else:
        path = prepare_imagefolder(
            args.src, args.out, tuple(args.size), channels=args.channels, held_out=args.held_out
        )
    info = ImageSet(path).info
    _err.print(
        f"[green]prepared[/]: {info.rows} images of {info.classes} classes "
        f"({info.height}x{info.width}x{info.channels}"
        f"{', held out' if info.held_out else ''}) in {time.perf_counter() - started:.1f} s; "
        f"{path} ({Path(path).stat().st_size / 1e6:.1f} MB)",
        soft_wrap=True,
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_data_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="prepare data sets")
    actions = p.add_subparsers(dest="data_command", required=True)
    prepare = actions.add_parser(
        "prepare", help="decode an image set into a memory-mappable Arrow file"
    )
    kinds = prepare.add_subparsers(dest="dataset", required=True)
    q = kinds.add_parser("omniglot", help="Omniglot images_background/images_evaluation")
    q.add_argument("--src", required=True, help="the official .zip, or its extracted folder")
    q.add_argument("--out", required=True, help="output folder (gets <split>.arrow)")
    q.add_argument(
        "--size",
        type=_positive,
        nargs=2,
        default=[28, 28],
        metavar=("H", "W"),
        help="stored image size (default 28 28)",
    )
    q.set_defaults(handler=_cmd_data_prepare)
    q = kinds.add_parser("imagefolder", help="a folder per class (mini-ImageNet), RGB or gray")
    q.add_argument("--src", required=True, help="folder of class folders (or a zip of one)")
    q.add_argument("--out", required=True, help="output folder (gets <folder>.arrow)")
    q.add_argument("--size", type=_positive, nargs=2, required=True, metavar=("H", "W"))
    q.add_argument("--channels", type=int, choices=(1, 3), default=3, help="3 RGB, 1 gray")
    q.add_argument(
        "--held-out",
        action="store_true",
        help="a test split: evaluation uses every class of it",
    )
    q.set_defaults(handler=_cmd_data_prepare)


def _add_tracking_uri(
    parser: argparse.ArgumentParser,
    default: str = "default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db",
) -> None:
    parser.add_argument("--tracking-uri", help=f"MLflow tracking store and registry ({default})")


def _cmd_submit(args: argparse.Namespace) -> int:
    from distmeta import jobs

    job_id = jobs.submit_run(
        args.address,
        args.config,
        args.overrides,
        mlflow_uri=args.mlflow,
        run_dir=args.run_dir,
        command="tune" if args.tune else "train",
    )
    print(job_id, flush=True)
    if not args.wait:
        return 0
    status = jobs.follow_logs(args.address, job_id)
    _err.print(f"job {job_id}: {status}", style="green" if status == "SUCCEEDED" else "red")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    from distmeta import jobs

    if args.action == "status":
        print(jobs.job_status(args.address, args.job_id))
    elif args.action == "logs":
        if args.follow:
            jobs.follow_logs(args.address, args.job_id)
        else:
            print(jobs.job_logs(args.address, args.job_id), end="")
    else:
        stopped = jobs.stop_job(args.address, args.job_id)
        print("stopping" if stopped else "already ended")
    return 0


def _add_job_parsers(commands: argparse._SubParsersAction) -> None:
    address = {
        "help": "Ray dashboard address, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)",
    }
    p = commands.add_parser("submit", help="run a config on a Ray cluster as a Ray Job")
    p.add_argument("config", help="YAML experiment config, inside the current directory")
    _add_overrides(p)
    p.add_argument("--address", **address)
    p.add_argument("--wait", action="store_true", help="follow the logs; exit with the status")
    p.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI for the run")
    p.add_argument("--run-dir", help="run folder on the cluster (e.g. s3://bucket/run)")
    p.add_argument("--tune", action="store_true", help="run distmeta tune instead of train")
    p.set_defaults(handler=_cmd_submit)

    p = commands.add_parser("jobs", help="status, logs or stop of a submitted job")
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    p.add_argument("--address", **address)
    p.add_argument("--follow", action="store_true", help="logs: follow until the job ends")
    p.set_defaults(handler=_cmd_jobs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distmeta", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="meta-train an experiment config")
    p.add_argument("config", help="YAML experiment config")
    _add_overrides(p)
    p.add_argument("--run-dir", help="where the run's files go (path, s3:// or gs://)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument(
        "--no-progress", action="store_true", help="a line per logged record instead of a bar"
    )
    p.set_defaults(handler=_cmd_train)

    p = commands.add_parser(
        "eval", help="evaluate a run on fresh tasks (a learned optimizer: against tuned ones)"
    )
    p.add_argument("run", help="run directory, or a registered model: models:/NAME@ALIAS")
    _add_overrides(p)
    p.add_argument("--tasks", type=int, help="number of tasks (default: eval.tasks)")
    p.add_argument("--seed", type=int, help="seed of the tasks (default: eval.seed or seed + 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    _add_tracking_uri(p)
    p.set_defaults(handler=_cmd_eval)

    p = commands.add_parser(
        "stream", help="online (prequential) evaluation on streams of changing tasks"
    )
    p.add_argument("config", help="YAML experiment config with a stream: section")
    _add_overrides(p)
    p.add_argument("--run-dir", help="where the report, records and plot go (path or URI)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.add_argument(
        "--seeds", type=_positive, default=1, help="seeds seed, seed+1, ... (95%% intervals)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_stream)

    p = commands.add_parser("tune", help="search hyperparameters of a config with Ray Tune")
    p.add_argument("config", help="YAML experiment config with a tune: section")
    _add_overrides(p)
    p.add_argument("--run-dir", help="the search's folder (default: runs/tune-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no Tune status table")
    p.set_defaults(handler=_cmd_tune)

    p = commands.add_parser("export", help="register a finished run in the MLflow Model Registry")
    p.add_argument("run", help="run directory (holding final.pt)")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", help="alias to point at the new version, e.g. champion")
    _add_tracking_uri(p, "default: MLFLOW_TRACKING_URI, else the store that tracked the run")
    p.set_defaults(handler=_cmd_export)

    _add_data_parser(commands)
    _add_job_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DistmetaError as error:
        _err.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        _err.print("[yellow]interrupted[/]: resume with --resume from the last checkpoint")
        return 130


if __name__ == "__main__":
    sys.exit(main())
