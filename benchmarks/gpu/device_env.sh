# Sourced from the repository root by the scripts that run on the lent machine (run.sh,
# ../stream_fleet_device.sh): their settings, from the environment, with defaults: PYTHON
# (python3), CARRY (.gpu/carry), OUT (a new temporary folder, made), WORK (/tmp/distmeta-gpu:
# what unpack.py extracts).
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
