"""The alerts_v2 poller (timer trigger): follows nextLink, keeps its watermark in table storage,
and never handles the same alert version twice."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from drill.host import LocalHost
from shared.adapters import graph as graph_adapter
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.models import utcnow
from shared.poller import FEED
from shared.simulator import Fault, SimulatedTenant
from tests.conftest import ADELE

pytestmark = pytest.mark.integration


def graph_alert(n: int, minutes_ago: float, user_id: str = ADELE.id) -> dict[str, Any]:
    stamp = (utcnow() - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    return {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": f"da6375512276775608{n:03d}_-9614448{n:03d}",
        "title": f"Suspicious sign-in {n}",
        "severity": "high",
        "category": "CredentialAccess",
        "serviceSource": "microsoftDefenderForIdentity",
        "createdDateTime": stamp,
        "lastUpdateDateTime": stamp,
        "evidence": [
            {
                "@odata.type": "#microsoft.graph.security.userEvidence",
                "roles": ["compromised"],
                "verdict": "malicious",
                "userAccount": {"azureAdUserId": user_id, "userPrincipalName": None},
            }
        ],
    }


def queue_of(services: Container) -> InMemoryActionQueue:
    assert isinstance(services.queue, InMemoryActionQueue)
    return services.queue


async def test_alerts_are_picked_up_paged_and_the_watermark_persisted(
    services: Container, sim: SimulatedTenant
) -> None:
    for n in range(250):
        sim.add_alert(graph_alert(n, minutes_ago=30 - n * 0.01, user_id=ADELE.id))
    await LocalHost().fire_timer("poll_alerts")
    pages = [path for method, path in sim.requests if path == "/security/alerts_v2"]
    assert len(pages) == 2, "250 alerts at 200 a page"
    watermark = await services.state.watermark(FEED)
    assert watermark is not None
    newest = max(a["lastUpdateDateTime"] for a in sim.alerts)
    assert watermark.strftime("%Y-%m-%dT%H:%M:%S.%f") == newest[:26]
    # Every alert plans its own two actions (ids derive from the alert).
    assert len(queue_of(services)) == 500


async def test_a_second_poll_handles_nothing_twice(
    services: Container, sim: SimulatedTenant
) -> None:
    sim.add_alert(graph_alert(1, minutes_ago=2))
    host = LocalHost()
    await host.fire_timer("poll_alerts")
    await host.fire_timer("poll_alerts")
    records = [r async for r in services.audit_store.newest_first()]
    assert len(records) == 2 and len(queue_of(services)) == 2


async def test_an_updated_alert_version_is_handled_again_but_its_actions_coalesce(
    services: Container, sim: SimulatedTenant
) -> None:
    sim.add_alert(graph_alert(1, minutes_ago=2))
    host = LocalHost()
    await host.fire_timer("poll_alerts")
    sim.add_alert(graph_alert(1, minutes_ago=1))
    await host.fire_timer("poll_alerts")
    assert len(queue_of(services)) == 2
    assert len([r async for r in services.audit_store.newest_first()]) == 2


async def test_alerts_older_than_the_lookback_are_not_fetched(
    services: Container, sim: SimulatedTenant
) -> None:
    lookback = services.settings.poll_lookback_minutes
    sim.add_alert(graph_alert(1, minutes_ago=lookback + 30))
    await LocalHost().fire_timer("poll_alerts")
    assert len(queue_of(services)) == 0


async def test_a_malformed_alert_is_skipped_and_the_rest_handled(
    services: Container, sim: SimulatedTenant
) -> None:
    broken = graph_alert(1, minutes_ago=3)
    broken["evidence"] = "not a list"
    sim.add_alert(broken)
    sim.add_alert(graph_alert(2, minutes_ago=2))
    report = await services.poller.poll(utcnow())
    assert (report.invalid, report.alerts_handled) == (1, 1)


async def test_a_failing_graph_keeps_the_watermark_so_the_next_poll_catches_up(
    services: Container, sim: SimulatedTenant
) -> None:
    sim.add_alert(graph_alert(1, minutes_ago=2))
    sim.add_fault(Fault(path_pattern="^/security/alerts_v2", status=503, times=None))
    with pytest.raises(Exception, match="503"):
        await LocalHost().fire_timer("poll_alerts")
    assert await services.state.watermark(FEED) is None
    sim.clear_faults()
    await LocalHost().fire_timer("poll_alerts")
    assert len(queue_of(services)) == 2


async def test_alerts_arriving_between_pages_are_neither_lost_nor_handled_twice(
    services: Container, sim: SimulatedTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Graph lists newest first and pages by $skip: a new alert pushes the list down, so the
    # next page repeats the last alert of the page before.
    monkeypatch.setattr(graph_adapter, "ALERTS_PAGE_SIZE", 2)
    for n in range(5):
        sim.add_alert(graph_alert(n, minutes_ago=50 - n * 10))
    sim.before_alerts_page(2, lambda: sim.add_alert(graph_alert(9, minutes_ago=1)))
    await LocalHost().fire_timer("poll_alerts")
    assert len(queue_of(services)) == 2 * 5, "the repeated alert is handled once"
    watermark = await services.state.watermark(FEED)
    assert watermark is not None and watermark < utcnow() - timedelta(minutes=9)
    await LocalHost().fire_timer("poll_alerts")
    assert len(queue_of(services)) == 2 * 6, "the newcomer is picked up by the next poll"


async def test_an_alert_moving_onto_a_page_already_read_is_not_lost(
    services: Container, sim: SimulatedTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An update listed late (its lastUpdateDateTime 7 minutes behind the newest alert, beyond
    # the poller's overlap) moves an unread alert onto the first page after it was read.
    monkeypatch.setattr(graph_adapter, "ALERTS_PAGE_SIZE", 2)
    for n in range(5):
        sim.add_alert(graph_alert(n, minutes_ago=50 - n * 10))
    sim.before_alerts_page(2, lambda: sim.add_alert(graph_alert(1, minutes_ago=17)))
    await LocalHost().fire_timer("poll_alerts")
    await LocalHost().fire_timer("poll_alerts")
    assert len(queue_of(services)) == 2 * 5, "every alert planned its actions"


async def test_a_listing_that_never_settles_fails_the_poll_and_keeps_the_watermark(
    services: Container, sim: SimulatedTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every reading of the list has an alert moving onto a page already read: the poll gives
    # up after its attempts, as a transient failure, and the next poll starts from the same
    # watermark.
    monkeypatch.setattr(graph_adapter, "ALERTS_PAGE_SIZE", 2)
    for n in range(8):
        sim.add_alert(graph_alert(n, minutes_ago=55 - n * 5))
    for n, minutes_ago in ((3, 19), (2, 18), (1, 17)):
        sim.before_alerts_page(
            2, lambda n=n, m=minutes_ago: sim.add_alert(graph_alert(n, minutes_ago=m))
        )
    with pytest.raises(Exception, match="kept changing"):
        await LocalHost().fire_timer("poll_alerts")
    assert await services.state.watermark(FEED) is None
