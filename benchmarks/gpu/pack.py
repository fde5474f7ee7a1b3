"""Build what the GPU call of issue 20 carries: Ray and the other runtime dependencies of the
measurement, as one xz-compressed tree, and the prepared Omniglot data.

The lent GPU machine reaches no package registry and takes at most 64 MiB per call (the
working tree included); Ray's wheel alone is 79 MB. This script, run here where pip reaches
PyPI, downloads the wheels of the target CPython (3.12 on the lent machine) for the versions
installed in this environment, installs them into a folder with ``pip --target``, prunes what
a run never loads (``PRUNED``), and writes ``site.tar.xz`` (``xz -9``) with a
``manifest.json`` that ``unpack.py`` reads on the device: each distribution's version, its
requirements on the target, and the top-level paths that are its files. Torch, NumPy and
PyArrow are never packed (``IN_IMAGE``): large, and in the machine's image. Everything else
the measurement needs is packed even where the image is expected to have it, and
``unpack.py`` extracts only what the image lacks or holds in a version that does not fit.

Run it from the repository root with the project's environment (pip, ``packaging`` and
distmeta installed)::

    python benchmarks/gpu/pack.py                          # .gpu/carry, for CPython 3.12
    python benchmarks/gpu/pack.py --python-version 3.11 --out /tmp/carry311  # CPU stand-in

It ends with the sizes and fails if the carry folder and the working tree together exceed
the 64 MiB a call may send.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
LIMIT_MIB = 64
"""What one device call may send: the working tree and the carried paths together."""

ROOTS = ("ray", "pydantic", "pyyaml", "numpy", "pyarrow", "pillow")
"""What the measurement imports beyond torch and the standard library: Ray's core (no extras:
no dashboard is started), distmeta's config schema and YAML, NumPy, and Arrow and Pillow for
the data (``distmeta.data`` loads its image decoder with its Arrow reader).
The CPU dry run in a bare environment (``cpu_dry_run.sh``) shows that nothing else is
needed."""
IN_IMAGE = ("torch", "numpy", "pyarrow")
"""Never packed: large, in the machine's image (KINDS.md), and torch there is built against
the image's NumPy. ``unpack.py`` still checks that they are there."""
PRUNED = {
    "bin": "console scripts, whose first line names this machine's Python",
    "ray/jars": "the Java workers' classes (33 MiB, already compressed)",
    "ray/dashboard/client": "the dashboard's web pages (no dashboard is started)",
}
"""Paths under the installed tree that no run of the measurement loads, and why."""
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in (17, 24, 27, 28, 31, 34, 35)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
"""Wheel platforms the machine runs (x86-64, a glibc of at least 2.35): pip matches each
tag exactly."""


def _target(python: str) -> dict[str, str]:
    """The environment markers of the target interpreter (CPython on x86-64 Linux)."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def closure(python: str) -> tuple[dict[str, str], dict[str, dict]]:
    """distmeta's requirements on the roots, and every distribution the roots need on the
    target: its version installed here, the requirements ``[name, specifier]`` that apply
    there, and whether it is packed."""
    environment = _target(python)
    own = [Requirement(text) for text in metadata.requires("distmeta") or []]
    roots = {canonicalize_name(r.name): str(r.specifier) for r in own if r.name in ROOTS}
    found: dict[str, dict] = {}
    queue = [canonicalize_name(name) for name in ROOTS]
    while queue:
        name = queue.pop(0)
        if name in found:
            continue
        requires = []
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                requires.append([canonicalize_name(requirement.name), str(requirement.specifier)])
        packed = name not in IN_IMAGE
        found[name] = {"version": metadata.version(name), "requires": requires, "packed": packed}
        if packed:
            queue += [required for required, _ in requires]
    return roots, found


def _pip(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", *map(str, args)], check=True)


def _target_options(python: str) -> list[str]:
    platforms = [option for tag in PLATFORMS for option in ("--platform", tag)]
    return [
        "--only-binary=:all:",
        *("--python-version", python, "--implementation", "cp"),
        *platforms,
    ]


def download(found: dict[str, dict], python: str, wheels: Path) -> list[Path]:
    """The target's wheels of the packed distributions, downloaded into ``wheels`` (files
    already there are reused)."""
    pins = {name: info["version"] for name, info in found.items() if info["packed"]}
    _pip("download", "-q", "--no-deps", *_target_options(python), "-d", wheels,
         *(f"{name}=={version}" for name, version in pins.items()))  # fmt: skip
    version_info = tuple(int(part) for part in python.split("."))
    supported = {
        *tags.cpython_tags(version_info, platforms=PLATFORMS),
        *tags.compatible_tags(version_info, f"cp{python.replace('.', '')}", PLATFORMS),
    }
    chosen: dict[str, Path] = {}
    for path in sorted(wheels.glob("*.whl")):
        name, version, _, wheel_tags = parse_wheel_filename(path.name)
        if pins.get(name) == str(version) and supported & wheel_tags:
            chosen[name] = path
    if missing := sorted(set(pins) - set(chosen)):
        raise SystemExit(f"no wheel for {missing} in {wheels}")
    return [chosen[name] for name in sorted(chosen)]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def stage(wheels: list[Path], python: str, site: Path, found: dict[str, dict]) -> dict:
    """Install ``wheels`` into ``site`` for the target, prune ``PRUNED``, and record each
    packed distribution's top-level paths in ``found``. Returns the sizes in bytes."""
    _pip("install", "-q", "--no-deps", "--no-index", "--no-compile", *_target_options(python),
         "--target", site, *wheels)  # fmt: skip
    installed = _size(site)
    pruned = {}
    for relative in PRUNED:
        path = site / relative
        if path.exists():
            pruned[relative] = _size(path)
            subprocess.run(["rm", "-rf", str(path)], check=True)
    for dist in metadata.distributions(path=[str(site)]):
        name = canonicalize_name(dist.metadata["Name"])
        tops = {Path(str(file)).parts[0] for file in dist.files or []}
        found[name]["paths"] = sorted(top for top in tops if top != ".." and (site / top).exists())
    return {"wheels": sum(_size(w) for w in wheels), "installed": installed, "pruned": pruned}


def _xz(archive: Path, folder: Path, names: list[str], preset: int = 9) -> float:
    """Write ``names`` under ``folder`` into ``archive`` (xz ``preset``); seconds taken."""
    began = time.perf_counter()
    with tarfile.open(archive, "w:xz", preset=preset) as tar:
        for name in names:
            tar.add(folder / name, arcname=name)
    return time.perf_counter() - began


def prepare_data(zip_path: Path, out: Path, preset: int = 9) -> dict:
    """The prepared Omniglot background set (``distmeta data prepare``), xz-compressed."""
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "omniglot"
        subprocess.run(
            [sys.executable, "-m", "distmeta.cli", "data", "prepare", "omniglot",
             "--src", str(zip_path), "--out", str(prepared)],
            check=True,
        )  # fmt: skip
        seconds = _xz(out / "omniglot.tar.xz", Path(folder), ["omniglot"], preset)
        return {"prepared": _size(prepared), "seconds": seconds}


def travelling_tree() -> int:
    """Bytes of the working tree a device call sends besides the carried paths: tracked
    files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    return sum(_size(REPO / name) for name in listed if name and (REPO / name).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the target CPython")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu" / "carry")
    parser.add_argument("--wheels", type=Path, help="download folder (.gpu/wheels-cpXY)")
    parser.add_argument(
        "--omniglot",
        type=Path,
        default=REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip",
        help="Omniglot's images_background.zip; where it is missing, no data is carried and "
        "the measurement runs on synthetic images (and says so)",
    )
    parser.add_argument(
        "--xz-preset", type=int, default=9, help="9 for the device; the dry run takes 1"
    )
    args = parser.parse_args()
    python = args.python_version
    out = args.out.resolve()
    if out.is_relative_to(REPO):
        check = subprocess.run(["git", "check-ignore", "-q", str(out)], cwd=REPO, check=False)
        if check.returncode != 0:
            raise SystemExit(f"{out} is not ignored by git: it would travel, and be committed")
    wheels = args.wheels or REPO / ".gpu" / f"wheels-cp{python.replace('.', '')}"
    wheels.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()

    roots, found = closure(python)
    files = download(found, python, wheels)
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        sizes = stage(files, python, site, found)
        sizes["unpacked"] = _size(site)
        names = sorted({top for info in found.values() for top in info.get("paths", [])})
        sizes["xz_seconds"] = _xz(out / "site.tar.xz", site, names, args.xz_preset)
    sizes["site.tar.xz"] = _size(out / "site.tar.xz")
    if args.omniglot.is_file():
        data = prepare_data(args.omniglot, out, args.xz_preset)
        sizes["data_prepared"], sizes["data_xz_seconds"] = data["prepared"], data["seconds"]
        sizes["omniglot.tar.xz"] = _size(out / "omniglot.tar.xz")
    else:
        print(f"{args.omniglot} not found: no data carried, the device run uses synthetic images")
    manifest = {
        "python": python,
        "roots": roots,
        "image": list(IN_IMAGE),
        "distributions": found,
        "site": "site.tar.xz",
        "data": "omniglot.tar.xz" if "omniglot.tar.xz" in sizes else None,
        "sizes": sizes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    carried, tree = _size(out), travelling_tree()

    mib = 2**20
    print(f"\nCPython {python}: {len(files)} wheels packed; left to the image: {IN_IMAGE}")
    for name, info in sorted(found.items()):
        print(f"  {name:<28} {info['version']:<12} {'packed' if info['packed'] else 'image'}")
    print(f"wheels {sizes['wheels'] / mib:.1f} MiB, installed {sizes['installed'] / mib:.1f} MiB")
    for path, size in sizes["pruned"].items():
        print(f"  pruned {path}: {size / mib:.1f} MiB ({PRUNED[path]})")
    print(
        f"site.tar.xz {sizes['site.tar.xz'] / mib:.1f} MiB from {sizes['unpacked'] / mib:.1f} "
        f"MiB in {sizes['xz_seconds']:.0f} s (xz preset {args.xz_preset})"
    )
    if "omniglot.tar.xz" in sizes:
        print(
            f"omniglot.tar.xz {sizes['omniglot.tar.xz'] / mib:.1f} MiB from "
            f"{sizes['data_prepared'] / mib:.1f} MiB"
        )
    print(
        f"carry {out}: {carried / mib:.1f} MiB; working tree {tree / mib:.1f} MiB; "
        f"together {(carried + tree) / mib:.1f} of {LIMIT_MIB} MiB"
    )
    if carried + tree > LIMIT_MIB * mib:
        raise SystemExit("over the limit of one device call")


if __name__ == "__main__":
    main()
