"""Change notifications end to end: the simulated tenant creates subscriptions with a real
validation handshake against the webhook served over HTTP, posts notifications to it, and the
queue processor raises alerts the playbook acts on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.host import LocalHost
from drill.serve import LocalApi
from shared.adapters.notification_queue import InMemoryNotificationQueue
from shared.container import Container
from shared.models import AuditEvent, AuditRecord, utcnow
from shared.simulator import Fault, SimulatedTenant, SimUser
from shared.watch.changes import ChangeOutcome
from shared.watch.ports import ChangeNotice, WatchPurpose
from shared.watch.subscriptions import SubscriptionOutcome
from tests.conftest import ADELE, BREAK_GLASS, installed, settings_for

pytestmark = pytest.mark.integration

GROUP = "7d1c0b9e-4f3a-4e2b-9c8d-1a2b3c4d5e6f"


@dataclass
class Watch:
    sim: SimulatedTenant
    services: Container
    base_url: str

    @property
    def queue(self) -> InMemoryNotificationQueue:
        queue = self.services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue)
        return queue

    async def delivered(self) -> list[int]:
        """Wait for the simulator's deliveries; the HTTP status of each so far."""
        deliveries = await asyncio.to_thread(self.sim.wait_for_deliveries)
        return [d.status for d in deliveries]

    async def process(self) -> int:
        return await LocalHost().pump(self.queue, "process_notification")

    async def records(self) -> list[AuditRecord]:
        found = [r async for r in self.services.audit_store.newest_first()]
        return list(reversed(found))

    def live(self) -> dict[str, str]:
        """Resource -> subscription id of the simulator's live subscriptions."""
        return {s["resource"]: s["id"] for s in self.sim.subscriptions}


@pytest.fixture
async def watch(sim: SimulatedTenant, azurite: Azurite) -> AsyncIterator[Watch]:
    sim.add_group(GROUP, "Tier 0 administrators")
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
        async with installed(settings) as services:
            yield Watch(sim, services, base_url)


async def test_subscriptions_are_created_after_a_validation_handshake(watch: Watch) -> None:
    report = await watch.services.subscriptions.ensure()
    assert report == {SubscriptionOutcome.CREATED: 2}
    live = watch.sim.subscriptions
    assert {s["resource"] for s in live} == {f"users/{BREAK_GLASS.id}", f"groups/{GROUP}"}
    assert all(s["notificationUrl"].startswith(watch.base_url) for s in live)
    stored = await watch.services.subscription_store.by_subscription_id(live[0]["id"])
    assert stored is not None and stored.client_state == live[0]["clientState"]
    assert len(stored.client_state) >= 32
    assert await watch.services.subscriptions.ensure() == {SubscriptionOutcome.CURRENT: 2}


async def test_a_new_privileged_group_member_is_held_for_approval(watch: Watch) -> None:
    await watch.services.subscriptions.ensure()
    watch.sim.add_group_member(GROUP, ADELE.id)
    assert await watch.delivered() == [202]
    assert await watch.process() == 1
    records = await watch.records()
    raised = [r.entry for r in records if r.entry.event is AuditEvent.ALERT_RAISED]
    assert len(raised) == 1 and raised[0].result["changes"]["added"] == ADELE.id
    held = [r.entry for r in records if r.entry.event is AuditEvent.ACTION_HELD]
    assert [(e.kind, e.target) for e in held] == [("disable_account", ADELE.id)]
    assert watch.sim.user(ADELE.id).account_enabled


async def test_tampering_with_an_emergency_account_raises_a_high_severity_alert_only(
    watch: Watch,
) -> None:
    await watch.services.subscriptions.ensure()
    watch.sim.change_user(BREAK_GLASS.id, display_name="not suspicious at all")
    assert await watch.delivered() == [202]
    await watch.process()
    records = await watch.records()
    raised = [r.entry for r in records if r.entry.event is AuditEvent.ALERT_RAISED]
    assert len(raised) == 1
    assert raised[0].result["category"] == "EmergencyAccessTampering"
    assert raised[0].result["severity"] == "high"
    assert raised[0].result["changes"]["displayName"]["after"] == "not suspicious at all"
    acting = [r for r in records if r.entry.kind and r.entry.target == BREAK_GLASS.id]
    assert all(r.entry.event is not AuditEvent.ACTION_PLANNED for r in acting)


async def test_every_change_of_the_same_account_is_noticed(watch: Watch) -> None:
    await watch.services.subscriptions.ensure()
    for name in ("first rename", "second rename"):
        watch.sim.change_user(BREAK_GLASS.id, display_name=name)
        await watch.delivered()
        await watch.process()
    raised = [r.entry for r in await watch.records() if r.entry.event is AuditEvent.ALERT_RAISED]
    assert [e.result["changes"]["displayName"]["after"] for e in raised] == [
        "first rename",
        "second rename",
    ]


async def test_a_failure_after_reading_the_change_loses_no_alert(
    watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    await watch.services.subscriptions.ensure()
    handle = watch.services.intake.handle
    failures = [RuntimeError("the queue is down")]

    async def flaky(alert: Any) -> Any:
        if failures:
            raise failures.pop()
        return await handle(alert)

    monkeypatch.setattr(watch.services.intake, "handle", flaky)
    watch.sim.add_group_member(GROUP, ADELE.id)
    await watch.delivered()
    await watch.process()  # the first delivery fails and is abandoned; the redelivery succeeds
    assert not failures
    events = [r.entry.event for r in await watch.records()]
    assert AuditEvent.ACTION_HELD in events, "the new member's disable waits for approval"
    assert events.count(AuditEvent.ALERT_RAISED) == 1, "the failed attempt's record is reused"


async def test_a_replayed_notification_changes_nothing(watch: Watch) -> None:
    await watch.services.subscriptions.ensure()
    watch.sim.add_group_member(GROUP, ADELE.id)
    deliveries = await asyncio.to_thread(watch.sim.wait_for_deliveries)
    await watch.process()
    before = len(await watch.records())
    watch.sim.post_notifications(deliveries[0].url, deliveries[0].body)
    assert await watch.delivered() == [202, 202]
    await watch.process()
    assert len(await watch.records()) == before


async def test_renewal_comes_well_before_expiry_and_survives_a_failing_graph(
    watch: Watch,
) -> None:
    await watch.services.subscriptions.ensure()
    group_sub = watch.live()[f"groups/{GROUP}"]
    watch.sim.set_subscription_expiry(group_sub, utcnow() + timedelta(days=2))
    watch.sim.add_fault(Fault(method="PATCH", path_pattern="^/subscriptions/", times=None))
    report = await watch.services.subscriptions.ensure()
    assert report == {SubscriptionOutcome.FAILED: 1, SubscriptionOutcome.CURRENT: 1}
    watch.sim.clear_faults()
    assert await watch.services.subscriptions.ensure() == {
        SubscriptionOutcome.RENEWED: 1,
        SubscriptionOutcome.CURRENT: 1,
    }
    renewed = next(s for s in watch.sim.subscriptions if s["id"] == group_sub)
    assert renewed["expirationDateTime"] > (utcnow() + timedelta(days=28)).isoformat()


async def test_a_subscription_deleted_out_of_band_is_recreated_and_audited(watch: Watch) -> None:
    await watch.services.subscriptions.ensure()
    old = watch.live()[f"users/{BREAK_GLASS.id}"]
    watch.sim.delete_subscription(old)
    report = await watch.services.subscriptions.ensure()
    assert report == {SubscriptionOutcome.RECREATED: 1, SubscriptionOutcome.CURRENT: 1}
    new = watch.live()[f"users/{BREAK_GLASS.id}"]
    assert new != old
    assert await watch.services.subscription_store.by_subscription_id(old) is None
    records = await watch.records()
    recreated = [r.entry for r in records if r.entry.event is AuditEvent.SUBSCRIPTION_RECREATED]
    assert [(e.result["previous"], e.result["subscription"]) for e in recreated] == [(old, new)]


async def test_concurrent_timer_runs_create_each_subscription_once(watch: Watch) -> None:
    reports = await asyncio.gather(*(watch.services.subscriptions.ensure() for _ in range(3)))
    created = sum(r[SubscriptionOutcome.CREATED] for r in reports)
    assert created == 2
    assert len(watch.sim.subscriptions) == 2


async def test_reauthorization_required_renews_the_subscription(watch: Watch) -> None:
    await watch.services.subscriptions.ensure()
    group_sub = watch.live()[f"groups/{GROUP}"]
    watch.sim.set_subscription_expiry(group_sub, utcnow() + timedelta(hours=1))
    watch.sim.send_lifecycle(group_sub, "reauthorizationRequired")
    assert await watch.delivered() == [202]
    await watch.process()
    renewed = next(s for s in watch.sim.subscriptions if s["id"] == group_sub)
    assert renewed["expirationDateTime"] > (utcnow() + timedelta(days=28)).isoformat()


async def test_graph_sends_users_and_groups_no_other_lifecycle_event(watch: Watch) -> None:
    # change-notifications-lifecycle-events: subscriptionRemoved and missed are sent for Outlook
    # and Teams resources only; the simulated tenant refuses to fake them for directory objects.
    await watch.services.subscriptions.ensure()
    for sub in watch.live().values():
        for event in ("subscriptionRemoved", "missed"):
            with pytest.raises(ValueError, match=event):
                watch.sim.send_lifecycle(sub, event)


async def test_lifecycle_events_at_the_one_url_for_both_are_handled(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    # The docs allow lifecycleNotificationUrl to be the notificationUrl itself.
    sim.add_group(GROUP, "Tier 0 administrators")
    async with LocalApi(settings_for(sim, azurite)).serving() as base_url:
        url = f"{base_url}/api/notifications?code=function-key"
        settings = settings_for(
            sim,
            azurite,
            NOTIFICATION_URL=url,
            LIFECYCLE_NOTIFICATION_URL=url,
            NOTIFICATION_TENANT_ID=sim.tenant_id,
            WATCHED_GROUPS=GROUP,
        )
        async with installed(settings) as services:
            watch = Watch(sim, services, base_url)
            await services.subscriptions.ensure()
            group_sub = watch.live()[f"groups/{GROUP}"]
            sim.set_subscription_expiry(group_sub, utcnow() + timedelta(hours=1))
            sim.send_lifecycle(group_sub, "reauthorizationRequired")
            assert await watch.delivered() == [202]
            await watch.process()
            renewed = next(s for s in sim.subscriptions if s["id"] == group_sub)
            assert renewed["expirationDateTime"] > (utcnow() + timedelta(days=28)).isoformat()


async def test_a_recreated_subscription_catches_up_on_what_happened_meanwhile(
    watch: Watch,
) -> None:
    await watch.services.subscriptions.ensure()
    watch.sim.delete_subscription(watch.live()[f"groups/{GROUP}"])
    watch.sim.add_group_member(GROUP, ADELE.id)  # nobody is subscribed: nothing is delivered
    await watch.delivered()
    assert await watch.process() == 0
    await watch.services.subscriptions.ensure()
    records = await watch.records()
    raised = [r.entry for r in records if r.entry.event is AuditEvent.ALERT_RAISED]
    assert [e.result["changes"]["added"] for e in raised] == [ADELE.id]
    held = [r.entry for r in records if r.entry.event is AuditEvent.ACTION_HELD]
    assert [(e.kind, e.target) for e in held] == [("disable_account", ADELE.id)]


async def test_a_missed_lifecycle_event_resynchronizes_the_watched_group(watch: Watch) -> None:
    await watch.services.subscriptions.ensure()
    watch.sim.add_group_member(GROUP, ADELE.id)
    await watch.delivered()
    assert watch.queue.receive() is not None  # the notification is lost on the way
    await watch.process()
    assert not [r for r in await watch.records() if r.entry.event is AuditEvent.ALERT_RAISED]
    # Graph sends `missed` for Outlook resources only; should one come for a group, the group
    # is resynchronized all the same. Posted as the lifecycle page documents its shape.
    sub = next(s for s in watch.sim.subscriptions if s["resource"] == f"groups/{GROUP}")
    missed = {
        "subscriptionId": sub["id"],
        "subscriptionExpirationDateTime": sub["expirationDateTime"],
        "tenantId": watch.sim.tenant_id,
        "clientState": sub["clientState"],
        "lifecycleEvent": "missed",
    }
    watch.sim.post_notifications(sub["lifecycleNotificationUrl"], {"value": [missed]})
    assert await watch.delivered() == [202, 202]
    await watch.process()
    raised = [r.entry for r in await watch.records() if r.entry.event is AuditEvent.ALERT_RAISED]
    assert [e.result["changes"]["added"] for e in raised] == [ADELE.id]


def user_notice(key: str, change_type: str, user_id: str = ADELE.id) -> ChangeNotice:
    return ChangeNotice(
        id=key,
        subscription_id="6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
        subscription_key="all-users",
        purpose=WatchPurpose.ALL_USERS,
        resource=f"Users/{user_id}",
        change_type=change_type,
        object_id=user_id,
    )


NEWCOMER = SimUser(
    id="3b9e7c1d-2f4a-4d6b-8e0c-5a7f9b1d3e2c",
    user_principal_name="newcomer@contoso.example",
    display_name="Newcomer",
)


async def test_new_and_re_enabled_accounts_matter_only_during_an_incident(
    sim: SimulatedTenant, services: Container
) -> None:
    changes = services.changes
    sim.create_user(SimUser(**vars(NEWCOMER)))
    # Outside an incident a new account is only remembered.
    assert await changes.process(user_notice("n1", "updated", NEWCOMER.id)) is (
        ChangeOutcome.NOTHING
    )
    await services.approval_store.spend("someone-contained", utcnow())  # an incident is active
    late = SimUser(**{**vars(NEWCOMER), "id": str(uuid.uuid4()), "user_principal_name": "l@x.y"})
    sim.create_user(late)
    # Graph announces the creation as `updated`: a user never seen, created just now, is new.
    assert await changes.process(user_notice("n2", "updated", late.id)) is ChangeOutcome.RAISED
    # Graph sends several notifications for one creation: the account is no longer new.
    assert await changes.process(user_notice("n2b", "updated", late.id)) is ChangeOutcome.NOTHING
    # An old account seen for the first time is not new (ADELE has no createdDateTime).
    assert await changes.process(user_notice("n3", "updated")) is ChangeOutcome.NOTHING
    sim.change_user(ADELE.id, account_enabled=False)
    assert await changes.process(user_notice("n4", "updated")) is ChangeOutcome.NOTHING
    sim.change_user(ADELE.id, account_enabled=True)
    assert await changes.process(user_notice("n5", "updated")) is ChangeOutcome.RAISED
    records = [r.entry async for r in services.audit_store.newest_first()]
    raised = [
        (e.result["category"], e.target) for e in records if e.event is AuditEvent.ALERT_RAISED
    ]
    assert sorted(raised) == [
        ("AccountReenabledDuringIncident", ADELE.id),
        ("NewUserDuringIncident", late.id),
    ]


async def test_a_new_user_in_the_tenant_reaches_the_processor_as_updated(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    async with LocalApi(settings_for(sim, azurite)).serving() as base_url:
        settings = settings_for(
            sim,
            azurite,
            NOTIFICATION_URL=f"{base_url}/api/notifications?code=function-key",
            NOTIFICATION_TENANT_ID=sim.tenant_id,
            WATCH_ALL_USERS="true",
        )
        async with installed(settings) as services:
            watch = Watch(sim, services, base_url)
            # Subscribing with `created` would be refused: the product asks for `updated`.
            await services.subscriptions.ensure()
            [live] = [s for s in sim.subscriptions if s["resource"] == "users"]
            assert live["changeType"] == "updated"
            await services.approval_store.spend("someone-contained", utcnow())
            sim.create_user(SimUser(**vars(NEWCOMER)))
            deliveries = await asyncio.to_thread(sim.wait_for_deliveries)
            assert [d.body["value"][0]["changeType"] for d in deliveries] == ["updated"]
            await watch.process()
            records = [r.entry async for r in services.audit_store.newest_first()]
            raised = [e for e in records if e.event is AuditEvent.ALERT_RAISED]
            assert [(e.result["category"], e.target) for e in raised] == [
                ("NewUserDuringIncident", NEWCOMER.id)
            ]
