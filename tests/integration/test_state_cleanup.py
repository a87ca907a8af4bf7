"""State clean-up on Azurite: rows past their time to live go, rows that hold current state
stay, and the audit trail is never touched."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost
from shared.adapters import table_query
from shared.adapters.state_table import ACTIONS, APPROVALS, BLOCKS, BUDGET
from shared.container import Container
from shared.models import ActionKind, ActionRequest, Actor, AuditEntry, AuditEvent, OutcomeStatus
from shared.ports import ApprovalState, BlockState
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, BREAK_GLASS, installed, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def services(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[Container]:
    async with installed(settings_for(sim, azurite), clock) as built:
        yield built


def request(origin: str, target: str = ADELE.id) -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, target, origin),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=target,
    )


async def test_expired_state_rows_go_current_ones_and_the_audit_trail_stay(
    services: Container, clock: DrillClock
) -> None:
    closed, open_, held = request("a-1"), request("a-2"), request("a-3")
    for action in (closed, open_, held):
        assert await services.state.claim(action, clock(), 0, clock())
    await services.state.finish(closed, OutcomeStatus.EXECUTED, 1)
    await services.state.finish(held, OutcomeStatus.HELD, 2)
    await services.state.mark_sent(open_.id, handled=[("generic:a-1", "v1")])
    marked = await services.state.get(open_.id)
    assert marked is not None and marked.sent
    settled, pending = request("b-1", BREAK_GLASS.id), request("b-2", BREAK_GLASS.id)
    for action in (settled, pending):
        await services.approval_store.hold(action, clock() + timedelta(hours=4))
    approval = await services.approval_store.get(settled.id)
    assert approval is not None
    assert await services.approval_store.settle(approval, ApprovalState.REJECTED, "ada")
    await services.approval_store.spend(ADELE.id, clock())
    assert await services.notification_claims.claim("subscription-1:change-1")
    await services.stream_rows.put_info("da-1", {"AlertId": "da-1"})
    await services.stream_rows.add_evidence([{"AlertId": "da-1", "EntityType": "User"}])
    await services.chain.append(
        AuditEntry(event=AuditEvent.ALERT_RAISED, actor=Actor(), reason="kept for ever")
    )
    audit_before = [r.seq async for r in services.audit_store.newest_first()]
    assert len(audit_before) == 1

    fresh = await services.cleanup.run()
    assert set(fresh.values()) == {0}, "nothing is deleted before its time"

    clock.advance(timedelta(days=services.settings.state_ttl_days + 1))
    await LocalHost().fire_timer("clean_up_state")

    assert await services.state.get(closed.id) is None
    open_row, held_row = await services.state.get(open_.id), await services.state.get(held.id)
    assert open_row is not None and open_row.open, "an open action stays"
    # Its sent mark went with the handled marks: an action still open this long never ran
    # (a run writes to its claim, and a message given up on closes it), so the reconciler
    # sends it again.
    assert not open_row.sent
    assert held_row is not None, "an action waiting for approval stays"
    assert not await services.state.is_handled("generic:a-1", "v1")
    assert await services.approval_store.get(settled.id) is None
    assert await services.approval_store.get(pending.id) is not None, "pending approvals stay"
    assert await services.approval_store.spent(clock() - timedelta(days=365), 10) == set()
    assert await services.notification_claims.claim("subscription-1:change-1")
    assert await services.stream_rows.info("da-1") is None
    assert await services.stream_rows.evidence("da-1") == []
    assert [r.seq async for r in services.audit_store.newest_first()] == audit_before


async def test_the_budget_keeps_the_entries_of_its_window(
    services: Container, clock: DrillClock
) -> None:
    window = timedelta(minutes=services.settings.disable_window_minutes)
    await services.approval_store.spend(ADELE.id, clock() - window - timedelta(minutes=1))
    await services.approval_store.spend(BREAK_GLASS.id, clock())
    deleted = await services.cleanup.run()
    assert deleted["budget"] == 1
    assert await services.approval_store.spent(clock() - timedelta(days=365), 10) == {
        BREAK_GLASS.id
    }


async def test_the_budget_is_counted_only_as_far_as_the_check_needs(
    services: Container, clock: DrillClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget check reads at most the budget's worth of rows, in one page, however many
    accounts the window holds (a storm of disables must not make every check slower)."""
    store = services.approval_store
    for n in range(25):
        await store.spend(f"user-{n}", clock())
    await store.spend("user-old", clock() - timedelta(hours=2))
    pages: list[int] = []
    page = table_query._page

    async def recorded(*args: Any) -> Any:
        pages.append(args[2].page_size)
        return await page(*args)

    monkeypatch.setattr(table_query, "_page", recorded)
    since = clock() - timedelta(hours=1)
    assert len(await store.spent(since, 10)) == 10
    everyone = {f"user-{n}" for n in range(25)}
    assert await store.spent(since, 100) == everyone, "the row outside the window is not read"
    assert await store.spent(since, 0) == set()
    assert pages == [10, 100], "no query for a budget of nothing"
    assert await store.spent(since - timedelta(hours=2), 100) == everyone | {"user-old"}


def block(network: str) -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.BLOCK_IP, network, "alert-1"),
        kind=ActionKind.BLOCK_IP,
        target=network,
    )


async def test_finished_blocks_go_active_ones_stay_and_a_new_block_gets_new_ids(
    services: Container, clock: DrillClock
) -> None:
    states = {
        "198.51.100.1/32": BlockState.PENDING,
        "198.51.100.2/32": BlockState.BLOCKED,
        "198.51.100.3/32": BlockState.UNBLOCKING,
        "198.51.100.4/32": BlockState.UNBLOCKED,
        "198.51.100.5/32": BlockState.FAILED,
    }
    first: dict[str, ActionRequest] = {}
    for network, state in states.items():
        reserved = await services.blocks.reserve(block(network))
        assert reserved is not None
        first[network] = reserved
        entry = await services.blocks.get(network)
        assert entry is not None
        if state != BlockState.PENDING:
            assert await services.blocks.update(entry, state)

    assert (await services.cleanup.run())["blocks"] == 0, "nothing goes before its time"
    clock.advance(timedelta(days=services.settings.state_ttl_days + 1))
    assert (await services.cleanup.run())["blocks"] == 2

    left = {e.network: e.state for e in await services.blocks.entries()}
    assert left == {n: s for n, s in states.items() if s not in ("unblocked", "failed")}
    # Blocked again after its row went: a new row, whose action id no earlier block had.
    again = await services.blocks.reserve(block("198.51.100.4/32"))
    assert again is not None and again.id != first["198.51.100.4/32"].id
    assert again.params["generation"] > first["198.51.100.4/32"].params["generation"]


# Which partitions the responder's queries read, and what bounds each: a query over any other
# partition (a scan of handled versions, say) fails the test below.
BOUNDED = {
    ACTIONS: "closed rows expire after STATE_TTL_DAYS; open ones are in flight",
    BLOCKS: "finished rows expire after STATE_TTL_DAYS; active ones are in force",
    APPROVALS: "settled rows expire after STATE_TTL_DAYS; pending ones expire by APPROVAL_TTL",
    BUDGET: "entries older than the budget's window are deleted",
}
TTL_KINDS = {ACTIONS: "ledger", BLOCKS: "blocks", APPROVALS: "approvals", BUDGET: "budget"}


def partition_of(query: str, parameters: dict[str, Any]) -> str:
    found = re.match(r"\(?PartitionKey eq (?:'([^']*)'|@(\w+))", query)
    assert found, f"a query that does not name its partition: {query}"
    return found.group(1) if found.group(1) is not None else str(parameters[found.group(2)])


async def test_every_state_query_reads_a_partition_the_clean_up_bounds(
    services: Container, clock: DrillClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads by id are point reads (get_entity). The other queries, recorded while alerts are
    handled, actions run, the reconciler, the sweep and the approvals' sweep do their work,
    each read one partition whose size the clean-up bounds (not the table's age)."""
    table = services.state._table  # the state table's client, shared by its adapters
    queries: list[tuple[str, str]] = []
    query_entities = table.query_entities

    def recorded(query: str, *args: Any, **kwargs: Any) -> Any:
        queries.append((query, partition_of(query, kwargs.get("parameters") or {})))
        return query_entities(query, *args, **kwargs)

    page = table_query._page

    async def recorded_json(client: Any, query: str, *args: Any) -> Any:
        if client.table_name == table.table_name:
            queries.append((query, partition_of(query, {})))
        return await page(client, query, *args)

    table.query_entities = recorded
    monkeypatch.setattr(table_query, "_page", recorded_json)
    await services.intake.handle_payload(
        {
            "id": "soc-1",
            "title": "Token theft and a flood",
            "severity": "high",
            "category": "CredentialAccess",
            "entities": [
                {"kind": "user", "user_id": ADELE.id, "roles": ["compromised"]},
                {"kind": "ip", "address": "203.0.113.9", "roles": ["attacker"]},
            ],
        }
    )
    await LocalHost().pump(services.queue)  # type: ignore[arg-type]
    await services.reconciler.run()
    await services.sweeper.sweep(clock())
    await services.approvals.expire_due()
    # The clean-up's own scans are what bounds the rest.
    table.query_entities = query_entities
    monkeypatch.setattr(table_query, "_page", page)

    read = {partition for _, partition in queries}
    assert {ACTIONS, BLOCKS, BUDGET, APPROVALS} <= read, queries
    assert read <= set(BOUNDED), [q for q, p in queries if p not in BOUNDED]
    expiring = set(await services.cleanup.run())
    assert {TTL_KINDS[p] for p in read} <= expiring
