"""The alert webhook, invoked the way the host invokes it: authentication, bad input, and the
plan it answers with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from drill.host import registered_functions
from functions.http import KEY_HEADER
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from tests.conftest import ADELE, BREAK_GLASS, WEBHOOK_SECRET

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"

pytestmark = pytest.mark.integration


def request(body: bytes, headers: dict[str, str] | None = None) -> func.HttpRequest:
    base = {"Content-Type": "application/json", KEY_HEADER: WEBHOOK_SECRET}
    return func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/alerts",
        headers={**base, **(headers or {})},
        params={},
        route_params={},
        body=body,
    )


async def post(req: func.HttpRequest) -> func.HttpResponse:
    response: func.HttpResponse = await registered_functions()["ingest_alert"].get_user_function()(
        req
    )
    return response


def generic_alert(user: str, alert_id: str = "soc-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Impossible travel followed by MFA registration",
        "severity": "high",
        "category": "InitialAccess",
        "entities": [{"kind": "user", "user_id": user, "roles": ["compromised"]}],
        **extra,
    }


def problem(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(response.get_body())
    assert body["status"] == response.status_code
    return body


async def audit_events(services: Container) -> list[str]:
    return [str(r.entry.event) async for r in services.audit_store.newest_first()]


async def test_a_compromised_user_alert_is_planned_audited_and_queued(
    services: Container,
) -> None:
    response = await post(request(json.dumps(generic_alert(ADELE.id)).encode()))
    assert response.status_code == 202
    [result] = json.loads(response.get_body())["alerts"]
    kinds = {(a["kind"], a["decision"]) for a in result["actions"]}
    assert kinds == {("disable_account", "execute"), ("revoke_sessions", "execute")}
    assert isinstance(services.queue, InMemoryActionQueue) and len(services.queue) == 2
    assert sorted(await audit_events(services)) == ["action.planned", "action.planned"]


async def test_a_sentinel_incident_is_accepted(services: Container) -> None:
    body = (FIXTURES / "sentinel_incident.json").read_bytes()
    response = await post(request(body))
    assert response.status_code == 202, response.get_body()
    [result] = json.loads(response.get_body())["alerts"]
    assert result["alert"]["source"] == "sentinel"


async def test_a_repeated_delivery_is_coalesced_not_queued_twice(services: Container) -> None:
    body = json.dumps(generic_alert(ADELE.id)).encode()
    await post(request(body))
    again = json.loads((await post(request(body))).get_body())["alerts"][0]
    assert again["duplicate_alert"] is True and again["queued"] == []
    assert isinstance(services.queue, InMemoryActionQueue) and len(services.queue) == 2
    assert len(await audit_events(services)) == 2


async def test_a_protected_identity_is_refused_and_the_refusal_audited(
    services: Container,
) -> None:
    response = await post(request(json.dumps(generic_alert(BREAK_GLASS.id)).encode()))
    [result] = json.loads(response.get_body())["alerts"]
    assert {a["decision"] for a in result["actions"]} == {"refused"}
    assert result["queued"] == []
    assert await audit_events(services) == ["action.refused", "action.refused"]


async def test_an_alert_without_usable_evidence_is_accepted_with_nothing_to_do(
    services: Container,
) -> None:
    alert = generic_alert(ADELE.id)
    alert["entities"] = [{"kind": "user", "display_name": "SID only", "roles": ["compromised"]}]
    response = await post(request(json.dumps(alert).encode()))
    assert response.status_code == 202
    [result] = json.loads(response.get_body())["alerts"]
    assert result["actions"] == []
    assert result["skipped"][0]["reason"] == "no Entra object id or UPN in evidence"
    assert await audit_events(services) == []


@pytest.mark.parametrize(
    "user",
    ["not-a-guid-nor-upn", "1.2.3.4; Remove-TransportRule *", "x@y", "a" * 200 + "@contoso.com"],
)
async def test_user_ids_that_are_neither_guid_nor_upn_are_skipped(
    services: Container, user: str
) -> None:
    response = await post(request(json.dumps(generic_alert(user)).encode()))
    assert response.status_code == 202
    [result] = json.loads(response.get_body())["alerts"]
    assert result["actions"] == [] and "GUID" in result["skipped"][0]["reason"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "detail"),
    [
        (b'{"id": "x", ', {}, 400, "malformed JSON"),
        (b"\xff\xfe", {}, 400, "not UTF-8"),
        (b"[1, 2]", {}, 400, "must be a JSON object"),
        (b'{"hello": "world"}', {}, 400, "unrecognized alert payload"),
        (b"[" * 100_000 + b"]" * 100_000, {}, 400, "nested too deeply"),
        (b'{"id": ' + b"9" * 5000 + b"}", {}, 400, "unreadable JSON value"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "application/json"),
        (b"{}", {KEY_HEADER: "wrong"}, 401, KEY_HEADER),
        (b"{}", {KEY_HEADER: ""}, 401, KEY_HEADER),
    ],
)
async def test_bad_requests_get_a_problem_never_a_500(
    services: Container, body: bytes, headers: dict[str, str], status: int, detail: str
) -> None:
    response = await post(request(body, headers))
    assert response.status_code == status
    assert detail in problem(response)["detail"]
    assert await audit_events(services) == []


async def test_oversized_bodies_are_refused(services: Container) -> None:
    padding = "x" * services.settings.max_body_bytes
    response = await post(request(json.dumps(generic_alert(ADELE.id, pad=padding)).encode()))
    assert response.status_code == 413
    assert "larger than" in problem(response)["detail"]


async def test_the_key_header_is_required_even_when_the_body_is_fine(
    services: Container,
) -> None:
    req = func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/alerts",
        headers={"Content-Type": "application/json"},
        body=json.dumps(generic_alert(ADELE.id)).encode(),
    )
    response = await post(req)
    assert response.status_code == 401
    assert isinstance(services.queue, InMemoryActionQueue) and len(services.queue) == 0


async def test_an_enormous_title_is_cut_not_refused_or_crashed_on(services: Container) -> None:
    alert = generic_alert(ADELE.id, title="Mass download " + "A" * 40_000)
    response = await post(request(json.dumps(alert).encode()))
    assert response.status_code == 202, response.get_body()[:200]
    [result] = json.loads(response.get_body())["alerts"]
    assert len(result["alert"]["title"]) == 1000
    assert len(await audit_events(services)) == 2


CONTRACTS = Path(__file__).resolve().parents[1] / "contracts" / "alerts"


@pytest.mark.parametrize(
    ("contract", "recognized"),
    [
        ("graph_change_notification_collection", "a Graph change notification"),
        ("sentinel_rest_alert_list", "a Sentinel REST API resource (kind 'SecurityAlert')"),
        ("sentinel_rest_incident_list", "a Sentinel REST API resource"),
        ("graph_incidents_list", "has no alerts: list incidents with $expand=alerts"),
    ],
)
async def test_shapes_that_are_not_alerts_are_refused_naming_them_and_the_accepted_ones(
    services: Container, contract: str, recognized: str
) -> None:
    response = await post(request((CONTRACTS / f"{contract}.json").read_bytes()))

    assert response.status_code == 400
    detail = problem(response)["detail"]
    assert recognized in detail
    if "has no alerts" not in detail:
        assert "accepted: a Graph alerts_v2 alert or list page" in detail
    assert await audit_events(services) == []
    assert isinstance(services.queue, InMemoryActionQueue) and len(services.queue) == 0


def _incident_with_adele() -> dict[str, Any]:
    """Microsoft Learn's $expand=alerts example, its alert given a high severity and Adele's
    account as compromised user evidence (the published example has device evidence only)."""
    page = json.loads((CONTRACTS / "graph_incidents_expand_alerts.json").read_text())
    alert = page["value"][0]["alerts"][0]
    alert.update(severity="high", category="CredentialAccess")
    alert["evidence"].append(
        {
            "@odata.type": "#microsoft.graph.security.userEvidence",
            "roles": ["compromised"],
            "verdict": "malicious",
            "userAccount": {"azureAdUserId": ADELE.id, "userPrincipalName": None},
        }
    )
    return dict(page)


async def test_an_incident_with_its_alerts_is_unpacked_and_coalesces_with_the_poller(
    services: Container,
) -> None:
    page = _incident_with_adele()
    response = await post(request(json.dumps(page).encode()))

    assert response.status_code == 202, response.get_body()[:300]
    [result] = json.loads(response.get_body())["alerts"]
    assert result["alert"]["alert_id"] == "da637551227677560813_-961444813"
    assert {(a["kind"], a["target"]) for a in result["actions"]} == {
        ("disable_account", ADELE.id),
        ("revoke_sessions", ADELE.id),
    }
    # The poller reads the same alert from alerts_v2, updated since: its actions coalesce.
    polled_alert = {**page["value"][0]["alerts"][0], "lastUpdateDateTime": "2021-05-03T08:00:00Z"}
    [polled] = await services.intake.handle_payload(polled_alert)
    assert not polled.duplicate_alert
    assert polled.queued == [] and sorted(polled.coalesced) == sorted(result["queued"])


async def test_a_security_alert_row_is_understood_and_plans_containment(
    services: Container,
) -> None:
    row = json.loads((CONTRACTS / "security_alert_row_scheduled.json").read_text())
    row["AlertSeverity"] = "High"
    row["Entities"] = json.dumps([{"$id": "2", "Type": "account", "AadUserId": ADELE.id}])
    response = await post(request(json.dumps({"value": [row]}).encode()))

    assert response.status_code == 202, response.get_body()[:300]
    [result] = json.loads(response.get_body())["alerts"]
    assert result["alert"]["title"] == "Matches on commands seen in honeypot data"
    assert result["alert"]["severity"] == "high"
    assert {a["kind"] for a in result["actions"]} == {"disable_account", "revoke_sessions"}


async def test_a_closed_sentinel_incident_plans_nothing_and_says_why(services: Container) -> None:
    incident = json.loads((FIXTURES / "sentinel_incident.json").read_bytes())
    incident["object"]["properties"].update(status="Closed", classification="FalsePositive")
    response = await post(request(json.dumps(incident).encode()))

    assert response.status_code == 202
    [result] = json.loads(response.get_body())["alerts"]
    assert result["actions"] == [] and result["queued"] == []
    assert "alert status is Closed" in result["skipped"][0]["reason"]
    assert await audit_events(services) == []
