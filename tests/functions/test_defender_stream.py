"""The Defender XDR stream trigger invoked with Event Hub events as the host delivers them:
AlertInfo and AlertEvidence joined across batches, bad records skipped, and the same actions
as the poller planned for the same alert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from drill.azurite import Azurite
from drill.host import registered_functions
from shared.container import Container
from shared.models import AuditEvent
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, installed, settings_for

pytestmark = pytest.mark.integration

ALERT_ID = "da638412345678901234_-1122334455"
TENANT = "00000000-0000-0000-0000-0000000000aa"


def record(category: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": "2026-11-26T00:03:12.1017715Z",
        "tenantId": TENANT,
        "operationName": "Publish",
        "category": category,
        "properties": properties,
    }


INFO = record(
    "AdvancedHunting-AlertInfo",
    {
        "Timestamp": "2026-11-26T00:03:10.0000000Z",
        "AlertId": ALERT_ID,
        "Title": "Password spray followed by a successful sign-in",
        "Category": "CredentialAccess",
        "Severity": "High",
        "ServiceSource": "Microsoft Defender for Identity",
        "DetectionSource": "Microsoft Defender for Identity",
        "AttackTechniques": '["Password Spraying (T1110.003)"]',
    },
)


def evidence(**columns: Any) -> dict[str, Any]:
    base = {
        "Timestamp": "2026-11-26T00:03:10.0000000Z",
        "AlertId": ALERT_ID,
        "Title": "Password spray followed by a successful sign-in",
        "Categories": '["CredentialAccess"]',
        "ServiceSource": "Microsoft Defender for Identity",
        "AdditionalFields": "{}",
    }
    return record("AdvancedHunting-AlertEvidence", {**base, **columns})


USER_ROW = evidence(
    EntityType="User",
    EvidenceRole="Impacted",
    AccountUpn=ADELE.user_principal_name,
    AccountObjectId=ADELE.id,
    AccountName="adele.vance",
)
IP_ROW = evidence(EntityType="Ip", EvidenceRole="Related", RemoteIP="203.0.113.77")


def event(*records: dict[str, Any]) -> func.EventHubEvent:
    return func.EventHubEvent(body=json.dumps({"records": list(records)}).encode())


async def deliver(*events: func.EventHubEvent) -> None:
    await registered_functions()["ingest_defender_stream"].get_user_function()(list(events))


async def raised(services: Container) -> list[Any]:
    return [r async for r in services.audit_store.newest_first()]


async def test_evidence_in_a_later_batch_joins_its_alert(services: Container) -> None:
    report = await services.defender_stream.ingest([event(INFO).get_body()])
    assert (report.infos, report.handled, report.evidence) == (1, 1, 0)
    await deliver(event(USER_ROW), event(IP_ROW))
    report = await services.defender_stream.ingest([event(USER_ROW).get_body()])
    assert report.duplicates == 1  # the same rows again: the same version
    info = await services.stream_rows.info(ALERT_ID)
    rows = await services.stream_rows.evidence(ALERT_ID)
    assert info is not None and info["Severity"] == "High"
    assert sorted(r["EntityType"] for r in rows) == ["Ip", "User"]


async def test_evidence_before_its_alert_waits_for_it(services: Container) -> None:
    report = await services.defender_stream.ingest([event(USER_ROW).get_body()])
    assert report.waiting == 1 and report.handled == 0
    report = await services.defender_stream.ingest([event(INFO).get_body()])
    assert report.handled == 1


async def test_unknown_categories_and_broken_json_are_counted_and_skipped(
    services: Container,
) -> None:
    bodies = [
        b"{not json",
        b"\xff\xfe",
        json.dumps({"records": "nope"}).encode(),
        json.dumps(
            {"records": [record("AdvancedHunting-DeviceEvents", {"AlertId": "x"})]}
        ).encode(),
        json.dumps({"records": [record("AdvancedHunting-AlertInfo", {"Title": "no id"})]}).encode(),
        json.dumps({"records": [7, INFO]}).encode(),
    ]
    report = await services.defender_stream.ingest(bodies)
    assert report.unknown_category == 1
    assert report.broken == 5
    assert report.handled == 1


async def test_records_of_another_tenant_are_never_acted_on(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    forged = {**INFO, "tenantId": "11111111-2222-4333-8444-555555555555"}
    unsigned = {key: value for key, value in INFO.items() if key != "tenantId"}
    settings = settings_for(sim, azurite, NOTIFICATION_TENANT_ID=TENANT)
    async with installed(settings) as services:
        body = json.dumps({"records": [forged, unsigned]}).encode()
        report = await services.defender_stream.ingest([body])
        assert (report.foreign, report.infos, report.handled) == (2, 0, 0)
        report = await services.defender_stream.ingest([event(INFO).get_body()])
        assert report.handled == 1


PLAYBOOK = """
version = 1

[[rules]]
name = "contain-impacted-user"
severities = ["high"]
actions = ["revoke_sessions"]

[rules.entities]
kind = "user"
roles = ["compromised", "impacted"]
"""


async def test_the_streamed_alert_plans_the_poller_s_action_ids(
    sim: SimulatedTenant, azurite: Azurite, tmp_path: Path
) -> None:
    playbook = tmp_path / "playbook.toml"
    playbook.write_text(PLAYBOOK)
    graph_alert = {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": ALERT_ID,
        "severity": "high",
        "category": "CredentialAccess",
        "title": "Password spray followed by a successful sign-in",
        "lastUpdateDateTime": "2026-11-26T00:03:12Z",
        "evidence": [
            {
                "@odata.type": "#microsoft.graph.security.userEvidence",
                "roles": ["compromised"],
                "userAccount": {"azureAdUserId": ADELE.id},
            }
        ],
    }
    async with installed(settings_for(sim, azurite, RESPONDER_PLAYBOOK=str(playbook))) as services:
        await deliver(event(INFO, USER_ROW))
        streamed = [r.entry for r in await raised(services)]
        polled = await services.intake.handle_payload(graph_alert)
    planned = [e.action_id for e in streamed if e.event is AuditEvent.ACTION_PLANNED]
    assert len(planned) == 1
    # The poller's request has the stream's action id, so it coalesces into it.
    assert polled[0].queued == [] and polled[0].coalesced == planned
