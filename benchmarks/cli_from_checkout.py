"""The ``distmeta`` command run from another checkout of the repository (an older commit in a
``git worktree``), for whole-process A/B timings of two versions in one environment.

An editable install puts its own finder for ``distmeta`` ahead of ``sys.path``, so setting
``PYTHONPATH`` to the other checkout is not enough; this script removes that finder first.

    git worktree add /tmp/before HEAD~1
    farm-bench -n 5 --vs "python benchmarks/cli_from_checkout.py /tmp/before stream CONFIG ..." \\
        -- python benchmarks/cli_from_checkout.py . stream CONFIG ...
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} CHECKOUT [distmeta arguments ...]")
    root = os.path.abspath(sys.argv[1])
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if not getattr(finder, "__module__", "").startswith("__editable__")
    ]
    sys.path.insert(0, root)
    import distmeta
    from distmeta.cli import main as distmeta_main

    if not distmeta.__file__.startswith(root):
        sys.exit(f"distmeta was imported from {distmeta.__file__}, not from {root}")
    return distmeta_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
