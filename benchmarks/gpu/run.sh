#!/usr/bin/env bash
# The one command of the GPU call of issue 20 (benchmarks/gpu/README.md): check the image and
# unpack what pack.py built (unpack.py), then measure (ray_gpu.py, its options after ours).
# Everything it reports lands in $OUT, which the device tool brings back:
#   modules.json, unpack.txt   which distributions the image had, which were unpacked
#   env.json, results.jsonl, summary.md, log.txt   the measurement
# Settings, from the environment: those of device_env.sh (PYTHON, CARRY, OUT, WORK).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benchmarks/gpu/device_env.sh

began=$SECONDS
"$PYTHON" benchmarks/gpu/unpack.py --carry "$CARRY" --site "$WORK/site" --data "$WORK/data" \
  --report "$OUT/modules.json" 2>&1 | tee "$OUT/unpack.txt"
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" benchmarks/gpu/ray_gpu.py --data "$WORK/data/omniglot" --out "$OUT" "$@" 2>&1 |
  tee "$OUT/log.txt"
echo "run.sh: $((SECONDS - began)) s in all; results in $OUT"
