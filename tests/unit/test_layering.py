"""Imports flow one way: triggers -> services -> adapters. shared/ never imports
azure.functions; services never import adapters (the container wires them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["intake.py", "outbox.py", "poller.py", "policy.py", "audit.py", "actions", "notices"]


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_shared_never_imports_azure_functions_or_the_triggers() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name
            for name in imports_of(path)
            if name.startswith(("azure.functions", "functions", "function_app"))
        )
        for path in modules("shared")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_services_depend_on_ports_not_adapters() -> None:
    paths = [
        p
        for s in SERVICES
        for p in ([ROOT / "shared" / s] if s.endswith(".py") else modules(f"shared/{s}"))
    ]
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imports_of(path) if name.startswith("shared.adapters")
        )
        for path in paths
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_triggers_reach_services_only_through_the_container() -> None:
    for path in modules("functions"):
        adapters = [n for n in imports_of(path) if n.startswith("shared.adapters")]
        assert adapters == [], f"{path.name} imports {adapters}"
