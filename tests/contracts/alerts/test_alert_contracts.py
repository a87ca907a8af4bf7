"""Published alert bodies (README.md beside this file names each source) replayed through the
normalizer that meets them in production, with concrete outcomes: ids, severities, entities,
and what the default playbook plans; refused shapes are refused with a message naming them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.config import PolicySettings
from shared.errors import InvalidInput
from shared.ingest import ACCEPTED_SHAPES, normalize, normalize_graph_alert
from shared.ingest.defender_stream import StreamBatch, normalize_stream_alert
from shared.models import Alert, AlertSource, EntityKind, Severity
from shared.policy import Guards, Playbook, Policy

HERE = Path(__file__).resolve().parent
DEFAULT_PLAYBOOK = HERE.parents[2] / "shared" / "playbooks" / "default.toml"


def body(name: str) -> Any:
    return json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))


def default_policy() -> Policy:
    return Policy(Playbook.load(DEFAULT_PLAYBOOK), Guards.from_settings(PolicySettings()))


def test_the_published_alert_reads_the_same_through_webhook_and_poller() -> None:
    payload = body("graph_alert_get_defender_endpoint")
    [alert] = normalize(payload)

    assert alert == normalize_graph_alert(payload)
    assert alert.source is AlertSource.GRAPH_ALERTS_V2
    assert alert.alert_id == "da637578995287051192_756343937"
    assert alert.incident_id == "28282"
    assert alert.severity is Severity.LOW
    assert (alert.status, alert.classification) == ("new", "unknown")
    assert alert.provider == "microsoftDefenderForEndpoint"
    assert alert.version == "2021-05-02T14:19:01.3266667Z"
    assert alert.updated_at == datetime(2021, 5, 2, 14, 19, 1, 326666, tzinfo=UTC)
    assert [(e.kind, e.raw_type, e.roles) for e in alert.entities] == [
        (EntityKind.OTHER, "#microsoft.graph.security.deviceEvidence", ("compromised",)),
        (EntityKind.OTHER, "#microsoft.graph.security.fileEvidence", ()),
        (EntityKind.OTHER, "#microsoft.graph.security.processEvidence", ()),
        (EntityKind.OTHER, "#microsoft.graph.security.registryKeyEvidence", ()),
    ]
    assert alert.extra["systemTags"] == ["Defender Experts"]
    # A low-severity device alert: the default playbook plans nothing and skips nothing.
    plan = default_policy().plan(alert)
    assert (plan.actions, plan.skipped) == ([], [])


def test_incidents_listed_with_their_alerts_are_unpacked_into_those_alerts() -> None:
    payload = body("graph_incidents_expand_alerts")
    [alert] = normalize(payload)
    published = payload["value"][0]["alerts"][0]

    # The alert keeps its own id, so the poller (which reads the same alert) coalesces with it.
    assert alert.alert_id == "da637551227677560813_-961444813"
    assert alert.key == normalize_graph_alert(published).key
    assert alert.source is AlertSource.GRAPH_ALERTS_V2
    assert alert.incident_id == "28282"  # the alert's own incidentId, as published
    assert alert.severity is Severity.LOW
    assert alert.title == "Suspicious execution of hidden file"
    assert len(alert.entities) == 4
    assert alert.entities[2].raw_type == "#microsoft.graph.security.processEvidence"


def test_incidents_without_their_alerts_are_refused_naming_the_query() -> None:
    with pytest.raises(InvalidInput, match=r"has no alerts: list incidents with \$expand=alerts"):
        normalize(body("graph_incidents_list"))


@pytest.mark.parametrize(
    ("name", "recognized"),
    [
        ("sentinel_rest_alert_list", "a Sentinel REST API resource (kind 'SecurityAlert')"),
        ("sentinel_rest_incident_list", "a Sentinel REST API resource"),
        ("graph_change_notification_collection", "a Graph change notification"),
    ],
)
def test_lists_that_are_not_alerts_are_refused_naming_what_they_are(
    name: str, recognized: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        normalize(body(name))

    message = str(raised.value)
    assert message.startswith(f"list page: value[0] is {recognized}")
    assert message.endswith(f"accepted: {ACCEPTED_SHAPES}")


def test_defender_streaming_records_posted_to_the_webhook_are_refused() -> None:
    records = {"records": [body("defender_stream_alertinfo")]}
    with pytest.raises(InvalidInput, match=r"records\[0\] is a Defender XDR streaming record"):
        normalize(records)


def test_the_published_sentinel_alert_trigger_body() -> None:
    [alert] = normalize(body("sentinel_alert_trigger_defender_for_cloud"))

    assert alert.source is AlertSource.SENTINEL
    assert alert.alert_id == "2342409243234234_F2BFED55-5997-4FEA-95BD-BB7C6DDCD061"
    assert alert.title == "Suspicious process detected"
    assert alert.severity is Severity.HIGH
    assert alert.status == "New"
    assert alert.created_at == datetime(2016, 12, 20, 13, 38, 3, tzinfo=UTC)
    assert alert.entities == []
    assert alert.extra["ExtendedProperties"]["PID"] == 944


def _row_alert_expectations(alert: Alert) -> None:
    assert alert.source is AlertSource.SENTINEL
    assert alert.alert_id == "8a22c48c-e583-41d7-a178-276d21925af0"
    assert alert.title == "Matches on commands seen in honeypot data"
    assert alert.severity is Severity.MEDIUM
    assert alert.provider == "ASI Scheduled Alerts"
    assert alert.version == "2020-04-27T15:34:02Z"
    assert alert.created_at == datetime(2020, 4, 27, 15, 34, 2, tzinfo=UTC)
    assert alert.entities == []  # Entities is "" in this row
    assert alert.extra["AlertType"].endswith("_a35a8534-0b12-4138-8e00-83c5c68dc647")


def test_a_security_alert_row_reads_its_own_column_names() -> None:
    [alert] = normalize(body("security_alert_row_scheduled"))
    _row_alert_expectations(alert)


def test_security_alert_rows_as_a_logic_app_list_and_as_a_query_result() -> None:
    row = body("security_alert_row_scheduled")
    columns = list(row)
    query_result = {
        "tables": [
            {
                "name": "PrimaryResult",
                "columns": [{"name": name, "type": "string"} for name in columns],
                "rows": [[row[name] for name in columns]],
            }
        ]
    }
    for payload in ({"value": [row]}, query_result):
        [alert] = normalize(payload)
        _row_alert_expectations(alert)


def test_published_defender_streaming_records() -> None:
    info, evidence = body("defender_stream_alertinfo"), body("defender_stream_alertevidence")
    batch = StreamBatch()
    batch.add_message(json.dumps({"records": [info, evidence]}).encode())

    assert (len(batch.infos), len(batch.evidence), batch.broken) == (1, 1, 0)
    alert = normalize_stream_alert(batch.infos[info["properties"]["AlertId"]], [], "v1")
    assert alert.alert_id == "0000000000-1111-2222-3333-444444444444"
    assert alert.severity is Severity.HIGH
    assert alert.title == "Regsvr32 Rundll32 Image Loads Abnormal Extension"
    assert alert.provider == "Microsoft Sentinel"
    assert alert.created_at == datetime(2025, 4, 21, 20, 51, 4, 58183, tzinfo=UTC)
    # The evidence row (another alert's) read as that alert's entity: a machine, impacted.
    [row] = batch.evidence
    joined = normalize_stream_alert({"AlertId": row["AlertId"], "Severity": "High"}, [row], "v1")
    [machine] = joined.entities
    assert (machine.kind, machine.raw_type, machine.roles) == (
        EntityKind.OTHER,
        "Machine",
        ("impacted",),
    )
