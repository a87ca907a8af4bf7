"""Write requirements.txt: every package the Function App needs at run time, pinned.

The direct dependencies are listed in requirements.in. Their transitive closure is read from the
installed distributions' metadata (markers evaluated for this interpreter, which is the
production one: CPython 3.11 on Linux), and each package is pinned at the version
requirements.lock.txt holds, the set the tests ran on. A package of the closure missing from the
lock, or installed at another version than the lock says, is an error: regenerate the lock first.

    PYTHONPATH=$PWD .venv/bin/python scripts/pin_requirements.py          # write
    PYTHONPATH=$PWD .venv/bin/python scripts/pin_requirements.py --check  # exit 1 when stale
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "# Runtime dependencies of the Function App, deployed with it: every package, transitive ones\n"
    "# included, pinned at requirements.lock.txt's versions (the set the tests ran on).\n"
    "# Generated from requirements.in by scripts/pin_requirements.py; do not edit by hand.\n"
)


class PinError(Exception):
    """The closure cannot be pinned: a package is not installed or not in the lock."""


def read_names(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def read_lock(path: Path) -> dict[NormalizedName, tuple[str, str]]:
    """Normalized name -> (name as spelled in the lock, version)."""
    pins: dict[NormalizedName, tuple[str, str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise PinError(f"{path.name}: {line!r} is not pinned with ==")
        pins[canonicalize_name(name)] = (name.strip(), version.strip())
    return pins


def closure(roots: list[Requirement]) -> dict[NormalizedName, set[str]]:
    """Every distribution the roots need at run time -> the names of what pulls it in."""
    needed: dict[NormalizedName, set[str]] = {}
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    stack: list[tuple[Requirement, str]] = [(req, "requirements.in") for req in roots]
    while stack:
        req, parent = stack.pop()
        name = canonicalize_name(req.name)
        needed.setdefault(name, set()).add(parent)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as exc:
            raise PinError(f"{req.name} (needed by {parent}) is not installed") from exc
        for spec in dist.requires or []:
            child = Requirement(spec)
            extras = req.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                stack.append((child, str(name)))
    return needed


def render(roots: list[Requirement], lock: dict[NormalizedName, tuple[str, str]]) -> str:
    needed = closure(roots)
    lines = [HEADER]
    for name in sorted(needed):
        if name not in lock:
            raise PinError(f"{name} is needed at run time but missing from requirements.lock.txt")
        spelled, version = lock[name]
        installed = metadata.version(name)
        if installed != version:
            raise PinError(f"{name} is installed at {installed}, the lock says {version}")
        via = ", ".join(sorted(needed[name]))
        lines.append(f"{spelled}=={version}\n    # via {via}\n")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if requirements.txt is stale")
    args = parser.parse_args(argv)
    try:
        text = render(
            read_names(ROOT / "requirements.in"), read_lock(ROOT / "requirements.lock.txt")
        )
    except PinError as exc:
        print(f"pin_requirements: {exc}", file=sys.stderr)
        return 2
    target = ROOT / "requirements.txt"
    if args.check:
        if target.read_text() != text:
            print("requirements.txt is stale: run scripts/pin_requirements.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
