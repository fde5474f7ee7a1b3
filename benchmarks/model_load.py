"""How long a registered model takes to load and adapt: the sinusoid MLP and the Omniglot Conv4.

For each model a short run is trained and exported (``--alias champion``) to a store in a
temporary folder (the embedded sqlite store, or ``--server`` for a local ``mlflow server``).
Then several fresh Python processes each import MLflow's pyfunc (timed apart: it is the same
for every model), load ``models:/NAME@champion`` with ``mlflow.pyfunc.load_model`` and predict
one task (adapt to its support set, predict its query set), then predict it again (warm).
The table shows medians over the processes. Torch runs one intra-op thread (``--threads``):
on a small shared machine its idle threads otherwise spin and make single calls 10-50x slower
at random.

    . ../shared/offline-env.sh
    python benchmarks/model_load.py                    # Omniglot needs data/omniglot prepared
    python benchmarks/model_load.py --server --processes 5

The Omniglot model needs the prepared background split (see configs/omniglot_5w1s_maml.yaml);
without it only the sinusoid model is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import distmeta as dm
from distmeta.config import apply_overrides, parse_config, read_yaml
from distmeta.experiment import build_task_source
from distmeta.tracking import export_model
from distmeta.tracking.pyfunc import input_example

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking_overhead import local_mlflow_server  # one server helper for both benchmarks

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    "sinusoid-mlp": {
        "task": {"name": "sinusoid", "shots": 10, "query": 10},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "algorithm": {"name": "maml", "inner_lr": 0.01},
        "eval": {"query": 100},
    },
    "omniglot-conv4": REPO / "configs" / "omniglot_5w1s_maml.yaml",
}

CHILD = """
import json, sys, time
started = time.perf_counter()
import mlflow.pyfunc, pandas as pd
imported = time.perf_counter()
model = mlflow.pyfunc.load_model(sys.argv[1])
loaded = time.perf_counter()
request = pd.DataFrame(**json.loads(open(sys.argv[2]).read()))
model.predict(request)
first = time.perf_counter()
model.predict(request)
second = time.perf_counter()
print(json.dumps({
    "import s": imported - started,
    "load s": loaded - imported,
    "adapt+predict s": first - loaded,
    "load+adapt s": first - imported,
    "warm predict s": second - first,
}))
"""


def _train_and_export(name: str, spec, root: Path, uri: str) -> Path:
    """Train a few steps of ``spec``, export it as ``name@champion``; the request file."""
    raw = read_yaml(spec) if isinstance(spec, Path) else spec
    short = ["train.steps=3", "train.meta_batch_size=2", "train.checkpoint_every=3"]
    config = parse_config(apply_overrides(raw, [*short, "tracking.enabled=false"]))
    run_dir = root / name
    dm.train(config, run_dir=str(run_dir), progress=False)
    export_model(run_dir, name, alias="champion", tracking_uri=uri)
    seed = config.eval.seed if config.eval.seed is not None else config.seed + 1
    batch = build_task_source(config, split="eval").sample(seed, 0, [0])
    request = input_example(batch, config.algorithm.inner_steps, query=batch.query_x.shape[1])
    path = root / f"{name}.json"
    path.write_text(json.dumps(request.to_dict(orient="split", index=False)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per model")
    parser.add_argument("--server", action="store_true", help="register in a local mlflow server")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="distmeta-load-") as scratch:
        root = Path(scratch)
        store = (
            local_mlflow_server(root)
            if args.server
            else nullcontext(f"sqlite:///{root / 'mlflow.db'}")
        )
        with store as uri:
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(args.threads)}
            for name, spec in MODELS.items():
                try:
                    request = _train_and_export(name, spec, root, uri)
                except dm.DataError as error:
                    print(f"{name}: skipped ({error})", file=sys.stderr)
                    continue
                samples = []
                for _ in range(args.processes):
                    done = subprocess.run(
                        [sys.executable, "-c", CHILD, f"models:/{name}@champion", str(request)],
                        capture_output=True,
                        text=True,
                        env=env,
                        check=True,
                    )
                    samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
                results[name] = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    where = "mlflow server (http)" if args.server else "embedded sqlite"
    print(
        f"store: {where}; medians of {args.processes} fresh processes; one task per predict; "
        f"torch threads {args.threads}"
    )
    columns = list(next(iter(results.values())))
    print(f"{'':>16}" + "".join(f"{c:>17}" for c in columns))
    for name, row in results.items():
        print(f"{name:>16}" + "".join(f"{row[c]:17.3f}" for c in columns))


if __name__ == "__main__":
    main()
