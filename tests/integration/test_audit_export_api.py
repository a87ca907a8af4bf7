"""`responder audit export --api URL`: an auditor with only the Audit.Read role exports the
trail from the served app over real HTTP, page by page, and verifies the file offline; the
client never sends its token to another origin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drill.azurite import Azurite
from shared.adapters.audit_api import ApiRefused, export_url, next_page
from shared.cli import main
from shared.errors import InvalidInput
from shared.identity import ROLE_ACT, ROLE_AUDIT_READ
from tests.conftest import ADELE
from tests.served import served

pytestmark = pytest.mark.integration


def test_an_auditor_exports_over_the_api_and_verifies_the_file(
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with served(azurite) as app:
        act = {"Authorization": f"Bearer {app.token(ROLE_ACT)}"}
        for n in range(3):
            body = {
                "kind": "revoke_sessions",
                "target": ADELE.id,
                "reason": f"ticket {n}",
                "request_id": f"api-export-{n}",
            }
            assert app.http.post("/api/actions", json=body, headers=act).status_code == 202
        trail = tmp_path / "trail.jsonl"
        args = ["audit", "export", "--api", app.base_url, "--format", "jsonl", "--page-size", "2"]

        monkeypatch.setenv("RESPONDER_API_TOKEN", app.token(ROLE_AUDIT_READ))
        assert main([*args, "--output", str(trail)]) == 0
        shown = capsys.readouterr()
        progress = shown.err.splitlines()
        assert progress[-1].endswith(", done") and len(progress) >= 2
        total = int(progress[-1].split()[2])
        assert shown.out == f"exported {total} audit records to {trail}\n" and total >= 3

        monkeypatch.setenv("RESPONDER_API_TOKEN", app.token(ROLE_ACT))
        assert main([*args, "--output", str(tmp_path / "refused.jsonl")]) == 2
        assert "the API answered 403: the Audit.Read role is required" in capsys.readouterr().err

        monkeypatch.delenv("RESPONDER_API_TOKEN")
        assert main([*args, "--output", str(tmp_path / "none.jsonl")]) == 2
        assert "RESPONDER_API_TOKEN" in capsys.readouterr().err

    assert main(["audit", "verify", "--file", str(trail), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verified"] and verdict["whole_trail"]
    lines = [json.loads(line) for line in trail.read_text(encoding="utf-8").splitlines()]
    newest = max(line["position"] for line in lines if line["type"] == "record")
    assert verdict["records_checked"] == total and verdict["head_seq"] == newest


def test_the_token_goes_only_to_the_origin_it_was_given_for() -> None:
    first = export_url("https://func-responder.azurewebsites.net/", {"format": "jsonl"})
    assert first == "https://func-responder.azurewebsites.net/api/audit/export?format=jsonl"
    relative = next_page(first, '</api/audit/export?format=jsonl&continuation=a.b>; rel="next"')
    assert relative == (
        "https://func-responder.azurewebsites.net/api/audit/export?format=jsonl&continuation=a.b"
    )
    assert next_page(first, None) is None
    assert next_page(first, '</api/audit/export?x=1>; rel="prev"') is None
    for elsewhere in (
        '<https://evil.example/api/audit/export>; rel="next"',
        '<http://func-responder.azurewebsites.net/api/audit/export>; rel="next"',
        '<//evil.example/collect>; rel="next"',
    ):
        with pytest.raises(ApiRefused, match="another origin"):
            next_page(first, elsewhere)
    assert export_url("http://127.0.0.1:7071", {}).startswith("http://127.0.0.1:7071/api/")
    for refused in ("http://func-responder.azurewebsites.net", "ftp://x", "https://"):
        with pytest.raises(InvalidInput):
            export_url(refused, {})
