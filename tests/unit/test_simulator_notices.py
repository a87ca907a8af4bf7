"""The simulated tenant's notice endpoints over real HTTP: the Teams Workflows webhook,
Graph sendMail, alerts_v2 comments and Sentinel incident comments (docs/fidelity.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.simulator import Fault, SimulatedTenant, SimUser

SENDER = SimUser(
    id="7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
    user_principal_name="responder@contoso.com",
    display_name="Responder",
)
WORKSPACE = (
    "/subscriptions/1f2e3d4c-5b6a-4789-8a9b-0c1d2e3f4a5b/resourceGroups/rg/providers/"
    "Microsoft.OperationalInsights/workspaces/law"
)
INCIDENT = (
    f"{WORKSPACE}/providers/Microsoft.SecurityInsights/Incidents/"
    "3f6c1a2b-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
)
CARD = {
    "type": "message",
    "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {}}],
}


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant() as tenant:
        tenant.add_user(SimUser(**vars(SENDER)))
        yield tenant


def call(
    sim: SimulatedTenant, method: str, url: str, body: Any = None, bearer: bool = True
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {sim.token}"} if bearer else {}
    with httpx.Client(trust_env=False) as client:
        return client.request(method, url, json=body, headers=headers)


def test_the_workflow_accepts_a_card_by_its_signature_alone(sim: SimulatedTenant) -> None:
    answer = call(sim, "POST", sim.workflow_url, CARD, bearer=False)
    assert answer.status_code == 202 and sim.cards() == [CARD]
    forged = sim.workflow_url.replace("sig=", "sig=x")
    answer = call(sim, "POST", forged, CARD, bearer=False)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "DirectApiInvalidAuthorizationSignature"
    assert len(sim.cards()) == 1


def test_the_workflow_can_throttle_and_fail(sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(method="POST", path_pattern="^/workflows/", status=429, retry_after="7"))
    throttled = call(sim, "POST", sim.workflow_url, CARD, bearer=False)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    sim.add_fault(Fault(method="POST", path_pattern="^/workflows/", status=502))
    assert call(sim, "POST", sim.workflow_url, CARD, bearer=False).status_code == 502
    assert sim.cards() == []


def mail(to: str = "oncall@contoso.com") -> dict[str, Any]:
    return {
        "message": {
            "subject": "s",
            "body": {"contentType": "HTML", "content": "<p>b</p>"},
            "toRecipients": [{"emailAddress": {"address": to}}],
        },
        "saveToSentItems": False,
    }


def test_send_mail_only_from_a_scoped_mailbox_and_at_most_30_a_minute(sim: SimulatedTenant) -> None:
    url = f"{sim.base_url}/users/{SENDER.user_principal_name}/sendMail"
    denied = call(sim, "POST", url, mail())
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"
    sim.allow_mail_sender(SENDER.user_principal_name)
    for _ in range(30):
        assert call(sim, "POST", url, mail()).status_code == 202
    throttled = call(sim, "POST", url, mail())
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert len(sim.mail()) == 30 and sim.mail()[0].sender == SENDER.user_principal_name
    unknown = call(sim, "POST", f"{sim.base_url}/users/nobody@contoso.com/sendMail", mail())
    assert unknown.status_code == 404
    by_id = call(sim, "POST", f"{sim.base_url}/users/{SENDER.id}/sendMail", {"message": {}})
    assert by_id.status_code == 400
    assert by_id.json()["error"]["code"] == "ErrorInvalidRecipients"


def test_alert_comments_need_the_write_permission_and_show_on_the_alert(
    sim: SimulatedTenant,
) -> None:
    sim.add_alert({"id": "da1", "lastUpdateDateTime": "2024-05-01T10:00:00Z", "title": "t"})
    url = f"{sim.base_url}/security/alerts_v2/da1"
    body = {"@odata.type": "microsoft.graph.security.alertComment", "comment": "contained"}
    added = call(sim, "POST", f"{url}/comments", body)
    assert added.status_code == 200 and [c["comment"] for c in added.json()["value"]] == [
        "contained"
    ]
    assert [c["comment"] for c in call(sim, "GET", url).json()["comments"]] == ["contained"]
    assert (
        call(sim, "POST", f"{sim.base_url}/security/alerts_v2/nope/comments", body).status_code
        == 404
    )
    sim.revoke_grant("SecurityAlert.ReadWrite.All")
    assert call(sim, "POST", f"{url}/comments", body).status_code == 403
    assert call(sim, "GET", url).status_code == 200  # reading needs SecurityAlert.Read.All only


def test_sentinel_comments_need_the_responder_role_and_are_idempotent_by_id(
    sim: SimulatedTenant,
) -> None:
    sim.add_sentinel_incident(INCIDENT)
    url = f"{sim.arm_base_url}{INCIDENT}/comments/c1?api-version=2025-09-01"
    body = {"properties": {"message": "contained"}}
    denied = call(sim, "PUT", url, body)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "AuthorizationFailed"
    sim.grant_sentinel_responder(WORKSPACE)
    assert call(sim, "PUT", url, body).status_code == 201
    assert call(sim, "PUT", url, body).status_code == 200
    assert list(sim.incident_comments(INCIDENT)) == ["c1"]
    assert call(sim, "PUT", url.split("?")[0], body).status_code == 400
    assert call(sim, "PUT", url, body, bearer=False).status_code == 401
    other = INCIDENT.replace("3f6c1a2b", "00000000")
    assert (
        call(
            sim, "PUT", f"{sim.arm_base_url}{other}/comments/c1?api-version=2025-09-01", body
        ).status_code
        == 404
    )
