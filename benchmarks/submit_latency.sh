#!/usr/bin/env bash
# From `ray start --head` to a finished 100-step sinusoid job submitted with `distmeta submit`
# (issue 7 target: under 60 s on this machine). Token authentication on, loopback only.
#   bash benchmarks/submit_latency.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$here/../shared/offline-env.sh" ] && . "$here/../shared/offline-env.sh"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
RAY_AUTH_TOKEN=$(python -c "import secrets; print(secrets.token_hex(16))")
work=$(mktemp -d)
# A private Ray temp folder: the address file `ray start` leaves there must not outlive the head.
RAY_TMPDIR=$(mktemp -d /tmp/rhXXXX)
export RAY_TMPDIR
cat > "$work/sinusoid.yaml" <<'YAML'
task: {shots: 10, query: 10}
train: {steps: 100, meta_batch_size: 25, checkpoint_every: 100, log_every: 50}
eval: {tasks: 100}
YAML
began=$(date +%s.%N)
setsid ray start --head --block --node-ip-address=127.0.0.1 --port=6391 \
  --dashboard-host=127.0.0.1 --dashboard-port=8291 --disable-usage-stats > "$work/head.log" 2>&1 &
head=$!
trap 'kill -TERM -- -$head 2>/dev/null; sleep 5; kill -KILL -- -$head 2>/dev/null; rm -rf "$work" "$RAY_TMPDIR"' EXIT
until python -c "from ray.job_submission import JobSubmissionClient as C; C('http://127.0.0.1:8291').get_version()" 2>/dev/null; do sleep 0.5; done
ready=$(date +%s.%N)
(cd "$work" && distmeta submit --address http://127.0.0.1:8291 sinusoid.yaml --wait \
  --mlflow "sqlite:///$work/mlflow.db" > "$work/job.log" 2>&1)
ended=$(date +%s.%N)
grep "^done:" "$work/job.log" || true
python -c "b, r, e = $began, $ready, $ended; print(f'head up {r - b:.1f} s, job {e - r:.1f} s, total {e - b:.1f} s')"
