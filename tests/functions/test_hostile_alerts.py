"""Hostile alert input on every ingest path the responder owns (webhook, alerts_v2 poller,
Defender stream), end to end: functions invoked with azure.functions objects, Azurite, the
simulated tenant, and the queued actions executed, so each test shows whether the account an
alert names is contained. Alert titles come from custom detections and file names, so an
attacker chooses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.host import LocalHost
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.models import utcnow
from shared.poller import FEED
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, installed, settings_for
from tests.functions.test_defender_stream import INFO, PLAYBOOK, USER_ROW, deliver, event
from tests.functions.test_ingest_alert import generic_alert, post, problem, request
from tests.functions.test_poll_alerts import graph_alert

pytestmark = pytest.mark.integration

# Valid JSON ("\ud800" escapes a lone high surrogate), but not encodable as UTF-8.
HOSTILE_TITLE = "Mass download of report\ud800.docx"
SCRUBBED_TITLE = "Mass download of report\ufffd.docx"


def queue_of(services: Container) -> InMemoryActionQueue:
    assert isinstance(services.queue, InMemoryActionQueue)
    return services.queue


async def audit_reasons(services: Container) -> list[str]:
    return [r.entry.reason or "" async for r in services.audit_store.newest_first()]


async def contained(services: Container, sim: SimulatedTenant) -> bool:
    await LocalHost().pump(queue_of(services))
    adele = sim.user(ADELE.id)
    return not adele.account_enabled and adele.revocations == 1


async def test_webhook_a_lone_surrogate_in_the_title_is_replaced_and_the_account_contained(
    services: Container, sim: SimulatedTenant
) -> None:
    body = json.dumps(generic_alert(ADELE.id, title=HOSTILE_TITLE)).encode()
    assert b"\\ud800" in body

    response = await post(request(body))

    assert response.status_code == 202, response.get_body()[:300]
    [result] = json.loads(response.get_body())["alerts"]
    assert result["alert"]["title"] == SCRUBBED_TITLE
    assert await contained(services, sim)
    reasons = await audit_reasons(services)
    assert reasons and all(SCRUBBED_TITLE in reason for reason in reasons)


async def test_webhook_lone_surrogates_in_keys_and_nested_values_never_reach_storage(
    services: Container, sim: SimulatedTenant
) -> None:
    alert = generic_alert(ADELE.id, category="InitialAccess")
    alert["\udc00note"] = {"\ud800": ["\udfff", 1]}
    alert["entities"][0]["display_name"] = "Adele\udbff"
    response = await post(request(json.dumps(alert).encode()))

    assert response.status_code == 202, response.get_body()[:300]
    [result] = json.loads(response.get_body())["alerts"]
    assert result["alert"]["entities"][0]["display_name"] == "Adele\ufffd"
    assert await contained(services, sim)


async def test_poller_a_lone_surrogate_in_the_title_is_handled_once_and_the_account_contained(
    services: Container, sim: SimulatedTenant
) -> None:
    hostile = graph_alert(1, minutes_ago=2)
    hostile["title"] = HOSTILE_TITLE
    hostile["evidence"][0]["userAccount"]["displayName"] = "x\udc00"
    sim.add_alert(hostile)

    await LocalHost().fire_timer("poll_alerts")  # the timer function, as the host calls it

    assert len(queue_of(services)) == 2
    watermark = await services.state.watermark(FEED)
    assert watermark is not None and watermark.isoformat()[:19] == hostile["createdDateTime"][:19]
    assert await contained(services, sim)
    assert all(SCRUBBED_TITLE in reason for reason in await audit_reasons(services))
    # The next run does not fail on it again: the version was handled.
    again = await services.poller.poll(utcnow())
    assert (again.duplicates, again.failed) == (1, 0)


async def test_stream_a_lone_surrogate_in_streamed_rows_is_replaced_and_the_account_contained(
    sim: SimulatedTenant, azurite: Azurite, tmp_path: Path
) -> None:
    playbook = tmp_path / "playbook.toml"
    playbook.write_text(PLAYBOOK)
    info: dict[str, Any] = json.loads(json.dumps(INFO))
    info["properties"]["Title"] = HOSTILE_TITLE
    row: dict[str, Any] = json.loads(json.dumps(USER_ROW))
    row["properties"]["AccountName"] = "adele\ud800"
    async with installed(settings_for(sim, azurite, RESPONDER_PLAYBOOK=str(playbook))) as services:
        await deliver(event(info, row))

        stored = await services.stream_rows.info(info["properties"]["AlertId"])
        assert stored is not None and stored["Title"] == SCRUBBED_TITLE
        await LocalHost().pump(queue_of(services))
        adele = sim.user(ADELE.id)
        assert adele.revocations == 1  # the test playbook revokes sessions
        assert all(SCRUBBED_TITLE in reason for reason in await audit_reasons(services))


@pytest.mark.parametrize(
    ("field", "size", "detail"),
    [
        ("incident_id", 40_000, "incident_id"),
        ("version", 100_000, "version"),
        ("id", 5_000, "id"),
    ],
)
async def test_webhook_an_oversized_id_is_a_clear_400_before_anything_is_claimed(
    services: Container, field: str, size: int, detail: str
) -> None:
    alert = generic_alert(ADELE.id, **{field: "7" * size})
    response = await post(request(json.dumps(alert).encode()))

    assert response.status_code == 400
    assert f"{detail}: String should have at most" in problem(response)["detail"]
    assert len(queue_of(services)) == 0
    assert await audit_reasons(services) == []


async def test_webhook_an_oversized_entity_id_is_a_clear_400(services: Container) -> None:
    alert = generic_alert(ADELE.id)
    alert["entities"].append({"kind": "ip", "address": "1" * 50_000})
    response = await post(request(json.dumps(alert).encode()))

    assert response.status_code == 400
    assert "entities[1]: address: String should have at most 1024" in problem(response)["detail"]
    assert len(queue_of(services)) == 0


async def test_poller_an_oversized_incident_id_is_skipped_without_holding_the_watermark(
    services: Container, sim: SimulatedTenant
) -> None:
    oversized = graph_alert(1, minutes_ago=3)
    oversized["incidentId"] = "9" * 40_000
    sim.add_alert(oversized)
    sim.add_alert(graph_alert(2, minutes_ago=2))

    await LocalHost().fire_timer("poll_alerts")

    assert len(queue_of(services)) == 2, "the other alert is handled"
    assert await contained(services, sim)
    report = await services.poller.poll(utcnow())  # the next run: nothing fails or is held
    assert (report.invalid, report.failed, report.duplicates) == (1, 0, 1)


async def test_stream_an_oversized_alert_id_is_counted_broken_not_stored(
    services: Container,
) -> None:
    info: dict[str, Any] = json.loads(json.dumps(INFO))
    info["properties"]["AlertId"] = "a" * 2_000  # fits a stored row, not an alert id
    report = await services.defender_stream.ingest([event(info).get_body()])

    assert (report.broken, report.infos, report.handled) == (1, 0, 0)


@pytest.mark.parametrize(
    "entities",
    [
        [{"kind": ["user"], "user_id": ADELE.id}],
        [{"kind": {"user": 1}, "user_id": ADELE.id}],
        [{"kind": "user", "roles": [["compromised"]], "user_id": ADELE.id}],
        [{"kind": "user", "verdict": {"malicious": True}, "user_id": ADELE.id}],
    ],
)
async def test_webhook_unhashable_values_where_strings_belong_are_a_400(
    services: Container, entities: list[dict[str, Any]]
) -> None:
    alert = generic_alert(ADELE.id)
    alert["entities"] = entities
    response = await post(request(json.dumps(alert).encode()))

    assert response.status_code == 400
    assert "generic alert" in problem(response)["detail"]
