"""Claims of one submission on Azurite: in one transaction per 100 rows, and each on its own
when one of them was claimed before (the transaction then lands nothing); their sent marks in
rows of their own, so that a claim keeps the ETag its executor is sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from shared.container import Container
from shared.models import ActionKind, ActionRequest
from shared.ports import ClaimChanged
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
    assert set(claimed) == {a.id for a in actions}
    assert len(writes) == 2 and all(w.endswith("/$batch") for w in writes)
    entry = await services.state.get(actions[149].id)
    assert entry is not None and entry.open and not entry.sent
    assert entry.request == actions[149] and entry.claim_seq == 7
    assert entry.etag == claimed[actions[149].id], "each claim's ETag as the service gave it"


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
    assert set(claimed) == {a.id for a in fresh}
    # The transaction failed whole; then one insert per claim.
    assert len(writes) == 4 and writes[0].endswith("/$batch")
    assert await services.state.get(earlier.id) == first, "the earlier claim was not touched"
    for action in fresh:
        entry = await services.state.get(action.id)
        assert entry is not None and entry.etag == claimed[action.id]
    assert await services.state.claim_all([earlier, *fresh], clock(), 3, clock()) == {}


async def test_sent_marks_leave_the_claims_and_their_etags_as_they_were(
    counted: tuple[Container, list[str]],
) -> None:
    services, writes = counted
    state, clock = services.state, DrillClock()
    sent, unsent = [block(1), block(2)], block(3)
    claimed = await state.claim_all([*sent, unsent], clock(), 1, clock())
    writes.clear()
    await state.mark_sent(*(a.id for a in sent), handled=[("generic:a-1", "v1")])
    assert len(writes) == 1 and writes[0].endswith("/$batch"), "one transaction"
    assert await state.is_handled("generic:a-1", "v1")
    for action in sent:
        entry = await state.get(action.id)
        assert entry is not None and entry.sent and entry.open
        assert entry.etag == claimed[action.id], "the claim itself was not written"
        unlooked = await state.get(action.id, sent_mark=False)
        assert unlooked is not None and not unlooked.sent, "what the claim itself says"
    later = clock() + timedelta(minutes=10)
    assert [e.action_id for e in await state.unsent(later)] == [unsent.id]


async def test_an_executor_write_on_the_claims_etag_lands_once(
    counted: tuple[Container, list[str]],
) -> None:
    services, _ = counted
    state, clock = services.state, DrillClock()
    action = block(4)
    etag = await state.claim(action, clock(), 1, clock())
    assert etag
    await state.intend(action, "call", {"before": 1}, clock(), 7, claim_etag=etag)
    with pytest.raises(ClaimChanged):
        await state.recording(action, 9, claim_etag=etag)
    entry = await state.get(action.id)
    assert entry is not None and entry.intent is not None and entry.record_from == 7
    assert entry.sent, "a claim the executor wrote to reached it"
    gone = block(5)
    with pytest.raises(ClaimChanged):
        await state.recording(gone, 1, claim_etag=etag)
    assert await state.get(gone.id) is None, "a conditional write creates no row"
