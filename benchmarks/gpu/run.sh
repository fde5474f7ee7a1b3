#!/usr/bin/env bash
# The one command of the GPU call of issue 20 (benchmarks/gpu/README.md): check the image and
# unpack what pack.py built (unpack.py), then measure (ray_gpu.py, its options after ours).
# Everything it reports lands in $OUT, which the device tool brings back:
#   modules.json, unpack.txt   which distributions the image had, which were unpacked
#   env.json, results.jsonl, summary.md, log.txt   the measurement
# Settings, from the environment: PYTHON (python3), CARRY (.gpu/carry), OUT (a new temporary
# folder), WORK (/tmp/distmeta-gpu: the unpacked tree and data).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
CARRY=${CARRY:-.gpu/carry}
OUT=${OUT:-$(mktemp -d)}
WORK=${WORK:-/tmp/distmeta-gpu}
mkdir -p "$OUT"

# What ../shared/offline-env.sh sets, which does not travel: Ray on loopback, no calls home.
export RAY_USAGE_STATS_ENABLED=0 RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/ \
  RAY_AUTH_MODE=disabled DO_NOT_TRACK=true PYTHONUNBUFFERED=1
# The lent machine's memory total can start low and grow with use (H200.md); Ray's memory
# monitor would take that for pressure and kill workers.
export RAY_memory_monitor_refresh_ms=0

began=$SECONDS
"$PYTHON" benchmarks/gpu/unpack.py --carry "$CARRY" --site "$WORK/site" --data "$WORK/data" \
  --report "$OUT/modules.json" 2>&1 | tee "$OUT/unpack.txt"
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" benchmarks/gpu/ray_gpu.py --data "$WORK/data/omniglot" --out "$OUT" "$@" 2>&1 |
  tee "$OUT/log.txt"
echo "run.sh: $((SECONDS - began)) s in all; results in $OUT"
