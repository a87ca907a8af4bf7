"""The Service Bus-triggered executor, driven through the in-memory queue with peek-lock
semantics: effects on the simulated tenant, retries, permanent failures, and the audit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost, host_message
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.models import ActionKind, ActionRequest
from shared.simulator import Fault, SimulatedTenant
from tests.conftest import ADELE, BREAK_GLASS, installed, settings_for

pytestmark = pytest.mark.integration


def compromised(user: str, alert_id: str = "soc-7") -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Token theft",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "upn": user, "roles": ["compromised"]}],
    }


def queue_of(services: Container) -> InMemoryActionQueue:
    assert isinstance(services.queue, InMemoryActionQueue)
    return services.queue


async def events(services: Container) -> list[tuple[str, str | None]]:
    records = [r async for r in services.audit_store.newest_first()]
    return [(str(r.entry.event), r.entry.kind) for r in reversed(records)]


async def test_a_compromised_account_is_disabled_and_its_sessions_revoked(
    services: Container, sim: SimulatedTenant
) -> None:
    await services.intake.handle_payload(compromised(ADELE.user_principal_name))
    deliveries = await LocalHost().pump(queue_of(services))
    assert deliveries == 2
    adele = sim.user(ADELE.id)
    assert not adele.account_enabled and adele.revocations == 1
    assert sorted(await events(services)) == sorted(
        [
            ("action.planned", "disable_account"),
            ("action.planned", "revoke_sessions"),
            ("action.executed", "disable_account"),
            ("action.executed", "revoke_sessions"),
        ]
    )
    executed = [r async for r in services.audit_store.newest_first()][0].entry
    assert executed.result["request_ids"], "Graph request ids are kept for the auditor"
    assert "before" in executed.result and "after" in executed.result
    assert (await services.chain.verify()).ok


async def test_an_already_disabled_account_is_not_patched_again(
    services: Container, sim: SimulatedTenant
) -> None:
    action = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, ADELE.id, "engineer:1"),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=ADELE.id,
    )
    await services.runner.run(action)
    sim.reset_requests()
    repeat = action.model_copy(update={"id": "act-" + "0" * 32})
    outcome = await services.runner.run(repeat)
    assert outcome is not None and outcome.status == "already_done"
    # Only reads: the user, and its roles, read beside it before the user showed it disabled.
    assert {method for method, _ in sim.requests} == {"GET"}
    assert sum(p.split("?")[0].endswith(f"/users/{ADELE.id}") for _, p in sim.requests) == 1


async def test_a_redelivered_message_of_a_finished_action_changes_nothing(
    services: Container, sim: SimulatedTenant
) -> None:
    await services.intake.handle_payload(compromised(ADELE.user_principal_name))
    queue = queue_of(services)
    first = queue.receive()
    assert first is not None
    host = LocalHost()
    assert first.properties.get("claim_etag"), "sent as the outbox sends: with its claim's ETag"
    await host.functions["execute_action"](host_message(first))
    before = await events(services)
    first.delivery_count = 2
    await host.functions["execute_action"](host_message(first))
    assert await events(services) == before


async def test_a_throttling_storm_is_retried_until_it_passes_and_runs_once(
    timed: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await timed.intake.handle_payload(compromised(ADELE.user_principal_name))
    sim.add_fault(Fault(path_pattern=r"^/users/", status=429, retry_after="1", times=3))
    queue = queue_of(timed)
    await LocalHost().pump_through_time(queue, clock)
    assert not sim.user(ADELE.id).account_enabled and sim.user(ADELE.id).revocations == 1
    audit = await events(timed)
    assert audit.count(("action.executed", "disable_account")) == 1
    assert audit.count(("action.executed", "revoke_sessions")) == 1
    assert not [e for e in audit if e[0] == "action.failed"]
    assert queue.dead_letters == []


@pytest.fixture
async def impatient(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[Container]:
    """A container whose Graph client does not retry inside one delivery, on a movable clock."""
    async with installed(settings_for(sim, azurite, GRAPH_MAX_RETRIES=0), clock) as built:
        yield built


async def test_a_storm_that_outlasts_the_give_up_time_is_audited_as_failed_once(
    impatient: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await impatient.intake.handle_payload(compromised(ADELE.user_principal_name))
    sim.add_fault(Fault(path_pattern=r"^/users/", status=503, times=None))
    queue = queue_of(impatient)
    start = clock()
    deliveries = await LocalHost().pump_through_time(queue, clock)
    # Retried with backoff, not burnt: more deliveries than the queue's max delivery count,
    # spread over the give-up time.
    assert deliveries > 2 * impatient.settings.max_deliveries
    assert clock() - start >= timedelta(minutes=impatient.settings.give_up_minutes)
    audit = await events(impatient)
    failed = [e for e in audit if e[0] == "action.failed"]
    assert sorted(failed) == [
        ("action.failed", "disable_account"),
        ("action.failed", "revoke_sessions"),
    ]
    assert sim.user(ADELE.id).account_enabled, "nothing was executed"
    assert queue.dead_letters == []


async def test_an_unknown_user_fails_permanently_without_retries(
    services: Container, sim: SimulatedTenant
) -> None:
    await services.intake.handle_payload(compromised("nobody@contoso.onmicrosoft.com"))
    deliveries = await LocalHost().pump(queue_of(services))
    assert deliveries == 2
    records = [r async for r in services.audit_store.newest_first()]
    failures = [r.entry for r in records if r.entry.event == "action.failed"]
    assert len(failures) == 2
    assert all("404" in (f.result.get("error") or "") for f in failures)


async def test_a_protected_account_named_by_upn_is_refused_at_execution(
    services: Container, sim: SimulatedTenant
) -> None:
    # The settings list the break-glass account by object id; the alert names it by UPN.
    await services.intake.handle_payload(compromised(BREAK_GLASS.user_principal_name))
    await LocalHost().pump(queue_of(services))
    guard = sim.user(BREAK_GLASS.id)
    assert guard.account_enabled and guard.revocations == 0
    audit = await events(services)
    assert audit.count(("action.refused", "disable_account")) == 1
    assert audit.count(("action.refused", "revoke_sessions")) == 1


async def test_a_malformed_message_is_audited_and_completed(services: Container) -> None:
    await LocalHost().functions["execute_action"](_message(b'{"kind": "format_c"}', "m-1", 1))
    records = [r async for r in services.audit_store.newest_first()]
    assert [(r.entry.event, r.entry.action_id) for r in records] == [("action.failed", "m-1")]


@pytest.fixture
async def dry(sim: SimulatedTenant, azurite: Azurite) -> AsyncIterator[Container]:
    async with installed(settings_for(sim, azurite, RESPONDER_DRY_RUN="true")) as built:
        yield built


async def test_dry_run_reads_the_tenant_writes_nothing_and_says_so(
    dry: Container, sim: SimulatedTenant
) -> None:
    await dry.intake.handle_payload(compromised(ADELE.user_principal_name))
    await LocalHost().pump(queue_of(dry))
    adele = sim.user(ADELE.id)
    assert adele.account_enabled and adele.revocations == 0
    assert {m for m, _ in sim.requests} == {"GET"}
    records = [r async for r in dry.audit_store.newest_first()]
    plans = [r.entry for r in records if r.entry.event == "action.dry_run"]
    assert len(plans) == 2
    assert any("PATCH /users/" in call for p in plans for call in p.result["calls"])


def _message(body: bytes, message_id: str, delivery_count: int) -> Any:
    from azure.functions.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        body=body,
        message_id=message_id,
        delivery_count=delivery_count,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )


async def test_an_audit_outage_after_execution_is_redelivered_not_reported_as_failed(
    services: Container, sim: SimulatedTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    await services.intake.handle_payload(compromised(ADELE.user_principal_name))
    store = services.audit_store
    real_insert = store.insert_all
    outages = [1]

    async def flaky_insert(records: Any, index: Any) -> None:
        if outages:
            outages.pop()
            raise ConnectionError("table service unreachable")
        await real_insert(records, index)

    monkeypatch.setattr(store, "insert_all", flaky_insert)
    await LocalHost().pump(queue_of(services))
    assert not sim.user(ADELE.id).account_enabled
    audit = await events(services)
    assert not [e for e in audit if e[0] == "action.failed"]
    assert ("action.already_done", "disable_account") in audit or (
        "action.executed",
        "disable_account",
    ) in audit
