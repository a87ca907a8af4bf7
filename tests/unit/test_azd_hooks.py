"""The azd hooks (POSIX versions) run against a stand-in `azd` that keeps the environment in a
file, and a stand-in grant script: what they generate, what they keep, what they hand over."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_AZD = """#!/bin/sh
# azd env get-value NAME | azd env set NAME VALUE, over the file $AZD_ENV_FILE (NAME=VALUE lines)
set -eu
[ "$1" = env ] || exit 3
case "$2" in
  get-value)
    line="$(grep "^$3=" "$AZD_ENV_FILE" || true)"
    [ -n "$line" ] || { echo "ERROR: key '$3' not found" >&2; exit 1; }
    printf '%s\\n' "${line#*=}" ;;
  set)
    grep -v "^$3=" "$AZD_ENV_FILE" > "$AZD_ENV_FILE.new" || true
    printf '%s=%s\\n' "$3" "$4" >> "$AZD_ENV_FILE.new"
    mv "$AZD_ENV_FILE.new" "$AZD_ENV_FILE" ;;
  *) exit 3 ;;
esac
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of infra/hooks next to a stand-in grant script, and an azd on PATH."""
    shutil.copytree(ROOT / "infra" / "hooks", tmp_path / "infra" / "hooks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "azd", FAKE_AZD)
    (tmp_path / "env").write_text("")
    return tmp_path


def run(project: Path, hook: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": f"{project / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "AZD_ENV_FILE": str(project / "env"),
        **env,
    }
    return subprocess.run(
        ["sh", str(project / "infra" / "hooks" / hook)],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def values(project: Path) -> dict[str, str]:
    lines = (project / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


def test_preprovision_generates_the_secret_and_suffix_once(project: Path) -> None:
    first = run(project, "preprovision.sh")
    assert first.returncode == 0, first.stderr
    generated = values(project)
    assert re.fullmatch(r"[0-9a-f]{64}", generated["RESPONDER_WEBHOOK_SECRET"])
    assert re.fullmatch(r"[0-9a-f]{6}", generated["RESPONDER_VAULT_SUFFIX"])
    assert generated["RESPONDER_WEBHOOK_SECRET"] not in first.stdout + first.stderr
    again = run(project, "preprovision.sh")
    assert again.returncode == 0 and values(project) == generated


def test_preprovision_keeps_a_given_secret_and_refuses_a_short_one(project: Path) -> None:
    (project / "env").write_text("RESPONDER_WEBHOOK_SECRET=" + "s" * 40 + "\n")
    assert run(project, "preprovision.sh").returncode == 0
    assert values(project)["RESPONDER_WEBHOOK_SECRET"] == "s" * 40
    (project / "env").write_text("RESPONDER_WEBHOOK_SECRET=short\n")
    refused = run(project, "preprovision.sh")
    assert refused.returncode == 1 and "shorter than 32" in refused.stderr
    assert values(project)["RESPONDER_WEBHOOK_SECRET"] == "short"


def test_postdown_renews_the_vault_suffix_and_keeps_the_secret(project: Path) -> None:
    assert run(project, "preprovision.sh").returncode == 0
    before = values(project)
    assert run(project, "postdown.sh").returncode == 0
    after = values(project)
    assert after["RESPONDER_WEBHOOK_SECRET"] == before["RESPONDER_WEBHOOK_SECRET"]
    assert re.fullmatch(r"[0-9a-f]{6}", after["RESPONDER_VAULT_SUFFIX"])
    assert after["RESPONDER_VAULT_SUFFIX"] != before["RESPONDER_VAULT_SUFFIX"]


GRANT = """#!/usr/bin/env bash
echo "$@" > "{log}"
exit {code}
"""


@pytest.mark.parametrize("code", [0, 1])
def test_postprovision_calls_the_grant_script_with_the_identity(project: Path, code: int) -> None:
    log = project / "grant.log"
    executable(project / "infra" / "grant-graph-permissions.sh", GRANT.format(log=log, code=code))
    done = run(
        project,
        "postprovision.sh",
        MANAGED_IDENTITY_PRINCIPAL_ID="11111111-2222-3333-4444-555555555555",
        RESPONDER_GRANT_OPTIONS="--with-breakglass",
        AZURE_TENANT_ID="00000000-0000-0000-0000-0000000000aa",
    )
    assert log.read_text().split() == ["--with-breakglass", "11111111-2222-3333-4444-555555555555"]
    # A deployer without the admin role still gets a deployment, and the command to hand over.
    assert done.returncode == 0, done.stderr
    handed_over = "bash infra/grant-graph-permissions.sh --with-breakglass 1111" in done.stderr
    assert handed_over == (code != 0)


def test_postprovision_can_insist_on_the_grants(project: Path) -> None:
    executable(
        project / "infra" / "grant-graph-permissions.sh",
        GRANT.format(log=project / "grant.log", code=1),
    )
    done = run(
        project,
        "postprovision.sh",
        MANAGED_IDENTITY_PRINCIPAL_ID="11111111-2222-3333-4444-555555555555",
        RESPONDER_REQUIRE_GRANTS="true",
    )
    assert done.returncode == 1
