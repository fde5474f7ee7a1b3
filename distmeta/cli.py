"""The ``distmeta`` command line: train, eval (and the subcommands of later layers).

Every error distmeta raises on purpose becomes one red line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from distmeta.config import load_config
from distmeta.engine import evaluate, load_run, train
from distmeta.errors import DistmetaError

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


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    result = train(config, run_dir=args.run_dir, resume=args.resume, progress=not args.no_progress)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if isinstance(v, float))
    _err.print(
        f"[green]done[/]: {result.steps} steps in {result.wall_time:.1f} s "
        f"({result.tasks_per_second:.0f} tasks/s); {summary}; run in {result.run_dir}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.overrides)
    result = evaluate(run, tasks=args.tasks, seed=args.seed)
    if not args.json:
        table = Table(title=f"{result.tasks} fresh tasks")
        table.add_column("steps", justify="right")
        table.add_column("loss", justify="right")
        if result.accuracy is not None:
            table.add_column("accuracy", justify="right")
        for i, step in enumerate(result.steps):
            row = [str(step), f"{result.loss[i]:.4f} ± {result.loss_ci95[i]:.4f}"]
            if result.accuracy is not None:
                row.append(f"{100 * result.accuracy[i]:.2f}% ± {100 * result.accuracy_ci95[i]:.2f}")
            table.add_row(*row)
        Console().print(table)
    else:
        print(json.dumps(result.to_dict()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distmeta", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="meta-train an experiment config")
    p.add_argument("config", help="YAML experiment config")
    _add_overrides(p)
    p.add_argument("--run-dir", help="where the run's files go (path, s3:// or gs://)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)

    p = commands.add_parser("eval", help="evaluate a run on fresh tasks")
    p.add_argument("run", help="run directory")
    _add_overrides(p)
    p.add_argument("--tasks", type=int, help="number of tasks (default: eval.tasks)")
    p.add_argument("--seed", type=int, help="seed of the tasks (default: eval.seed or seed + 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.set_defaults(handler=_cmd_eval)
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
