"""The notifications queue's dead letters: each is processed again once it can be, or, after
the give-up time, recorded as `notification.dropped` with what it named; none stays behind
unrecorded. Real notifications from the simulated tenant through the served webhook, Azurite,
the in-memory queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost
from drill.serve import LocalApi
from shared.adapters.notification_queue import InMemoryNotificationQueue
from shared.adapters.queue import Delivery
from shared.container import Container
from shared.models import AuditEntry, AuditEvent
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, BREAK_GLASS, installed, settings_for
from tests.trail import oldest_first

pytestmark = pytest.mark.integration

GROUP = "7d1c0b9e-4f3a-4e2b-9c8d-1a2b3c4d5e6f"


@dataclass
class Watch:
    sim: SimulatedTenant
    services: Container
    clock: DrillClock

    @property
    def queue(self) -> InMemoryNotificationQueue:
        queue = self.services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue)
        return queue

    async def trail(self) -> list[AuditEntry]:
        return [r.entry for r in await oldest_first(self.services.audit_store)]


@pytest.fixture
async def watch(sim: SimulatedTenant, azurite: Azurite) -> AsyncIterator[Watch]:
    sim.add_group(GROUP, "Tier 0 administrators")
    clock = DrillClock()
    api = LocalApi(settings_for(sim, azurite))
    async with api.serving() as base_url:
        settings = settings_for(
            sim,
            azurite,
            NOTIFICATION_URL=f"{base_url}/api/notifications?code=function-key",
            LIFECYCLE_NOTIFICATION_URL=f"{base_url}/api/notifications/lifecycle?code=function-key",
            NOTIFICATION_TENANT_ID=sim.tenant_id,
            BREAKGLASS_ACCOUNTS=BREAK_GLASS.id,
            WATCHED_GROUPS=GROUP,
        )
        async with installed(settings, clock) as services:
            await services.subscriptions.ensure()
            yield Watch(sim, services, clock)


async def dead_lettered_member_change(watch: Watch, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A new member of the watched group whose notification fails on every delivery (the
    intake behind it is down): it ends in the dead-letter queue. Returns the failures left
    to raise (clear it to let the intake work again)."""
    handle = watch.services.intake.handle
    down: list[Any] = [RuntimeError("the intake's storage is down")]

    async def failing(alert: Any) -> Any:
        if down:
            raise down[0]
        return await handle(alert)

    monkeypatch.setattr(watch.services.intake, "handle", failing)
    watch.sim.add_group_member(GROUP, ADELE.id)
    await asyncio.to_thread(watch.sim.wait_for_deliveries)
    await LocalHost().pump(watch.queue, "process_notification")
    assert len(watch.queue.dead_letters) == 1
    return down


async def test_a_dead_lettered_notification_is_processed_by_the_reconciler_timer(
    watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = await dead_lettered_member_change(watch, monkeypatch)
    # Still down: it stays dead-lettered, inside its give-up time.
    report = await watch.services.notification_dead_letters.drain()
    assert (report.dead_letters, report.kept, report.processed) == (1, 1, 0)
    assert len(watch.queue.dead_letters) == 1

    down.clear()
    await LocalHost().fire_timer("reconcile_actions")
    assert watch.queue.dead_letters == []
    trail = await watch.trail()
    # Each failed attempt audited the change it read before the intake failed.
    raised = [e for e in trail if e.event is AuditEvent.ALERT_RAISED]
    assert raised and {e.result["changes"]["added"] for e in raised} == {ADELE.id}
    held = [(e.kind, e.target) for e in trail if e.event is AuditEvent.ACTION_HELD]
    assert held == [("disable_account", ADELE.id)]


async def test_a_notification_failing_past_its_give_up_time_is_recorded_as_dropped(
    watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    await dead_lettered_member_change(watch, monkeypatch)
    watch.clock.advance(timedelta(minutes=watch.services.settings.give_up_minutes + 1))
    report = await watch.services.notification_dead_letters.drain()
    assert (report.dead_letters, report.dropped, report.kept) == (1, 1, 0)
    assert watch.queue.dead_letters == []
    [dropped] = [e for e in await watch.trail() if e.event is AuditEvent.NOTIFICATION_DROPPED]
    assert dropped.result["resource"].lower() == f"groups/{GROUP}"
    assert dropped.result["object_id"] == GROUP
    assert "the intake's storage is down" in dropped.result["error"]
    assert (await watch.services.chain.verify()).ok


async def test_a_dead_letter_that_is_no_notification_is_recorded(watch: Watch) -> None:
    watch.queue.dead_letters.append(Delivery("junk-1", b"{not json", "application/json", 10))
    report = await watch.services.notification_dead_letters.drain()
    assert (report.dead_letters, report.dropped) == (1, 1)
    [dropped] = [e for e in await watch.trail() if e.event is AuditEvent.NOTIFICATION_DROPPED]
    assert "junk-1" in dropped.reason and "not a change notification" in dropped.result["error"]
