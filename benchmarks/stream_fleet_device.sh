#!/usr/bin/env bash
# Issue 18's fleet throughput (benchmarks/stream_fleet.py --no-quality) on the lent device
# machine's 16 idle CPU cores: 8 sinusoid streams on 1 and then 2 Ray task workers, where this
# 2-core machine's driver, learner and Ray processes share the workers' cores. No GPU is used.
# Ray comes from the issue-20 carry (benchmarks/gpu/README.md: pack.py, unpack.py); the
# fleet starts from the run folders of configs/stream_sinusoid.yaml, which must travel too:
#   run tool: command "bash benchmarks/stream_fleet_device.sh",
#             carry [".gpu/carry", "runs/stream_sinusoid/maml", "runs/stream_sinusoid/joint"]
# Arguments go to stream_fleet.py after ours (default: --steps 200 --repeats 3). Its output
# lands in $OUT/fleet.log. Settings, from the environment: those of gpu/device_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu/device_env.sh
args=("$@")
[ $# -gt 0 ] || args=(--steps 200 --repeats 3)
began=$SECONDS
unpacked=$("$PYTHON" benchmarks/gpu/unpack.py --carry "$CARRY" --site "$WORK/site" \
  --data "$WORK/data" --report "$WORK/modules.json" 2>&1) || { echo "$unpacked"; exit 1; }
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "cores: $(nproc --all); unpacked in $((SECONDS - began)) s"
  "$PYTHON" benchmarks/stream_fleet.py configs/stream_sinusoid.yaml --streams 8 --no-quality \
    "${args[@]}"
} 2>&1 | tee "$OUT/fleet.log"
echo "stream_fleet_device.sh: $((SECONDS - began)) s in all; results in $OUT/fleet.log"
