"""Notices end to end over loopback: an alert is contained through the real intake, executor
and audit trail (Azurite), the dispatcher's timer and the sender's queue trigger run through
the Functions host stand-in, and the simulated tenant's Workflows webhook, sendMail, alert
comments and Sentinel incident comments receive what people would read."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost
from shared.adapters.notice_queue import InMemoryNoticeQueue
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.models import AuditEvent, AuditRecord
from shared.simulator import Fault, SimulatedTenant, SimUser
from tests.conftest import ADELE, installed, settings_for
from tests.trail import oldest_first

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"
HOSTILE_TITLE = (
    "Inbox rule [reset your password](https://evil.example/login) <at>Global Admin</at> "
    "<script>alert(1)</script> \ud83d end"
)
SENDER = SimUser(
    id="7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
    user_principal_name="responder@contoso.onmicrosoft.com",
    display_name="M365 Responder",
)
PAGE = "https://responder.example/api/audit/ui"
WORKSPACE = (
    "/subscriptions/1f2e3d4c-5b6a-4789-8a9b-0c1d2e3f4a5b/resourceGroups/rg-soc-prod/providers/"
    "Microsoft.OperationalInsights/workspaces/law-sentinel-prod"
)


def graph_alert(alert_id: str, title: str) -> dict[str, Any]:
    alert = json.loads((FIXTURES / "graph_alert_compromised_user.json").read_text())
    alert["id"] = alert["providerAlertId"] = alert_id
    alert["title"] = title
    alert["evidence"] = [
        {
            **alert["evidence"][0],
            "userAccount": {
                **alert["evidence"][0]["userAccount"],
                "azureAdUserId": ADELE.id,
                "userPrincipalName": ADELE.user_principal_name,
            },
        }
    ]
    return alert


def sentinel_incident() -> dict[str, Any]:
    incident = json.loads((FIXTURES / "sentinel_incident.json").read_text())
    for entity in incident["object"]["properties"]["relatedEntities"]:
        if entity["kind"] == "Account":
            entity["properties"]["aadUserId"] = ADELE.id
    return incident


@pytest.fixture
async def notifying(
    sim: SimulatedTenant, azurite: Azurite
) -> AsyncIterator[tuple[Container, DrillClock]]:
    sim.add_user(SimUser(**vars(SENDER)))
    sim.allow_mail_sender(SENDER.user_principal_name)
    sim.grant_sentinel_responder(WORKSPACE)
    clock = DrillClock()
    settings = settings_for(
        sim,
        azurite,
        NOTICE_TEAMS_WEBHOOK_URL=sim.workflow_url,
        NOTICE_MAIL_SENDER=SENDER.user_principal_name,
        NOTICE_MAIL_ROUTES="held,failed=oncall@contoso.com;*=soc@contoso.com",
        NOTICE_ALERT_COMMENTS="true",
        SENTINEL_WORKSPACE_ID=WORKSPACE,
        ARM_BASE_URL=sim.arm_base_url,
        NOTICE_PAGE_URL=PAGE,
        ACTIONS_GIVE_UP_MINUTES=5,
    )
    async with installed(settings, clock) as services:
        yield services, clock


async def contain(services: Container, payload: dict[str, Any]) -> None:
    await services.intake.handle_payload(payload)
    queue = services.queue
    assert isinstance(queue, InMemoryActionQueue)
    await LocalHost().pump(queue)


async def notify(services: Container, clock: DrillClock) -> int:
    """One dispatcher pass (its timer), then the sender's trigger until nothing is due."""
    host = LocalHost()
    await host.fire_timer("dispatch_notices")
    queue = services.notice_queue
    assert isinstance(queue, InMemoryNoticeQueue)
    return await host.pump_through_time(queue, clock, "send_notice")


async def trail(services: Container) -> list[AuditRecord]:
    return await oldest_first(services.audit_store)


async def test_a_contained_alert_is_told_in_teams_by_mail_and_on_the_alert_once(
    sim: SimulatedTenant, notifying: tuple[Container, DrillClock]
) -> None:
    services, clock = notifying
    await notify(services, clock)  # a new deployment starts at the present
    alert = graph_alert("da-notice-1", HOSTILE_TITLE)
    sim.add_alert(alert)
    await contain(services, alert)
    assert not sim.user(ADELE.id).account_enabled
    await notify(services, clock)

    [card] = sim.cards()
    content = card["attachments"][0]["content"]
    blocks = [b["text"] for b in content["body"] if b["type"] == "TextBlock"]
    facts = [f["value"] for b in content["body"] for f in b.get("facts", [])]
    # What Teams shows: CommonMark turns each backslash escape into the character itself.
    shown = [re.sub(r"\\(.)", r"\1", text) for text in blocks + facts]
    assert "1 account disabled, 1 user's sessions revoked" in shown
    [why] = {t for t in facts if "reset your password" in t}
    assert "\\[reset your password\\]\\(https\\:\\/\\/evil\\.example\\/login\\)" in why
    assert "\\<at\\>Global Admin\\<\\/at\\>" in why and "\ufffd end" in why
    assert [a["url"] for a in content["actions"]] == [f"{PAGE}?incident=28282"]

    [mail] = sim.mail()
    assert mail.sender == SENDER.user_principal_name
    assert [r["emailAddress"]["address"] for r in mail.message["toRecipients"]] == [
        "soc@contoso.com"
    ]
    html = mail.message["body"]["content"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html

    [comment] = sim.alert_comments("da-notice-1")
    records = {r.entry.action_id: r.seq for r in await trail(services) if r.entry.action_id}
    assert all(f"audit record #{seq}" in comment["comment"] for seq in records.values())

    # Another pass, and a redelivery of everything already sent, add nothing.
    await notify(services, clock)
    assert len(sim.cards()) == 1 and len(sim.mail()) == 1
    assert len(sim.alert_comments("da-notice-1")) == 1


async def test_an_alert_comment_whose_answer_was_lost_is_not_written_twice(
    sim: SimulatedTenant, notifying: tuple[Container, DrillClock]
) -> None:
    """A first attempt comments without reading the alert (nothing can be there yet). The
    comment lands but its answer is lost: the retry reads the alert, finds the comment by its
    marker, and does not write it again."""
    services, clock = notifying
    await notify(services, clock)
    alert = graph_alert("da-notice-lost", "Token replay from an anonymising proxy")
    sim.add_alert(alert)
    await contain(services, alert)
    sim.add_fault(
        Fault(method="POST", path_pattern="/comments$", status=0, drop_response=True, times=1)
    )
    await notify(services, clock)
    assert sim.faults_applied.get("lost_response") == 1
    assert len(sim.alert_comments("da-notice-lost")) == 1, "written once, by the first attempt"
    reads = [p for m, p in sim.requests if m == "GET" and p.endswith("/alerts_v2/da-notice-lost")]
    assert len(reads) == 1, "read by the retry only"


async def test_a_throttled_webhook_is_retried_and_a_failing_one_is_audited_not_in_the_way(
    sim: SimulatedTenant, notifying: tuple[Container, DrillClock]
) -> None:
    services, clock = notifying
    await notify(services, clock)
    sim.add_fault(
        Fault(method="POST", path_pattern="^/workflows/", status=429, retry_after="30", times=2)
    )
    first = graph_alert("da-notice-2", "Suspicious inbox forwarding rule")
    sim.add_alert(first)
    await contain(services, first)
    await notify(services, clock)
    assert len(sim.cards()) == 1, "delivered after two throttled attempts"
    assert sim.faults_applied.get("429") == 2

    sim.add_fault(Fault(method="POST", path_pattern="^/workflows/", status=503, times=None))
    second = graph_alert("da-notice-3", "Suspicious inbox forwarding rule again")
    sim.add_alert(second)
    await contain(services, second)
    records = await trail(services)
    executed = [r for r in records if r.entry.event is AuditEvent.ACTION_EXECUTED]
    assert executed, "containment ran before and regardless of any notice"
    await notify(services, clock)
    failed = [r for r in await trail(services) if r.entry.event is AuditEvent.NOTIFY_FAILED]
    [teams_failure] = failed
    assert teams_failure.entry.result["channel"] == "teams"
    assert "gave up" in teams_failure.entry.result["error"]
    # Recorded after the containment (by the time each was made: positions follow the clock
    # only to the second, and order one second's records by lane).
    assert teams_failure.entry.at > max(r.entry.at for r in executed)
    # Mail and the alert comment were not held up by the failing channel.
    assert len(sim.mail()) == 2 and len(sim.alert_comments("da-notice-3")) == 1


async def test_a_sentinel_incident_gets_one_comment_and_an_alert_source_is_never_crossed(
    sim: SimulatedTenant, notifying: tuple[Container, DrillClock]
) -> None:
    services, clock = notifying
    await notify(services, clock)
    incident = sentinel_incident()
    arm_id = incident["object"]["id"]
    sim.add_sentinel_incident(arm_id)
    await contain(services, incident)
    await notify(services, clock)
    [comment] = sim.incident_comments(arm_id).values()
    assert "account disabled" in comment["properties"]["message"]
    assert sim.alert_comments(incident["object"]["name"]) == []
    # The same task delivered again writes the same comment id: still one comment.
    queue = services.notice_queue
    assert isinstance(queue, InMemoryNoticeQueue)
    await notify(services, clock)
    assert len(sim.incident_comments(arm_id)) == 1
