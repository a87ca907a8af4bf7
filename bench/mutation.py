"""Mutation testing of the safety and evidence core, one module at a time (`make mutation`).

Each module is mutated with mutmut against the narrowest test files that cover it, so a score
says how well the module's own tests guard it. mutmut reads its configuration from the
`pyproject.toml` of the directory it runs in and copies the sources to `mutants/`; each module
therefore gets a work directory of its own, `mutants/work/<name>/`, holding a fresh copy of the
project whose `[tool.mutmut]` table is the repository's with `only_mutate` and the test
selection of that module added. Nothing outside `mutants/` is written.

Prints one line per module (mutants, killed, survived, score) and the surviving mutants, and
exits non-zero when a module scores below `--min-score`. `docs/testing.md` lists every
remaining survivor and why it is harmless.

With `--survivors`, a module's last run is taken up again: the current tests are copied into
its work directory and only the mutants that run left alive are run again (mutmut collects
which of the new tests cover what). The score then counts every mutant of that run.

Usage: python bench/mutation.py [--max-children 2] [--min-score 95] [--survivors] [module ...]
       (module: a name from MODULES, e.g. `policy`; default all)
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants" / "work"
COPIED = ("shared", "functions", "drill", "tests", "docs", "function_app.py", "pyproject.toml")


@dataclass(frozen=True)
class Target:
    """One module, the test files that cover it, and (optionally) the functions that count."""

    path: str
    tests: tuple[str, ...]
    # mutmut's mangled names (`x_is_managed`, `xǁIpBlocklistǁ_write`); empty: all functions
    functions: tuple[str, ...] = ()


MODULES: dict[str, Target] = {
    "audit": Target(
        "shared/audit.py",
        ("tests/unit/test_audit_chain.py", "tests/unit/test_audit_format.py"),
    ),
    "policy": Target(
        "shared/policy.py",
        (
            "tests/unit/test_policy.py",
            "tests/unit/test_safety_properties.py",
            # the executors apply Guards.protected_reason and breakglass_reason again
            "tests/unit/test_accounts.py",
        ),
    ),
    "accounts": Target(
        "shared/actions/accounts.py",
        ("tests/unit/test_accounts.py", "tests/unit/test_safety_properties.py"),
    ),
    "breakglass": Target("shared/actions/breakglass.py", ("tests/unit/test_breakglass.py",)),
    # The guard parts of the IP blocklist: which rules are the product's own (and so the only
    # ones ever written), how ranges are written and compared, and the shard plan within
    # Exchange's limits. (The read-modify-write checks of `IpBlocklist` are exercised by the
    # Azurite integration tests only, and not scored here.)
    "ip_blocks": Target(
        "shared/actions/ip_blocks.py",
        ("tests/unit/test_ip_shards.py",),
        functions=(
            "x_exchange_range",
            "x_same_ranges",
            "x__canonical",
            "x__cost",
            "x_shard_name",
            "x_is_managed",
            "x__mode_of",
            "x_plan_shards",
            "x__shard_with_room",
        ),
    ),
    "identity": Target("shared/identity.py", ("tests/unit/test_identity.py",)),
    "approvals": Target("shared/approvals.py", ("tests/unit/test_approvals.py",)),
}

KILLED = {"killed", "timeout", "caught by type check"}
# mutmut's exit-code classification (mutmut/stats.py), restated so the runner needs no import
# of mutmut internals.
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
}


@dataclass(frozen=True)
class Score:
    name: str
    mutants: int
    killed: int
    survivors: tuple[str, ...]
    seconds: float

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.mutants if self.mutants else 100.0


def mutmut_table(base: dict[str, Any], target: Target) -> str:
    """The `[tool.mutmut]` table of a module's work directory, as TOML text."""
    table = {
        **base,
        "only_mutate": [target.path],
        "pytest_add_cli_args_test_selection": list(target.tests),
    }
    lines = ["[tool.mutmut]"]
    for key, value in table.items():
        lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def prepare(name: str, target: Target) -> Path:
    """A fresh copy of the project for one module, with its mutmut configuration."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for item in COPIED:
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, work / item, ignore=ignore)
        else:
            shutil.copy2(source, work / item)
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    base = tomllib.loads(text)["tool"]["mutmut"]
    without = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    (work / "pyproject.toml").write_text(without + "\n" + mutmut_table(base, target))
    return work


def selected_mutants(target: Target) -> list[str]:
    """The mutant names mutmut generated for the target's functions ([] means all)."""
    if not target.functions:
        return []
    module = target.path.removesuffix(".py").replace("/", ".")
    return [f"{module}.{function}__mutmut_*" for function in target.functions]


def read_results(work: Path, target: Target) -> dict[str, str]:
    meta = work / "mutants" / (target.path + ".meta")
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    results = {
        key: STATUS.get(code, "suspicious") if code is not None else "not checked"
        for key, code in codes.items()
    }
    patterns = selected_mutants(target)
    if patterns:
        results = {k: v for k, v in results.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
    return results


def refresh(name: str, target: Target) -> tuple[Path, list[str]]:
    """The work directory of an earlier run with the current tests copied in, and the mutants
    that run did not kill. Refused when the module itself changed since: its mutants would
    no longer be the ones scored."""
    work = WORK / name
    meta = work / "mutants" / (target.path + ".meta")
    if not meta.exists():
        raise SystemExit(f"no earlier run of {target.path} under {work}: run it in full first")
    if (work / target.path).read_bytes() != (ROOT / target.path).read_bytes():
        raise SystemExit(f"{target.path} changed since its last run: run it in full")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore, dirs_exist_ok=True)
    pending = [k for k, status in read_results(work, target).items() if status not in KILLED]
    return work, pending


def run(name: str, target: Target, max_children: int, verbose: bool, again: bool) -> Score:
    if again:
        work, names = refresh(name, target)
    else:
        work = prepare(name, target)
        names = selected_mutants(target)
    env = {**os.environ, "PYTHONPATH": str(work)}
    command = [
        sys.executable,
        "-m",
        "mutmut",
        "run",
        "--max-children",
        str(max_children),
        *names,
    ]
    started = time.monotonic()
    log = work / "mutmut.log"
    if names or not again:  # a re-check with nothing left to kill runs nothing
        with log.open("a" if again else "w") as out:
            done = subprocess.run(
                command,
                cwd=work,
                env=env,
                stdout=None if verbose else out,
                stderr=subprocess.STDOUT if not verbose else None,
                check=False,
            )
        if done.returncode != 0:
            raise SystemExit(f"mutmut failed for {target.path} (exit {done.returncode}); see {log}")
    seconds = time.monotonic() - started
    results = read_results(work, target)
    killed = sum(1 for status in results.values() if status in KILLED)
    survivors = tuple(sorted(k for k, status in results.items() if status not in KILLED))
    return Score(name, len(results), killed, survivors, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="module", help=", ".join(MODULES))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--min-score", type=float, default=95.0)
    parser.add_argument(
        "--tests",
        nargs="+",
        help="test files to use instead of the module's own (to measure a baseline)",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="re-check only the mutants the module's last run left alive, against the current "
        "tests (after tests were added; refused if the module itself changed)",
    )
    parser.add_argument("--verbose", action="store_true", help="show mutmut's own output")
    args = parser.parse_args()
    names = args.modules or list(MODULES)
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    scores = []
    for name in names:
        if args.tests:
            MODULES[name] = replace(MODULES[name], tests=tuple(args.tests))
        what = "re-checking the survivors of" if args.survivors else "mutating"
        print(f"{what} {MODULES[name].path} against {', '.join(MODULES[name].tests)}", flush=True)
        score = run(name, MODULES[name], args.max_children, args.verbose, args.survivors)
        scores.append(score)
        for survivor in score.survivors:
            print(f"  survived: {survivor}")
    print()
    print(f"{'module':<30} {'mutants':>7} {'killed':>7} {'survived':>8} {'score':>7} {'time':>6}")
    for s in scores:
        path = MODULES[s.name].path
        print(
            f"{path:<30} {s.mutants:>7} {s.killed:>7} {len(s.survivors):>8} "
            f"{s.percent:>6.1f}% {s.seconds:>5.0f}s"
        )
    low = [s.name for s in scores if s.percent < args.min_score]
    if low:
        print(f"below {args.min_score:.0f} %: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
