"""The command line from an engineer's laptop: settings from local.settings.json as well as the
environment, the engineer's own sign-in, and one line with exit 2 when a service cannot be
reached or refuses the sign-in (exit 1 stays reserved for a broken chain or a failed drill)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity.aio import AzureCliCredential, DefaultAzureCredential

from shared.adapters.credentials import build_credential
from shared.cli import _unreachable, main
from shared.config import Settings
from shared.errors import TransientError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"
ALERT = FIXTURES / "graph_alert_compromised_user.json"
SETTING_NAMES = sorted(Settings.setting_names())


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)


def settings_file(tmp_path: Path, values: dict[str, object]) -> Path:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return captured.err


def victim() -> str:
    alert = json.loads(ALERT.read_text())
    return next(
        e["userAccount"]["azureAdUserId"]
        for e in alert["evidence"]
        if e["@odata.type"].endswith("userEvidence")
    )


def test_settings_come_from_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "query", "--limit", "0"]) == 2
    assert "RESPONDER_TABLES_CONNECTION" in capsys.readouterr().err
    path = settings_file(
        tmp_path,
        {"RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true", "RESPONDER_QUEUE": "memory"},
    )
    # Settings now parse, so the command gets as far as its own argument check.
    assert main(["--settings", str(path), "audit", "query", "--limit", "0"]) == 2
    assert "--limit must be a whole number" in one_line_exit_2(capsys)


def test_the_file_wins_over_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def account_decisions(out: str) -> set[str]:
        actions = json.loads(out)["actions"]
        return {a["decision"] for a in actions if a["kind"] == "disable_account"}

    monkeypatch.setenv("RESPONDER_PROTECTED_IDENTITIES", victim())
    assert main(["plan", "--alert", str(ALERT)]) == 0
    assert account_decisions(capsys.readouterr().out) == {"refused"}
    path = settings_file(tmp_path, {"RESPONDER_PROTECTED_IDENTITIES": "someone@contoso.com"})
    assert main(["--settings", str(path), "plan", "--alert", str(ALERT)]) == 0
    assert account_decisions(capsys.readouterr().out) == {"execute"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read settings file"),
        ("{not json", "is not valid JSON"),
        ('{"Values": []}', 'has no "Values" object'),
        ('{"Values": {"RESPONDER_DRY_RUN": true}}', "RESPONDER_DRY_RUN must be strings"),
    ],
)
def test_a_bad_settings_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "local.settings.json"
    if content is not None:
        path.write_text(content)
    assert main(["--settings", str(path), "audit", "verify"]) == 2
    assert message in one_line_exit_2(capsys)


async def test_the_engineers_sign_in_is_a_credential_choice() -> None:
    base = {
        "RESPONDER_TABLES_ENDPOINT": "https://st.table.core.windows.net/",
        "RESPONDER_QUEUE": "memory",
    }
    tenant = "00000000-0000-0000-0000-0000000000aa"
    cli = build_credential(
        Settings.from_env({**base, "RESPONDER_CREDENTIAL": "azure_cli", "AUTH_TENANT_ID": tenant})
    )
    assert isinstance(cli, AzureCliCredential) and cli.tenant_id == tenant
    default = build_credential(Settings.from_env({**base, "RESPONDER_CREDENTIAL": "default"}))
    assert isinstance(default, DefaultAzureCredential)
    for credential in (cli, default):
        await credential.close()


def test_unreachable_storage_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}/devstoreaccount1"
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"TableEndpoint={endpoint};"
    )
    path = settings_file(
        tmp_path, {"RESPONDER_TABLES_CONNECTION": connection, "RESPONDER_QUEUE": "memory"}
    )
    assert main(["--settings", str(path), "audit", "verify"]) == 2
    assert "cannot reach storage or Service Bus" in one_line_exit_2(capsys)


def test_a_failed_sign_in_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `az` to ask for a token
    monkeypatch.setenv("RESPONDER_TABLES_ENDPOINT", f"https://127.0.0.1:{closed_port()}/")
    monkeypatch.setenv("RESPONDER_QUEUE", "memory")
    assert main(["--credential", "azure_cli", "audit", "verify"]) == 2
    assert "sign-in failed" in one_line_exit_2(capsys)


def test_refusals_and_graph_failures_are_named_and_anything_else_is_not_swallowed() -> None:
    denied = HttpResponseError(message="This request is not authorized to perform this operation.")
    denied.status_code = 403
    assert (_unreachable(denied) or "").startswith("access denied")
    assert (_unreachable(TransientError("read user x: ConnectError")) or "").startswith(
        "Graph or Exchange failed"
    )
    assert _unreachable(ValueError("a bug")) is None
