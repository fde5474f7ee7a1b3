#!/usr/bin/env bash
# Issue 19's learned-optimizer benchmarks in one call of the lent device machine, used for its
# 16 CPU cores (the runs are CPU work: BENCHMARKS.md, "How an L2L step runs on a CPU"): the
# sinusoid optimizer tested on the 40-40 MLP and the non-stationary quadratic, 3 seeds each,
# and MAML with the lstm inner rule against SGD, 2 seeds; every run in parallel, each on 2
# task threads of single-threaded operations. Each job's run folders land in $OUT/runs/JOB,
# its output in $OUT/JOB.log; the same command here with --root on folders gathered from
# them prints the tables without training again (the scripts reuse final.pt and a saved
# evaluation).
#   run tool: command "bash benchmarks/lstm_device.sh", carry [".gpu/carry"] (pack.py)
# Arguments: the families to run (default: sinusoid redraw maml). Settings, from the
# environment: PYTHON (python3), OUT (a new temporary folder), WORK (/tmp/distmeta-gpu: what
# unpack.py extracts), LIMIT (540: seconds any one job may run), THREADS (2 task threads).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WORK=${WORK:-/tmp/distmeta-gpu}
LIMIT=${LIMIT:-540}
THREADS=${THREADS:-2}
FAMILIES=" ${*:-sinusoid redraw maml} "
mkdir -p "$OUT/runs"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 DO_NOT_TRACK=true
began=$SECONDS
"$PYTHON" benchmarks/gpu/unpack.py --carry .gpu/carry --site "$WORK/site" --data "$WORK/data" \
  --report "$OUT/modules.json" >"$OUT/unpack.txt" 2>&1 || { cat "$OUT/unpack.txt"; exit 1; }
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nproc --all >"$OUT/nproc.txt"

job() {  # job NAME SCRIPT ARGS...: one benchmark in the background, in its own root folder
  local name=$1
  shift
  timeout "$LIMIT" "$PYTHON" "$@" --root "$OUT/runs/$name" >"$OUT/$name.log" 2>&1 &
}
threads=(--set "algorithm.task_threads=$THREADS")
for seed in 1 2 3; do
  [[ $FAMILIES == *" sinusoid "* ]] && job "sinusoid-$seed" benchmarks/lstm_optimizer.py \
    configs/lstm_sinusoid.yaml --seeds "$seed" --eval-set "model.hidden=[40,40]" "${threads[@]}"
  [[ $FAMILIES == *" redraw "* ]] && job "redraw-$seed" benchmarks/lstm_optimizer.py \
    configs/lstm_quadratic.yaml --seeds "$seed" --set task.redraw_at=50 \
    --set train.steps=1500 --name redraw "${threads[@]}"
done
for seed in 1 2; do
  for scale in 0.01 0.1; do
    [[ $FAMILIES == *" maml "* ]] && job "maml-$scale-$seed" benchmarks/lstm_maml_inner.py \
      --seeds "$seed" --steps 300 --meta-batch 10 "${threads[@]}" \
      --lstm-set "algorithm.lstm.momenta=[0.5,0.9,0.99]" --lstm-set algorithm.lstm.direct=true \
      --lstm-set "algorithm.lstm.scale=$scale" --name "momenta-$scale"
  done
done
wait
echo "lstm_device.sh: $((SECONDS - began)) s in all; results in $OUT"
tail -n 30 "$OUT"/*.log
