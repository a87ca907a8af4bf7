"""A transport rule write that got no answer (a timeout) and is carried out later: the next
pass must not write the rule from a read the late write has not reached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from drill.context import DrillClock
from shared.actions.ip_blocks import Applied, IpBlocklist, Settle, shard_name
from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.exchange import ExchangeAdmin
from shared.container import Container
from shared.errors import TransientError
from shared.models import ActionKind, ActionRequest
from shared.simulator import Fault, SimulatedTenant

pytestmark = pytest.mark.integration

SETTLE = timedelta(seconds=10)


async def record(applied: list[Applied], settle: Settle | None) -> None:
    if settle is not None:
        await settle()


async def pending(services: Container, address: str) -> None:
    block = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.BLOCK_IP, address, "settle"),
        kind=ActionKind.BLOCK_IP,
        target=address,
    )
    assert await services.blocks.reserve(block) is not None


@pytest.fixture
async def admin(sim: SimulatedTenant) -> AsyncIterator[ExchangeAdmin]:
    # The client gives up after 1 s; the delayed Set below lands after 2 s.
    client = ExchangeAdmin(
        sim.exchange_base_url, sim.default_domain, StaticTokenCredential(sim.token), 1.0
    )
    try:
        yield client
    finally:
        await client.close()


async def test_a_rule_write_that_got_no_answer_is_waited_for_before_the_next(
    sim: SimulatedTenant, admin: ExchangeAdmin, timed: Container, clock: DrillClock
) -> None:
    """The Set adding a second address times out on the client and lands a second later. A
    pass for a third address right after, in another worker, must not write from its read:
    the late Set would land after it and take the third address out of the rule again (or,
    with nothing new, write the same ranges twice). It waits out the settle time, then writes
    once."""
    blocklist = IpBlocklist(admin, timed.blocks, "Enforce", clock, settle=SETTLE)
    await pending(timed, "185.220.101.1/32")
    await blocklist.flush(record)  # creates the shard
    await pending(timed, "185.220.101.2/32")
    sim.add_fault(Fault(status=0, delay_s=2.0, cmdlet="Set-TransportRule"))
    with pytest.raises(TransientError):
        await blocklist.flush(record)  # the Set times out; Exchange carries it out later

    await pending(timed, "185.220.101.3/32")
    other_worker = IpBlocklist(admin, timed.blocks, "Enforce", clock, settle=SETTLE)
    with pytest.raises(TransientError) as settling:
        await other_worker.flush(record)  # the next message's pass, before the late Set lands
    assert settling.value.retry_after is not None and settling.value.retry_after > 0
    await asyncio.sleep(1.5)  # the late Set lands
    clock.advance(SETTLE)
    applied = await other_worker.flush(record)

    assert {a.action.target for a in applied} == {"185.220.101.2/32", "185.220.101.3/32"}
    [rule] = sim.transport_rules
    assert rule["Name"] == shard_name("reject", 1)
    assert sorted(rule["SenderIpRanges"]) == ["185.220.101.1", "185.220.101.2", "185.220.101.3"]
    rule_writes = [w for w in sim.writes if w.kind.endswith("TransportRule")]
    assert [(w.kind, w.changed) for w in rule_writes] == [
        ("New-TransportRule", True),
        ("Set-TransportRule", True),
        ("Set-TransportRule", True),
    ]
