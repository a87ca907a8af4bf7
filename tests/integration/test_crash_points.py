"""Nothing is lost under fire: a worker killed at each step between two writes, storage and
Service Bus outages, lost Graph responses and Exchange throttling all end with every action
contained or recorded, with exactly one outcome record each.

The real Azurite-backed adapters and the simulated tenant, with the in-memory queue. A kill is
a `Killed` (a BaseException, like the host stopping the worker) raised from a wrapped port;
from then on every call of that worker raises it too, so no clean-up code gets to run, as in a
real crash. The message's lock then expires and the queue delivers it again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost, host_message
from functions.http import KEY_HEADER
from shared import audit
from shared.adapters.queue import DUPLICATE_WINDOW, Delivery, InMemoryActionQueue
from shared.audit import lane_chain
from shared.container import Container
from shared.errors import TransientError
from shared.ingest import normalize
from shared.models import ActionKind, ActionRequest, Actor, AuditEntry, Decision, OutcomeStatus
from shared.outbox import CLAIM_LEASE
from shared.ports import ApprovalState, BlockState
from shared.simulator import Fault, SimulatedTenant
from tests.conftest import ADELE, BREAK_GLASS, WEBHOOK_SECRET, installed, settings_for
from tests.trail import oldest_first

pytestmark = pytest.mark.integration

ATTACKER = "185.220.101.47"
OUTCOMES = {f"action.{status}" for status in OutcomeStatus}


class Killed(BaseException):
    """The worker died here."""


@dataclass
class Kill:
    at: str
    when: Callable[..., bool]
    after: bool


class Faults:
    """Wraps the container's storage and queue ports. `kill_before`/`kill_after` stop the
    worker at one call; `storage_down` and `queue_down` make calls fail the way an unreachable
    Table service or Service Bus does."""

    STORAGE = ("state", "blocks", "approval_store", "audit_store", "audit_index")

    def __init__(self, services: Container) -> None:
        self.dead = False
        self.storage_down = False
        self.queue_down = False
        self.kills: list[Kill] = []
        for name in self.STORAGE:
            self._wrap(getattr(services, name), storage=True)
        self._wrap(services.queue, storage=False)

    def kill_before(self, at: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
        self.kills.append(Kill(at, when, after=False))

    def kill_after(self, at: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
        self.kills.append(Kill(at, when, after=True))

    def storage_down_after(self, at: str) -> None:
        """Storage becomes unreachable right after the first call of `at` returns (until the
        test brings it back)."""
        once = [1]

        def outage(*args: Any, **kwargs: Any) -> bool:
            if once:
                once.pop()
                self.storage_down = True
            return False

        self.kill_after(at, outage)

    def revive(self) -> None:
        """A new worker takes over (the kill happened once)."""
        self.dead = False

    def _wrap(self, port: object, storage: bool) -> None:
        for name, method in inspect.getmembers(port, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                setattr(port, name, self._wrapped(f"{type(port).__name__}.{name}", method, storage))
        for name, method in inspect.getmembers(port, inspect.isasyncgenfunction):
            if not name.startswith("_"):
                setattr(port, name, self._streamed(f"{type(port).__name__}.{name}", method))

    def _check(self, label: str, storage: bool) -> None:
        if self.dead:
            raise Killed(label)
        if storage and self.storage_down:
            raise ServiceRequestError(f"{label}: connection refused")
        if not storage and self.queue_down:
            raise ConnectionError(f"{label}: Service Bus unreachable")

    def _streamed(self, label: str, method: Any) -> Any:
        """A storage read that yields as it goes (a query): fails as the storage calls do."""

        async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            self._check(label, storage=True)
            async for item in method(*args, **kwargs):
                yield item

        return stream

    def _wrapped(self, label: str, method: Any, storage: bool) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self._check(label, storage)
            self._maybe_kill(label, args, kwargs, after=False)
            result = await method(*args, **kwargs)
            self._maybe_kill(label, args, kwargs, after=True)
            return result

        return call

    def _maybe_kill(self, label: str, args: Any, kwargs: Any, after: bool) -> None:
        for kill in self.kills:
            if kill.at == label and kill.after is after and kill.when(*args, **kwargs):
                self.kills.remove(kill)
                self.dead = True
                raise Killed(label)


@pytest.fixture
async def services(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[Container]:
    settings = settings_for(sim, azurite, IP_BLOCK_BATCH_SECONDS=0)
    async with installed(settings, clock) as built:
        yield built


@pytest.fixture
def faults(services: Container) -> Faults:
    return Faults(services)


def compromised(alert_id: str = "soc-7") -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Token theft",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "upn": ADELE.user_principal_name, "roles": ["compromised"]}],
    }


def attack(alert_id: str = "mx-1") -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Forged SMTP submissions flooding Exchange Online",
        "severity": "high",
        "category": "Impact",
        "entities": [{"kind": "ip", "address": ATTACKER, "roles": ["attacker"]}],
    }


def queue_of(services: Container) -> InMemoryActionQueue:
    assert isinstance(services.queue, InMemoryActionQueue)
    return services.queue


async def deliver_all(
    services: Container,
    faults: Faults,
    clock: DrillClock,
    until: timedelta = timedelta(hours=2),
    before_each: Callable[[], None] = lambda: None,
) -> int:
    """Play the Functions host: deliver every message, moving the clock to the next scheduled
    one when nothing is due. A killed delivery's lock expires and it comes back."""
    queue = queue_of(services)
    execute = LocalHost().functions["execute_action"]
    deadline = clock() + until
    deliveries = 0
    while True:
        delivery = queue.receive()
        if delivery is None:
            if not queue.scheduled or queue.scheduled[0][0] > deadline:
                return deliveries
            clock.advance(max(queue.scheduled[0][0] - clock(), timedelta()))
            continue
        before_each()
        deliveries += 1
        try:
            await execute(host_message(delivery))
        except Killed:
            faults.revive()
            queue.abandon(delivery)
        except Exception:
            queue.abandon(delivery)


async def trail(services: Container) -> list[AuditEntry]:
    return [r.entry for r in await oldest_first(services.audit_store)]


async def outcomes(services: Container) -> dict[str, list[str]]:
    """kind -> the outcome events recorded for actions of that kind, oldest first."""
    found: dict[str, list[str]] = {}
    for entry in await trail(services):
        if str(entry.event) in OUTCOMES and entry.kind:
            found.setdefault(entry.kind, []).append(str(entry.event))
    return found


async def assert_one_outcome_per_action(services: Container) -> None:
    entries = await trail(services)
    planned = Counter(e.action_id for e in entries if e.event == "action.planned")
    ended = Counter(e.action_id for e in entries if str(e.event) in OUTCOMES)
    assert set(planned.values()) == {1}, f"planned more than once: {planned}"
    assert ended == Counter(dict.fromkeys(planned, 1)), f"outcome records: {ended}"


async def assert_contained(services: Container, sim: SimulatedTenant) -> None:
    adele = sim.user(ADELE.id)
    assert not adele.account_enabled, "the account was never disabled"
    assert adele.revocations == 1, f"sessions revoked {adele.revocations} times"
    assert await outcomes(services) == {
        "disable_account": ["action.executed"],
        "revoke_sessions": ["action.executed"],
    }
    await assert_one_outcome_per_action(services)
    assert (await services.chain.verify()).ok


def received(services: Container) -> list[Delivery]:
    """Every message waiting on the action queue, taken off it."""
    queue = queue_of(services)
    return list(iter(queue.receive, None))


def assert_written_once(sim: SimulatedTenant) -> None:
    patches = [p for m, p in sim.requests if m == "PATCH" and ADELE.id in p]
    assert len(patches) == 1, "the account was written once"


async def assert_nothing_resent_and_contained_once(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    """The reconciler finds nothing to send again; then every message is delivered, and the
    alert is contained with the account written once."""
    assert (await services.reconciler.run()).resent == 0
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)
    assert_written_once(sim)


async def handle_losing_the_sent_marks(services: Container) -> None:
    """Intake of `compromised()` whose write of the sent and handled marks fails (the sender
    gets the error); the ledger is whole again afterwards."""
    state = services.state
    mark_sent = state.mark_sent

    async def refused(*action_ids: str, handled: object = ()) -> None:
        raise ServiceRequestError("StateTable.mark_sent: connection refused")

    state.mark_sent = refused  # type: ignore[method-assign]
    try:
        with pytest.raises(ServiceRequestError):
            await services.intake.handle_payload(compromised())
    finally:
        state.mark_sent = mark_sent  # type: ignore[method-assign]


# Intake ----------------------------------------------------------------------------------------


async def test_killed_between_claim_and_send_the_next_delivery_of_the_alert_sends(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    faults.kill_before("InMemoryActionQueue.send")
    with pytest.raises(Killed):
        await services.intake.handle_payload(compromised())
    faults.revive()

    # Defender / the Logic App delivers the alert again once the dead worker's lease on its
    # claims has run out: it must not coalesce into claims that never reached the queue.
    clock.advance(CLAIM_LEASE)
    [again] = await services.intake.handle_payload(compromised())
    assert len(again.queued) == 2
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)


async def test_killed_between_claim_and_send_the_reconciler_sends(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    faults.kill_before("InMemoryActionQueue.send")
    with pytest.raises(Killed):
        await services.intake.handle_payload(compromised())
    faults.revive()

    early = await services.reconciler.run()
    assert early.resent == 0, "a claim being sent right now is left alone"
    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    report = await services.reconciler.run()
    assert report.resent == 2
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)


async def test_storage_failing_during_the_intake_commit_answers_5xx_and_loses_nothing(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    # Storage becomes unreachable right after the alert's claims landed (one transaction).
    faults.storage_down_after("StateTable.claim_all")
    host = LocalHost()
    headers = {KEY_HEADER: WEBHOOK_SECRET}
    with pytest.raises(ServiceRequestError):
        # The Functions host answers 500: the sender retries.
        await host.post_json("ingest_alert", "alerts", compromised(), headers)
    faults.storage_down = False

    # The retry comes while the claims' lease is live: it leaves them to the reconciler,
    # which sends both once the lease has run out.
    response = await host.post_json("ingest_alert", "alerts", compromised(), headers)
    assert response.status_code == 202
    [answer] = json.loads(response.get_body())["alerts"]
    assert sorted(answer["coalesced"]) == sorted(
        a.id for a in services.policy.plan(normalize(compromised())[0]).actions
    )
    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    report = await services.reconciler.run()
    assert report.resent == 2
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)


async def test_storage_failing_between_the_claims_of_one_alert_loses_nothing(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    # The sign-out was claimed before (an engineer's request with the same id), so the
    # alert's claims cannot go in one transaction: each is claimed on its own, and storage
    # becomes unreachable right after the first of those landed.
    [plan] = [services.policy.plan(a) for a in normalize(compromised())]
    [revoke] = [a for a in plan.actions if a.kind is ActionKind.REVOKE_SESSIONS]
    assert await services.outbox.claim_all([revoke], await services.outbox.claim_seq())
    faults.storage_down_after("StateTable.claim")
    with pytest.raises(ServiceRequestError):
        await services.intake.handle_payload(compromised())
    faults.storage_down = False
    await services.intake.handle_payload(compromised())
    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    report = await services.reconciler.run()
    assert report.resent == 2
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)


# Executor --------------------------------------------------------------------------------------


def appends(event: str, kind: str) -> Callable[..., bool]:
    def matches(records: Any, *args: Any, **kwargs: Any) -> bool:
        return any(r.entry.event == event and r.entry.kind == kind for r in records)

    return matches


def finishing(kind: str) -> Callable[..., bool]:
    """The ledger rows closed after an outcome's audit include one of `kind`."""

    def matches(finished: Any, *args: Any, **kwargs: Any) -> bool:
        return any(action.kind == kind for action, _, _ in finished)

    return matches


async def test_killed_between_the_tenant_write_and_its_audit(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await services.intake.handle_payload(compromised())
    faults.kill_before("AuditTable.insert_all", appends("action.executed", "disable_account"))
    await deliver_all(services, faults, clock)
    assert faults.kills == [], "the kill happened"
    # The redelivery finds the account disabled by the killed delivery: executed
    # (confirmed), not already_done.
    await assert_contained(services, sim)
    [disable] = [
        e
        for e in await trail(services)
        if e.event == "action.executed" and e.kind == "disable_account"
    ]
    assert disable.result["before"]["accountEnabled"] is True
    assert "confirmed" in disable.result["after"]["note"]


@pytest.mark.parametrize("kind", ["disable_account", "revoke_sessions"])
async def test_killed_between_the_audit_and_the_ledger_update(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock, kind: str
) -> None:
    # The recording mark that makes the redelivery look for the outcome first went into
    # the ledger with the intent, in the same write.
    await services.intake.handle_payload(compromised())
    faults.kill_before("StateTable.finish_all", finishing(kind))
    await deliver_all(services, faults, clock)
    assert faults.kills == [], "the kill happened"
    await assert_contained(services, sim)
    for entry in await trail(services):
        row = await services.state.get(entry.action_id or "")
        assert row is not None and row.state == "executed"


async def test_an_approved_run_killed_before_the_ledger_update_is_not_recorded_twice(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approved run of a held disable shares its id with the held record. Within one
    second, positions order records by lane: the run's outcome, appended later in a lower lane,
    stands below the held record. A redelivery after a kill between the outcome's append and
    the ledger update must still find that outcome, not take the held record for the newest
    and record the disable a second time."""
    second = audit._now_second()
    monkeypatch.setattr(audit, "_now_second", lambda: second)
    settings = settings_for(sim, azurite, IP_BLOCK_BATCH_SECONDS=0, AUTO_DISABLE_BUDGET=0)
    async with installed(settings, clock) as services:
        faults = Faults(services)
        chain = services.chain
        chain._free = [lane_chain(20)]  # the held record takes a high lane...
        [result] = await services.intake.handle_payload(compromised())
        [disable] = [a for a in result.plan.actions if a.kind is ActionKind.DISABLE_ACCOUNT]
        assert disable.decision is Decision.NEEDS_APPROVAL
        await deliver_all(services, faults, clock)  # the sign-out runs; the disable waits
        await services.approvals.approve(
            disable.id, Actor(kind="engineer", name="grace@contoso.com"), ""
        )
        chain._free = [lane_chain(3)]  # ...the approved run's outcome a lower one
        faults.kill_before("StateTable.finish_all", finishing("disable_account"))
        await deliver_all(services, faults, clock)
        assert faults.kills == [], "the kill happened"
        records = await oldest_first(services.audit_store)
        held = [r for r in records if r.entry.event == "action.held"]
        done = [
            r
            for r in records
            if r.entry.event == "action.executed" and r.entry.kind == "disable_account"
        ]
        assert len(held) == 1 and len(done) == 1, "the disable was recorded once"
        assert done[0].seq < held[0].seq, "the outcome stands below the held record"
        row = await services.state.get(disable.id)
        assert row is not None and row.state == "executed"
        assert not sim.user(ADELE.id).account_enabled


async def test_killed_between_an_outcome_without_a_write_and_the_ledger_update(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    # The account is disabled already: the executor writes no intent, so the runner writes
    # the recording mark itself before the outcome is audited.
    sim.change_user(ADELE.id, account_enabled=False)
    await services.intake.handle_payload(compromised())
    faults.kill_before("StateTable.finish_all", finishing("disable_account"))
    await deliver_all(services, faults, clock)
    assert faults.kills == [], "the kill happened"
    assert (await outcomes(services))["disable_account"] == ["action.already_done"]
    await assert_one_outcome_per_action(services)


async def test_killed_after_the_audit_before_the_block_registry_moves(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    [result] = await services.intake.handle_payload(attack())
    [block_id] = result.queued
    faults.kill_before(
        "TableBlockRegistry.update_all",
        lambda moves: any(state == BlockState.BLOCKED for _, state, _ in moves),
    )
    await deliver_all(services, faults, clock, until=timedelta(hours=1))
    assert faults.kills == [], "the kill happened"

    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.BLOCKED
    assert entry.expires_at is not None, "the block's expiry was kept"
    assert [m for _, m in queue_of(services).scheduled], "its unblock is scheduled"
    assert await outcomes(services) == {"block_ip": ["action.executed"]}
    await assert_one_outcome_per_action(services)
    ledger = await services.state.get(block_id)
    assert ledger is not None and ledger.state == "executed"


async def test_a_lost_graph_response_on_disable_is_recorded_as_executed(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    graph = services.graph
    write = graph.set_account_enabled
    lost = [1]

    async def response_lost(user_id: str, enabled: bool) -> str | None:
        request_id = await write(user_id, enabled)
        if lost:
            lost.pop()
            raise TransientError("the connection dropped before the response arrived")
        return request_id

    graph.set_account_enabled = response_lost  # type: ignore[method-assign]
    find = services.chain.find
    lookups: list[tuple[set[str], Any]] = []

    async def counted(ids: set[str], *args: Any, **kwargs: Any) -> Any:
        lookups.append((ids, args[2:]))
        return await find(ids, *args, **kwargs)

    services.chain.find = counted  # type: ignore[method-assign]
    [result] = await services.intake.handle_payload(compromised())
    await deliver_all(services, faults, clock)
    assert lost == []
    await assert_contained(services, sim)
    assert_written_once(sim)
    # The retry looked for an outcome of the first delivery by the action's target (through
    # the index): before it ran, and again right before it appended its own (a delivery whose
    # lock ran out may still be running beside it).
    disable = next(a for a in result.plan.actions if a.kind is ActionKind.DISABLE_ACCOUNT)
    assert lookups == [({disable.id}, ({disable.id: ADELE.user_principal_name},))] * 2


async def deliver_in_real_time(services: Container, faults: Faults, seconds: float) -> None:
    """Play the Functions host without moving the clock: a scheduled retry is delivered when
    it is due in real time, so a tenant write that outlived its client's timeout can land
    meanwhile, as it would."""
    queue = queue_of(services)
    execute = LocalHost().functions["execute_action"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        delivery = queue.receive()
        if delivery is None:
            await asyncio.sleep(0.05)
            continue
        try:
            await execute(host_message(delivery))
        except Killed:
            faults.revive()
            queue.abandon(delivery)
        except Exception:
            queue.abandon(delivery)


async def test_a_disable_that_timed_out_and_lands_late_is_not_written_again(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> None:
    """The PATCH outlives the client's timeout (1 s) and is carried out 1.5 s after it was
    sent; the retry comes back long before that. It must re-read, not write again, until the
    settle time since the intent has passed, and then find the earlier write done."""
    settings = settings_for(
        sim,
        azurite,
        GRAPH_TIMEOUT_SECONDS=1,
        GRAPH_MAX_RETRIES=0,
        ACTIONS_RETRY_BASE_SECONDS=0.1,
        ACTIONS_RETRY_MAX_SECONDS=0.2,
        ACTIONS_WRITE_SETTLE_SECONDS=3,
        ACTIONS_MAX_DELIVERIES=50,
    )
    sim.add_fault(Fault(method="PATCH", path_pattern=f"^/users/{ADELE.id}$", status=0, delay_s=1.5))
    async with installed(settings, clock) as services:
        faults = Faults(services)
        await services.intake.handle_payload(compromised())
        await deliver_in_real_time(services, faults, seconds=10)
        assert sim.faults_applied.get("delay") == 1
        disables = [w for w in sim.writes if w.kind == "disable" and w.target == ADELE.id]
        assert [w.changed for w in disables] == [True], "the account was written twice"
        await assert_contained(services, sim)
        [done] = [e for e in await trail(services) if e.kind == "disable_account"][1:]
        assert "confirmed" in done.result["after"]["note"]


async def test_a_claim_whose_delivery_is_being_retried_is_not_sent_again(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    # The send reaches the queue; the worker dies before the outbox notes it.
    faults.kill_before("StateTable.mark_sent")
    with pytest.raises(Killed):
        await services.intake.handle_payload(compromised())
    faults.revive()
    graph = services.graph
    write = graph.set_account_enabled
    lost = [1]

    async def response_lost(user_id: str, enabled: bool) -> str | None:
        request_id = await write(user_id, enabled)
        if lost:
            lost.pop()
            raise TransientError("the connection dropped before the response arrived")
        return request_id

    graph.set_account_enabled = response_lost  # type: ignore[method-assign]
    queue = queue_of(services)
    execute = LocalHost().functions["execute_action"]
    while (delivery := queue.receive()) is not None:
        await execute(host_message(delivery))  # the disable meets the lost response: retried
    assert lost == [] and len(queue.scheduled) == 1

    # The retry is due, and the reconciler runs past its resend time and the queue's
    # duplicate window: the claim was delivered, so it is not sent a second time to run
    # side by side with its retry.
    clock.advance(timedelta(seconds=services.settings.resend_after_s) + DUPLICATE_WINDOW)
    report = await services.reconciler.run()
    due = []
    while (delivery := queue.receive()) is not None:
        due.append(delivery)
    await asyncio.gather(*(execute(host_message(d)) for d in due))
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)
    assert report.resent == 0
    assert_written_once(sim)


async def test_a_failed_sent_mark_leaves_the_alert_unhandled_and_loses_nothing(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    """The handled marks go in one write with the claims' sent marks, after the send. When
    that write fails, neither lands: the sender's retry handles the alert again, and its
    actions coalesce into their claims (still leased to the first try) instead of being sent
    again; the queued actions run once, and the reconciler finds nothing left unsent."""
    await handle_losing_the_sent_marks(services)
    [retried] = await services.intake.handle_payload(compromised())
    assert not retried.duplicate_alert, "the handled mark failed with the sent marks"
    assert not retried.queued and len(retried.coalesced) == 2
    [again] = await services.intake.handle_payload(compromised())
    assert again.duplicate_alert, "the retry marked the alert handled"
    await deliver_all(services, faults, clock)
    clock.advance(timedelta(seconds=services.settings.resend_after_s) + DUPLICATE_WINDOW)
    await assert_nothing_resent_and_contained_once(services, sim, faults, clock)


async def test_a_delivery_that_did_not_read_its_claim_notes_it_sent_before_retrying(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    """The outbox's sent marks are lost, and each first delivery, running from its claim as
    sent without reading it, is throttled before it writes anything. Each notes its claim sent
    before scheduling its retry, so the reconciler does not send the claims again beside those
    retries, and every action runs once."""
    graph = services.graph
    get_user = graph.get_user
    throttled = [1, 1]

    async def throttle(user: str) -> Any:
        if throttled:
            throttled.pop()
            raise TransientError("throttled", status=429, retry_after=600)
        return await get_user(user)

    await handle_losing_the_sent_marks(services)
    graph.get_user = throttle  # type: ignore[method-assign]
    queue = queue_of(services)
    execute = LocalHost().functions["execute_action"]
    while (delivery := queue.receive()) is not None:
        assert delivery.properties.get("claim_etag"), "the outbox sent each claim's ETag"
        await execute(host_message(delivery))
    assert not throttled and len(queue.scheduled) == 2
    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    await assert_nothing_resent_and_contained_once(services, sim, faults, clock)


async def test_a_redelivery_on_a_stale_claim_etag_writes_nothing(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    """Every message of a contained alert delivered again, with the claim ETags they carried:
    each first write is refused, the rows are read, the actions have ended. Reads only."""
    await services.intake.handle_payload(compromised())
    execute = LocalHost().functions["execute_action"]
    delivered = received(services)
    for delivery in delivered:
        await execute(host_message(delivery))
    await assert_contained(services, sim)
    before, served = await trail(services), len(sim.requests)
    for delivery in delivered:
        await execute(host_message(delivery))
    assert await trail(services) == before
    assert {method for method, _ in sim.requests[served:]} <= {"GET"}


async def test_a_copy_of_a_held_disable_leaves_its_rejected_approval_alone(
    services: Container, sim: SimulatedTenant
) -> None:
    """An engineer's disable of a User Administrator waits for approval; the approval is
    rejected; then the message comes again with its claim's ETag. The copy runs from the claim
    as sent and reaches the same hold, but its recording mark, written on that ETag before the
    hold, is refused: the rejected approval stays rejected and nothing more is audited."""
    sim.assign_role(ADELE.id, "fe930be7-5e62-47db-91af-98c3a49a38b1")  # User Administrator
    engineer = Actor(kind="engineer", name="ada@contoso.onmicrosoft.com")
    disable = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, ADELE.id, "engineer:ada:1"),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=ADELE.id,
        requested_by=engineer,
    )
    await services.intake.submit([disable])
    queue = queue_of(services)
    execute = LocalHost().functions["execute_action"]
    delivery = queue.receive()
    assert delivery is not None and delivery.properties.get("claim_etag")
    await execute(host_message(delivery))
    approval = await services.approval_store.get(disable.id)
    assert approval is not None and approval.state is ApprovalState.PENDING
    assert await services.approval_store.settle(approval, ApprovalState.REJECTED, "bob")
    rejected = await services.approval_store.get(disable.id)
    before = await trail(services)
    await execute(host_message(delivery))
    assert await services.approval_store.get(disable.id) == rejected
    assert await trail(services) == before
    assert sim.user(ADELE.id).account_enabled


async def test_two_deliveries_of_one_claim_side_by_side_write_the_tenant_once(
    services: Container,
    sim: SimulatedTenant,
    faults: Faults,
    clock: DrillClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each message delivered twice at once (a lock that ran out), both copies carrying the
    claim's ETag: only one writes its intent on it; the other finds the claim changed, reads
    it, and leaves the write to the first. One write and one outcome record per action."""
    await services.intake.handle_payload(compromised())
    execute = LocalHost().functions["execute_action"]
    delivered = received(services)
    caplog.set_level("INFO", logger="shared.actions.runner")
    copies = [execute(host_message(d)) for d in delivered for _ in range(2)]
    await asyncio.gather(*copies, return_exceptions=True)
    changed = [r for r in caplog.records if "its claim changed" in r.getMessage()]
    assert len(changed) == 2, "one copy of each found the claim written by the other"
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)
    assert len([p for m, p in sim.requests if m == "PATCH" and ADELE.id in p]) == 1


async def test_a_lost_response_on_revoke_does_not_revoke_twice(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    graph = services.graph
    revoke = graph.revoke_sign_in_sessions
    lost = [1]

    async def response_lost(user_id: str) -> str | None:
        request_id = await revoke(user_id)
        if lost:
            lost.pop()
            raise TransientError("the connection dropped before the response arrived")
        return request_id

    graph.revoke_sign_in_sessions = response_lost  # type: ignore[method-assign]
    await services.intake.handle_payload(compromised())
    await deliver_all(services, faults, clock)
    assert lost == []
    await assert_contained(services, sim)


# Outages and throttling ------------------------------------------------------------------------


async def test_exchange_throttling_retries_after_the_storm_and_ends_blocked(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    """Exchange answers 429 (Retry-After: 30) for 10 seconds: the block must wait it out,
    not burn its deliveries in two seconds and be recorded as failed."""
    sim.add_fault(Fault(status=429, retry_after="30", cmdlet="New-TransportRule", times=None))
    start = clock()

    def storm_passes() -> None:
        if clock() - start >= timedelta(seconds=10):
            sim.clear_faults()

    await services.intake.handle_payload(attack())
    await deliver_all(services, faults, clock, until=timedelta(hours=1), before_each=storm_passes)
    assert [r for rule in sim.transport_rules for r in rule["SenderIpRanges"] or ()] == [ATTACKER]
    assert await outcomes(services) == {"block_ip": ["action.executed"]}
    assert queue_of(services).dead_letters == []


async def test_a_dead_lettered_action_is_re_driven_once_storage_is_back(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    await services.intake.handle_payload(compromised())
    # Storage and Service Bus both unreachable: nothing can be recorded or rescheduled, so
    # the messages burn their deliveries and end in the dead-letter queue.
    faults.storage_down = faults.queue_down = True
    await deliver_all(services, faults, clock)
    assert len(queue_of(services).dead_letters) == 2
    faults.storage_down = faults.queue_down = False

    report = await services.reconciler.run()
    assert report.redriven == 2 and queue_of(services).dead_letters == []
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)


async def test_a_dead_letter_past_its_give_up_time_is_recorded_after_reading_the_tenant(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    await services.intake.handle_payload(compromised())
    sim.add_fault(Fault(method="POST", path_pattern="revokeSignInSessions", times=None))
    faults.queue_down = True  # no retry can be scheduled: the messages are dead-lettered
    await deliver_all(services, faults, clock)
    faults.queue_down = False
    assert queue_of(services).dead_letters

    clock.advance(timedelta(minutes=services.settings.give_up_minutes + 1))
    sim.clear_faults()
    report = await services.reconciler.run()
    assert (report.dead_letters, report.given_up, report.redriven) == (1, 1, 0)
    found = await outcomes(services)
    assert found["revoke_sessions"] == ["action.failed"]
    [failure] = [e for e in await trail(services) if e.event == "action.failed"]
    assert "dead-lettered" in failure.result["error"]
    assert sim.user(ADELE.id).revocations == 0
    await assert_one_outcome_per_action(services)


async def test_an_action_stuck_open_raises_one_alert_and_is_sent_again(
    services: Container, sim: SimulatedTenant, faults: Faults, clock: DrillClock
) -> None:
    await services.intake.handle_payload(compromised())
    queue = queue_of(services)
    while queue.receive() is not None:
        pass  # the messages are lost

    clock.advance(timedelta(minutes=services.settings.stuck_minutes + 1))
    first = await services.reconciler.run()
    second = await services.reconciler.run()
    assert (first.alerts, second.alerts) == (2, 0)
    alerts = [e for e in await trail(services) if e.event == "alert.raised"]
    assert sorted(str(e.kind) for e in alerts) == ["disable_account", "revoke_sessions"]
    await deliver_all(services, faults, clock)
    await assert_contained(services, sim)


async def test_killed_between_reserving_a_block_and_claiming_it_the_next_alert_claims_it(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    faults.kill_before("StateTable.claim", lambda action, *a: action.kind == "block_ip")
    with pytest.raises(Killed):
        await services.intake.handle_payload(attack("mx-1"))
    faults.revive()
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.PENDING

    # Another alert names the address: it coalesces into the pending block, whose claim
    # never happened, so the block is claimed and sent now.
    [later] = await services.intake.handle_payload(attack("mx-2"))
    assert later.queued == [entry.block.id]
    await deliver_all(services, faults, clock, until=timedelta(hours=1))
    assert [r for rule in sim.transport_rules for r in rule["SenderIpRanges"] or ()] == [ATTACKER]
    assert await outcomes(services) == {"block_ip": ["action.executed"]}
    await assert_one_outcome_per_action(services)


async def test_a_refusal_interrupted_before_its_ledger_update_is_closed_not_repeated(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    alert = {
        **compromised(),
        "entities": [{"kind": "user", "user_id": BREAK_GLASS.id, "roles": ["compromised"]}],
    }
    faults.kill_before(
        "StateTable.finish", lambda action, status, seq: status == OutcomeStatus.REFUSED
    )
    with pytest.raises(Killed):
        await services.intake.handle_payload(alert)
    faults.revive()
    clock.advance(CLAIM_LEASE)  # the alert comes again once the dead worker's lease ran out
    await services.intake.handle_payload(alert)

    refusals = [e for e in await trail(services) if e.event == "action.refused"]
    assert sorted(str(e.kind) for e in refusals) == ["disable_account", "revoke_sessions"]
    for refusal in refusals:
        row = await services.state.get(refusal.action_id or "")
        assert row is not None and row.state == "refused"
    assert sim.user(BREAK_GLASS.id).account_enabled


async def test_the_reconciler_moves_on_a_block_left_pending_after_its_outcome_was_recorded(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await services.intake.handle_payload(attack())
    await deliver_all(services, faults, clock, until=timedelta(minutes=5))
    blocked = await services.blocks.get(f"{ATTACKER}/32")
    assert blocked is not None and blocked.state == BlockState.BLOCKED
    # The registry as a worker that died after closing the ledger (the previous order of
    # writes) left it: pending, although the outcome is audited and the ledger closed.
    assert await services.blocks.update(blocked, BlockState.PENDING)

    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    report = await services.reconciler.run()
    assert report.blocks_settled == 1 and report.resent == 0
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.BLOCKED
    assert entry.expires_at == blocked.expires_at
    assert await outcomes(services) == {"block_ip": ["action.executed"]}


# Registry transitions left half-way ------------------------------------------------------------


def rule_ranges(sim: SimulatedTenant) -> list[str]:
    return [r for rule in sim.transport_rules for r in rule["SenderIpRanges"] or ()]


def engineer_unblock() -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.UNBLOCK_IP, ATTACKER, "engineer:7"),
        kind=ActionKind.UNBLOCK_IP,
        target=ATTACKER,
        reason="false positive",
        requested_by=Actor(kind="engineer", name="oncall@contoso.com"),
    )


async def test_a_block_left_pending_without_a_claim_is_claimed_and_sent_by_the_reconciler(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    faults.kill_before("StateTable.claim", lambda action, *a: action.kind == "block_ip")
    with pytest.raises(Killed):
        await services.intake.handle_payload(attack("mx-1"))
    faults.revive()
    # No other alert names the address: only the reconciler can finish the block.
    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    report = await services.reconciler.run()
    assert report.resent == 1
    await deliver_all(services, faults, clock, until=timedelta(minutes=5))
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.BLOCKED
    assert rule_ranges(sim) == [ATTACKER]
    assert await outcomes(services) == {"block_ip": ["action.executed"]}


async def test_an_unblock_left_unblocking_with_its_message_lost_is_sent_again(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await services.intake.handle_payload(attack())
    await deliver_all(services, faults, clock, until=timedelta(minutes=5))
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.BLOCKED
    # The unblock moved the registry on; its message never arrives.
    assert await services.blocks.update(entry, BlockState.UNBLOCKING, unblock=engineer_unblock())

    early = await services.reconciler.run()
    clock.advance(timedelta(minutes=services.settings.stuck_minutes + 1))
    first = await services.reconciler.run()
    second = await services.reconciler.run()
    assert (early.alerts, first.alerts, second.alerts) == (0, 1, 0)
    [alert] = [e for e in await trail(services) if e.event == "alert.raised"]
    assert alert.kind == "unblock_ip" and "unblocking since" in (alert.reason or "")

    await deliver_all(services, faults, clock, until=timedelta(minutes=5))
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.UNBLOCKED
    assert rule_ranges(sim) == []
    assert await outcomes(services) == {
        "block_ip": ["action.executed"],
        "unblock_ip": ["action.executed"],
    }


async def test_an_unblock_recorded_but_left_unblocking_is_settled_not_run_again(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await services.intake.handle_payload(attack())
    await deliver_all(services, faults, clock, until=timedelta(minutes=5))
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None
    assert await services.blocks.update(entry, BlockState.UNBLOCKING, unblock=engineer_unblock())
    await services.queue.send([engineer_unblock()])
    await deliver_all(services, faults, clock, until=timedelta(minutes=5))
    done = await services.blocks.get(f"{ATTACKER}/32")
    assert done is not None and done.state == BlockState.UNBLOCKED
    # The registry as a worker that died after closing the ledger left it.
    assert await services.blocks.update(done, BlockState.UNBLOCKING)
    writes_before = len(sim.writes)

    clock.advance(timedelta(minutes=services.settings.stuck_minutes + 1))
    report = await services.reconciler.run()
    assert (report.blocks_settled, report.alerts, report.resent) == (1, 0, 0)
    entry = await services.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.UNBLOCKED
    assert len(sim.writes) == writes_before
    assert await outcomes(services) == {
        "block_ip": ["action.executed"],
        "unblock_ip": ["action.executed"],
    }


async def test_two_committers_of_one_unsent_claim_audit_its_decision_once(
    services: Container, faults: Faults, sim: SimulatedTenant, clock: DrillClock
) -> None:
    """A sender's retry of the alert and the reconciler both find the same claim unsent (its
    first commit failed, and the lease it was claimed with ran out) and commit it at the same
    time."""
    refused = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, BREAK_GLASS.id, "soc-9"),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=BREAK_GLASS.id,
        decision=Decision.REFUSED,
        reason="protected identity",
    )
    planned = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.REVOKE_SESSIONS, ADELE.id, "soc-9"),
        kind=ActionKind.REVOKE_SESSIONS,
        target=ADELE.id,
        reason="token theft",
    )
    outbox = services.outbox
    seq = await outbox.claim_seq()
    assert await outbox.claim(refused, seq) and await outbox.claim(planned, seq)
    clock.advance(CLAIM_LEASE)
    unsent = [e for e in [await services.state.get(a.id) for a in (refused, planned)] if e]

    await asyncio.gather(outbox.commit([], unsent), outbox.commit([], unsent))

    events = Counter(str(e.event) for e in await trail(services))
    assert events["action.refused"] == 1 and events["action.planned"] == 1, events
    assert queue_of(services).sent == 1
    for action in (refused, planned):
        row = await services.state.get(action.id)
        assert row is not None and (row.sent or not row.open)
    # The leases are gone: a later commit finds nothing left to do.
    await outbox.commit([], unsent)
    assert Counter(str(e.event) for e in await trail(services)) == events


def stall_first_refusal(services: Container) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the first audit append of a refusal on the wire until `go` is set (the storage
    outage it waits out); `stalled` is set once it is held."""
    stalled, go = asyncio.Event(), asyncio.Event()
    store = services.audit_store
    insert = store.insert_all
    once = [1]

    async def stalling(records: Any, index: Any) -> None:
        if once and any(r.entry.event == "action.refused" for r in records):
            once.pop()
            stalled.set()
            await go.wait()
        await insert(records, index)

    store.insert_all = stalling  # type: ignore[method-assign]
    return stalled, go


def refused_alert() -> dict[str, Any]:
    return {
        **compromised("soc-11"),
        "entities": [{"kind": "user", "user_id": BREAK_GLASS.id, "roles": ["compromised"]}],
    }


async def refusals(services: Container) -> Counter[str]:
    return Counter(e.kind or "" for e in await trail(services) if e.event == "action.refused")


async def test_a_retry_of_the_alert_during_a_stalled_first_commit_does_not_audit_it_again(
    services: Container,
) -> None:
    stalled, go = stall_first_refusal(services)
    first = asyncio.create_task(services.intake.handle_payload(refused_alert()))
    await stalled.wait()

    # The sender gave up on the first delivery and retries; the first commit still holds the
    # lease its claims were made with, so the retry leaves them to it.
    [again] = await services.intake.handle_payload(refused_alert())
    assert again.queued == []
    go.set()
    await first

    assert await refusals(services) == {"disable_account": 1, "revoke_sessions": 1}


async def test_a_stalled_first_commit_is_abandoned_before_the_reconciler_may_take_it_over(
    services: Container, clock: DrillClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake's audit append waits out a storage outage longer than the resend time. Its
    commit is abandoned at the outbox's time limit (short here), before its claims' lease
    ends; only then may the reconciler commit them, once."""
    monkeypatch.setattr("shared.outbox.COMMIT_LIMIT", timedelta(seconds=2), raising=False)
    stalled, go = stall_first_refusal(services)
    first = asyncio.create_task(services.intake.handle_payload(refused_alert()))
    # Bounded only so that code without the time limit gets on to show its double record.
    await asyncio.wait({first}, timeout=60)
    assert stalled.is_set()

    clock.advance(timedelta(seconds=services.settings.resend_after_s + 1))
    report = await services.reconciler.run()
    go.set()  # a request still on the wire would land now
    outcome = await asyncio.gather(first, return_exceptions=True)

    assert await refusals(services) == {"disable_account": 1, "revoke_sessions": 1}
    assert report.resent == 2
    assert isinstance(outcome[0], TransientError), outcome
