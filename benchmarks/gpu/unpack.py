"""On the GPU machine: check which distributions the measurement needs are already in the
image, then extract from ``site.tar.xz`` (built by ``pack.py``) only the ones it lacks.

A packed distribution is extracted when the image has no copy of it, or has one whose
version fails a requirement on it: distmeta's own, or one of a distribution in use (the
packed copy's requirements where that copy is extracted, the image copy's otherwise).
Extracted ones come first on ``PYTHONPATH``. Torch, NumPy and PyArrow are never packed and
must be in the image. Prints one line per distribution and writes the table as JSON; exits 1
if the interpreter is not the one the wheels were built for, or if something needed is
neither in the image nor packed. Only the standard library and ``packaging`` are used; where
the image lacks ``packaging``, its packed copy is extracted first.

    python3 benchmarks/gpu/unpack.py --carry .gpu/carry --site /tmp/site --data /tmp/data
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path


def normalize(name: str) -> str:
    """The distribution name as PEP 503 compares names."""
    return re.sub(r"[-_.]+", "-", name).lower()


IMAGE_PATH = list(sys.path)
"""Where the image's distributions are: this interpreter's path before anything is unpacked."""


def _image_copy(name: str) -> metadata.Distribution | None:
    return next(iter(metadata.distributions(name=name, path=IMAGE_PATH)), None)


def image_version(name: str) -> str | None:
    """The version of the image's copy of ``name``, if it has one."""
    dist = _image_copy(name)
    return dist.version if dist is not None else None


def image_requires(name: str) -> list[tuple[str, str]]:
    """``(name, specifier)`` of the image copy's requirements that apply here."""
    from packaging.requirements import Requirement

    found = []
    for text in _image_copy(name).requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append((normalize(requirement.name), str(requirement.specifier)))
    return found


def fits(version: str | None, specifiers: list[str]) -> bool:
    """Whether ``version`` exists and satisfies every specifier."""
    from packaging.specifiers import SpecifierSet

    if version is None:
        return False
    return all(SpecifierSet(spec).contains(version, prereleases=True) for spec in specifiers)


def choose(
    manifest: dict,
    installed: Callable[[str], str | None] = image_version,
    requires: Callable[[str], list[tuple[str, str]]] = image_requires,
) -> dict[str, dict]:
    """For each needed distribution: its image version, what is required of it, and where
    it comes from (``image``, ``packed`` or ``missing``).

    Which copy is used changes whose requirements count, so the choice is repeated until it
    no longer changes (a distribution moves to its packed copy at most once per round)."""
    dists = manifest["distributions"]
    needed = sorted(set(dists) | {normalize(name) for name in manifest["image"]})
    packed: set[str] = set()
    for _ in range(len(needed) + 1):
        wanted: dict[str, list[str]] = {name: [spec] for name, spec in manifest["roots"].items()}
        for name in needed:
            if name in packed:
                using = [tuple(pair) for pair in dists[name]["requires"]]
            else:
                using = requires(name) if installed(name) is not None else []
            for required, spec in using:
                if required in dists and spec:
                    wanted.setdefault(required, []).append(spec)
        chosen = {
            name
            for name in needed
            if dists.get(name, {}).get("packed") and not fits(installed(name), wanted.get(name, []))
        }
        if chosen == packed:
            break
        packed = chosen
    table = {}
    for name in needed:
        version, specs = installed(name), sorted(set(wanted.get(name, [])))
        if name in packed:
            source = "packed"
        elif fits(version, specs):
            source = "image"
        else:
            source = "missing"
        table[name] = {
            "image": version,
            "packed": dists[name]["version"] if dists.get(name, {}).get("packed") else None,
            "required": ",".join(specs),
            "uses": source,
        }
    return table


def extract(archive: Path, site: Path, tops: set[str]) -> int:
    """Extract the members of ``archive`` under the top-level paths ``tops``; how many."""
    count = 0
    with tarfile.open(archive, "r|xz") as tar:
        for member in tar:
            if member.name.split("/", 1)[0] in tops:
                tar.extract(member, site, filter="data")
                count += 1
    return count


def _paths(manifest: dict, names: set[str]) -> set[str]:
    return {top for name in names for top in manifest["distributions"][name]["paths"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--carry", type=Path, default=Path(".gpu/carry"))
    parser.add_argument("--site", type=Path, required=True, help="where packed ones go")
    parser.add_argument("--data", type=Path, required=True, help="where the data set goes")
    parser.add_argument("--report", type=Path, help="write the table here as JSON")
    parser.add_argument(
        "--allow-missing",
        nargs="*",
        default=[],
        metavar="NAME",
        help="report these as missing but go on (the CPU dry run's check of the device's "
        "archive, with a Python that has no torch, NumPy or PyArrow)",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    manifest = json.loads((args.carry / "manifest.json").read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != manifest["python"]:
        raise SystemExit(
            f"this is Python {here}; {args.carry} holds wheels for {manifest['python']}"
        )
    archive = args.carry / manifest["site"]
    args.site.mkdir(parents=True, exist_ok=True)
    try:
        import packaging  # noqa: F401
    except ImportError:
        extract(archive, args.site, _paths(manifest, {"packaging"}))
        sys.path.insert(0, str(args.site))
        print("packaging: not in the image, its packed copy reads the requirements")

    table = choose(manifest)
    print(f"{'distribution':<27} {'image':<14} {'packed':<14} {'required':<18} uses")
    for name, row in table.items():
        print(
            f"{name:<27} {row['image'] or '-':<14} {row['packed'] or '-':<14} "
            f"{row['required'] or '-':<18} {row['uses']}"
        )
    missing = [name for name, row in table.items() if row["uses"] == "missing"]
    extracted = {name for name, row in table.items() if row["uses"] == "packed"}
    lacking = sorted(name for name, row in table.items() if row["image"] is None)
    print(f"the image lacks {len(lacking)} of {len(table)}: {', '.join(lacking) or 'none'}")
    files = extract(archive, args.site, _paths(manifest, extracted))
    args.data.mkdir(parents=True, exist_ok=True)
    data = manifest.get("data")
    if data and (args.carry / data).is_file():
        with tarfile.open(args.carry / data, "r|xz") as tar:
            tar.extractall(args.data, filter="data")
        where = f"the data into {args.data}"
    else:
        where = "no data (none carried: the measurement makes synthetic images)"
    seconds = time.perf_counter() - began
    print(
        f"extracted {len(extracted)} distributions ({files} files) into {args.site} and "
        f"{where} in {seconds:.1f} s"
    )
    if args.report:
        report = {"python": sys.version, "seconds": seconds, "distributions": table}
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    allowed = {normalize(name) for name in args.allow_missing}
    missing = [name for name in missing if name not in allowed]
    if missing:
        raise SystemExit(
            f"needed, but neither in the image in a fitting version nor packed: {missing}"
        )


if __name__ == "__main__":
    main()
