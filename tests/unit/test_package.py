"""What the deployment package holds, and that production runs the packages the tests ran.

The package is the project directory filtered by .funcignore. azd reads that file with gitignore
syntax (https://learn.microsoft.com/azure/developer/azure-developer-cli/service-packaging-ignore-files);
Core Tools (`func azure functionapp publish`) reads it with its own parser
(src/Azure.Functions.Cli/Common/GitIgnoreParser.cs in Azure/azure-functions-core-tools), which
anchors every pattern at the project root and matches it as a prefix. Both are applied here to
`git ls-files` and to the untracked files a working copy holds.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pathspec
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

spec = importlib.util.spec_from_file_location(
    "pin_requirements", ROOT / "scripts" / "pin_requirements.py"
)
assert spec and spec.loader
pin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pin)

# Files a working copy holds besides the tracked ones; none may reach Azure.
UNTRACKED = [
    ".azure/prod/.env",
    ".azure/config.json",
    ".venv/bin/python",
    "node_modules/azurite/package.json",
    "local.settings.json",
    "__pycache__/function_app.cpython-311.pyc",
    "shared/__pycache__/config.cpython-311.pyc",
    "shared/adapters/__pycache__/graph.cpython-311.pyc",
    ".pytest_cache/README.md",
    ".mypy_cache/3.11/shared/config.data.json",
    ".azurite/__azurite_db_table__.json",
    "m365_responder.egg-info/PKG-INFO",
]


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return sorted(path for path in out.split("\0") if path and (ROOT / path).is_file())


def ignore_lines() -> list[str]:
    return (ROOT / ".funcignore").read_text().splitlines()


def azd_package(files: list[str]) -> list[str]:
    ignored = pathspec.GitIgnoreSpec.from_lines(ignore_lines())
    return [path for path in files if not ignored.match_file(path)]


def core_tools_package(files: list[str]) -> list[str]:
    """Core Tools' reading: comments and blanks dropped, a leading '/' removed, each pattern
    escaped, '**' -> '(.+)', '*' -> '([^/]+)', and all of them matched as a prefix."""
    positive, negative = [], []
    for raw in ignore_lines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        target = negative if line.startswith("!") else positive
        line = line.removeprefix("!").removeprefix("/")
        escaped = re.sub(r"[\-\[\]/{}()+?.\\^$|]", lambda m: "\\" + m[0], line)
        target.append(escaped.replace("**", "(.+)").replace("*", "([^\\/]+)"))

    def compile_(patterns: list[str]) -> re.Pattern[str]:
        return re.compile("^((" + ")|(".join(patterns) + "))" if patterns else "$^")

    deny, accept = compile_(positive), compile_(negative)
    return [path for path in files if accept.match(path) or not deny.match(path)]


def test_azd_and_core_tools_package_the_same_files() -> None:
    files = tracked_files() + UNTRACKED
    assert azd_package(files) == core_tools_package(files)


def test_the_package_holds_the_app_and_nothing_for_development() -> None:
    package = azd_package(tracked_files())
    for needed in (
        "function_app.py",
        "host.json",
        "requirements.txt",
        "shared/playbooks/default.toml",
        "functions/static/audit.html",
    ):
        assert needed in package
    top = {path.split("/")[0] for path in package}
    assert top == {"function_app.py", "host.json", "requirements.txt", "functions", "shared"}
    assert [p for p in package if p.startswith("shared/simulator/")] == []
    assert azd_package(UNTRACKED) == []


def first_party_imports(path: Path) -> set[str]:
    """Every first-party module a file imports, at module level or inside a function."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    roots = {"shared", "functions", "drill", "function_app", "tests", "bench"}
    return {name for name in found if name.split(".")[0] in roots}


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_modules(start: str) -> dict[str, Path]:
    seen: dict[str, Path] = {}
    stack = [start]
    while stack:
        name = stack.pop()
        if name in seen or (path := module_file(name)) is None:
            continue
        seen[name] = path
        parts = name.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        stack.extend(first_party_imports(path))
    return seen


def test_function_app_reaches_only_packaged_modules() -> None:
    package = set(azd_package(tracked_files()))
    modules = reachable_modules("function_app")
    assert "shared.container" in modules and "shared.adapters.credentials" in modules
    outside = sorted(
        name for name, path in modules.items() if str(path.relative_to(ROOT)) not in package
    )
    assert outside == []


PROBE = textwrap.dedent(
    """
    import asyncio, importlib.util, json, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
    sys.path.insert(0, sys.argv[1])
    import function_app
    from shared.adapters.credentials import build_credential
    from shared.config import Settings
    from shared.errors import ConfigError

    names = sorted(f.get_function_name() for f in function_app.app.get_functions())
    missing = [m for m in ("shared.simulator", "drill", "tests") if importlib.util.find_spec(m)]
    settings = Settings(
        credential="simulator", simulator_token="t", tables_connection="UseDevelopmentStorage=true",
        queue="memory",
    )
    try:
        build_credential(settings)
        error = None
    except ConfigError as exc:
        error = str(exc)
    managed = Settings(tables_connection="UseDevelopmentStorage=true", queue="memory")
    credential = build_credential(managed)
    asyncio.run(credential.close())
    print(json.dumps({"functions": names, "present": missing, "error": error,
                      "managed": type(credential).__name__}))
    """
)


def test_the_package_imports_and_runs_without_the_simulator(tmp_path: Path) -> None:
    for path in azd_package(tracked_files()):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["present"] == []
    assert {"ingest_alert", "execute_action", "health"} <= set(report["functions"])
    assert report["error"] and "RESPONDER_CREDENTIAL=simulator" in report["error"]
    assert report["managed"] == "ManagedIdentityCredential"


def test_the_working_copy_still_builds_the_simulator_credential() -> None:
    from shared.adapters.credentials import SimulatorCredential, build_credential
    from shared.config import Settings

    settings = Settings(
        credential="simulator",
        simulator_token="t",
        tables_connection="UseDevelopmentStorage=true",
        queue="memory",
    )
    assert isinstance(build_credential(settings), SimulatorCredential)


# --- pinned dependencies ------------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    result = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned"
            result[canonicalize_name(name)] = version
    return result


def test_requirements_txt_is_generated_from_the_lock() -> None:
    expected = pin.render(
        pin.read_names(ROOT / "requirements.in"), pin.read_lock(ROOT / "requirements.lock.txt")
    )
    assert (ROOT / "requirements.txt").read_text() == expected, (
        "stale: run PYTHONPATH=$PWD .venv/bin/python scripts/pin_requirements.py"
    )


def test_every_runtime_pin_equals_the_lock() -> None:
    runtime, lock = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements.lock.txt")
    assert len(runtime) > 40, "the transitive packages are missing"
    assert {name: v for name, v in runtime.items() if lock.get(name) != v} == {}
    for name in ("msgraph-core", "microsoft-kiota-http", "azure-core", "httpx"):
        assert name in runtime
    dev_tools = {"pytest", "ruff", "mypy", "hypothesis", "playwright", "pytest-asyncio"}
    assert dev_tools & set(runtime) == set(), "development tools belong in requirements-dev.txt"


def test_pinning_refuses_a_package_the_lock_lacks() -> None:
    lock = pin.read_lock(ROOT / "requirements.lock.txt")
    del lock[canonicalize_name("msgraph-core")]
    with pytest.raises(pin.PinError, match="msgraph-core"):
        pin.render(pin.read_names(ROOT / "requirements.in"), lock)


def test_pinning_refuses_a_lock_the_environment_does_not_match() -> None:
    lock = pin.read_lock(ROOT / "requirements.lock.txt")
    lock[canonicalize_name("httpx")] = ("httpx", "0.0.1")
    with pytest.raises(pin.PinError, match="httpx is installed at"):
        pin.render(pin.read_names(ROOT / "requirements.in"), lock)


def direct_module_paths() -> list[str]:
    """Files of the distributions requirements.in names, as importable paths ('azure/core/...')."""
    paths = []
    for req in pin.read_names(ROOT / "requirements.in"):
        files = metadata.distribution(req.name).files or []
        paths.extend(str(file) for file in files if str(file).endswith(".py"))
    return paths


def test_every_third_party_import_of_the_package_is_a_direct_requirement() -> None:
    provided = direct_module_paths()
    first_party = {"shared", "functions", "function_app", "__future__"}
    imported: dict[str, str] = {}
    for path in azd_package(tracked_files()):
        if not path.endswith(".py"):
            continue
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in first_party:
                    imported.setdefault(name, path)
    assert "msgraph" in imported and "azure.data.tables" in imported
    missing = {
        name: path
        for name, path in imported.items()
        if not any(
            p.startswith(name.replace(".", "/") + "/") or p == name.replace(".", "/") + ".py"
            for p in provided
        )
    }
    assert missing == {}


def test_requirements_in_names_packages_that_exist() -> None:
    for req in pin.read_names(ROOT / "requirements.in"):
        assert isinstance(req, Requirement)
        metadata.version(req.name)
