"""Claims of one submission on Azurite: in one transaction per 100 rows, and each on its own
when one of them was claimed before (the transaction then lands nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from shared.container import Container
from shared.models import ActionKind, ActionRequest
from shared.simulator import SimulatedTenant
from tests.conftest import settings_for

pytestmark = pytest.mark.integration


def block(n: int) -> ActionRequest:
    target = f"203.0.{n // 256}.{n % 256}/32"
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.BLOCK_IP, target, "claims"),
        kind=ActionKind.BLOCK_IP,
        target=target,
    )


@pytest.fixture
async def counted(
    sim: SimulatedTenant, azurite: Azurite
) -> AsyncIterator[tuple[Container, list[str]]]:
    writes: list[str] = []

    def count(response: Any) -> None:
        if response.http_request.method != "GET":
            writes.append(response.http_request.url)

    services = Container(settings_for(sim, azurite), storage_hook=count)
    await services.prepare()
    try:
        yield services, writes
    finally:
        await services.close()


async def test_claims_go_in_one_transaction_per_hundred(
    counted: tuple[Container, list[str]],
) -> None:
    services, writes = counted
    clock = DrillClock()
    actions = [block(n) for n in range(150)]
    writes.clear()
    claimed = await services.state.claim_all(
        [*actions, actions[0]], clock(), 7, clock() + timedelta(minutes=2)
    )
    assert claimed == {a.id for a in actions}
    assert len(writes) == 2 and all(w.endswith("/$batch") for w in writes)
    entry = await services.state.get(actions[149].id)
    assert entry is not None and entry.open and not entry.sent
    assert entry.request == actions[149] and entry.claim_seq == 7


async def test_a_claim_made_before_leaves_the_others_to_be_claimed_one_by_one(
    counted: tuple[Container, list[str]],
) -> None:
    services, writes = counted
    clock = DrillClock()
    earlier, fresh = block(1), [block(2), block(3)]
    assert await services.state.claim_all([earlier], clock(), 1, clock())
    first = await services.state.get(earlier.id)
    clock.advance(timedelta(minutes=5))
    writes.clear()
    claimed = await services.state.claim_all([earlier, *fresh], clock(), 2, clock())
    assert claimed == {a.id for a in fresh}
    # The transaction failed whole; then one insert per claim.
    assert len(writes) == 4 and writes[0].endswith("/$batch")
    assert await services.state.get(earlier.id) == first, "the earlier claim was not touched"
    assert await services.state.claim_all([earlier, *fresh], clock(), 3, clock()) == set()
