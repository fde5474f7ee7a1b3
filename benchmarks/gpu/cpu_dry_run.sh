#!/usr/bin/env bash
# The CPU dry run of the GPU recipe (benchmarks/gpu/README.md): every step of the device call,
# on a machine without a GPU.
#   1. The device's own archive (.gpu/carry, CPython 3.12, built by pack.py): its size and
#      listing, then unpack.py with a bare CPython 3.12 (no torch, NumPy or PyArrow: those
#      are reported missing and allowed) and `import ray` from what it unpacked, a local Ray
#      on 127.0.0.1 running one task. Skipped, and said so, where no python3.12 is found.
#   2. pack.py for this machine's CPython into $DRY/carry (the same versions; xz preset 1 to
#      spare the shared cores).
#   3. A bare virtual environment (venv --without-pip) whose only packages are torch, NumPy
#      and PyArrow with what torch needs, linked from this environment: the image's
#      stand-in, no Ray, no pydantic, nothing else.
#   4. run.sh with that environment's python and --tiny; the results land in $DRY/out.
# Run from the project's activated environment (after . ../shared/offline-env.sh):
#   bash benchmarks/gpu/cpu_dry_run.sh [DRY, default /tmp/distmeta-gpu-dry]
# Settings: PY312 (a CPython 3.12; default python3.12 on PATH or pyenv's), SKIP_PACK=1 (reuse
# $DRY/carry).
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=${1:-/tmp/distmeta-gpu-dry}
if [ -z "${PY312:-}" ]; then  # the first CPython 3.12 that runs (a pyenv shim may not)
  for candidate in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
    if "$candidate" -c '' 2>/dev/null; then PY312=$candidate; break; fi
  done
fi
PY312=${PY312:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$DRY"
began=$SECONDS

echo "== 1. the device's archive (.gpu/carry)"
python3 - <<'EOF'
import json, tarfile
from pathlib import Path
carry = Path(".gpu/carry")
manifest = json.loads((carry / "manifest.json").read_text())
assert manifest["python"] == "3.12", manifest["python"]
total = sum(p.stat().st_size for p in carry.iterdir())
with tarfile.open(carry / manifest["site"], "r:xz") as tar:
    tops = {m.name.split("/", 1)[0] for m in tar}
    members = len(tar.getmembers())
wanted = {t for d in manifest["distributions"].values() for t in d.get("paths", [])}
assert tops == wanted, sorted(tops ^ wanted)
assert "ray" in tops and "torch" not in tops, sorted(tops)
print(f"site.tar.xz: {members} members, {len(tops)} top-level paths; carry {total / 2**20:.1f} MiB")
assert total <= 60 * 2**20, "the carry is over 60 MiB"
EOF
if [ -n "$PY312" ]; then
  rm -rf "$DRY/bare312" "$DRY/site312" "$DRY/data312"
  "$PY312" -m venv --without-pip "$DRY/bare312"
  nice -n 19 "$DRY/bare312/bin/python" benchmarks/gpu/unpack.py --carry .gpu/carry \
    --site "$DRY/site312" --data "$DRY/data312" --allow-missing torch numpy pyarrow
  PYTHONPATH="$DRY/site312" nice -n 19 "$DRY/bare312/bin/python" - <<'EOF'
import logging, sys
import ray
assert "/site312/" in ray.__file__, ray.__file__
ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=1, include_dashboard=False,
         logging_level=logging.WARNING, object_store_memory=2**27)
@ray.remote
def square(x):
    return x * x
assert ray.get(square.remote(7)) == 49
ray.shutdown()
print(f"CPython {sys.version.split()[0]}: ray {ray.__version__} from {ray.__file__} ran a task")
EOF
else
  echo "no python3.12 here: step 1 checked the archive's listing only"
fi
step1=$SECONDS

python=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
echo "== 2. pack.py for CPython $python into $DRY/carry"
if [ "${SKIP_PACK:-0}" != 1 ] || [ ! -f "$DRY/carry/manifest.json" ]; then
  nice -n 19 python3 benchmarks/gpu/pack.py --python-version "$python" --out "$DRY/carry" \
    --xz-preset 1 2>&1 | grep -v "^WARNING: Location"
fi
packed=$SECONDS

echo "== 3. the image's stand-in: $DRY/bare"
rm -rf "$DRY/bare" "$DRY/image"
python3 -m venv --without-pip "$DRY/bare"
python3 - "$DRY/image" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
image = Path(sys.argv[1])
image.mkdir()
queue, seen = ["torch", "numpy", "pyarrow"], set()
while queue:
    dist = metadata.distribution(queue.pop())
    name = dist.metadata["Name"].lower()
    if name in seen:
        continue
    seen.add(name)
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            queue.append(req.name)
    for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
        source = Path(dist.locate_file(top))
        if source.exists() and not (image / top).exists():
            (image / top).symlink_to(source)
print(f"linked {len(seen)} distributions: {', '.join(sorted(seen))}")
EOF
site=$("$DRY/bare/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$DRY/image" >"$site/image.pth"

echo "== 4. run.sh --tiny"
rm -rf "$DRY/work" "$DRY/out"
PYTHON="$DRY/bare/bin/python" CARRY="$DRY/carry" WORK="$DRY/work" OUT="$DRY/out" \
  nice -n 19 bash benchmarks/gpu/run.sh --tiny --deadline-s 3600
echo "cpu_dry_run.sh: archive check $((step1 - began)) s, pack $((packed - step1)) s," \
  "the rest $((SECONDS - packed)) s; results in $DRY/out"
