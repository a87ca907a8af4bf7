"""A storm's submissions on Azurite: the networks of a batch that are neither pending nor
blocked are reserved in one transaction, and a pending block this worker handed on is not
looked up in the ledger again by the batches that name it after."""

from __future__ import annotations

from typing import Any

import pytest

from drill.azurite import Azurite
from shared.adapters.state_table import TableBlockRegistry
from shared.container import Container
from shared.ingest import normalize
from shared.models import ActionKind
from shared.simulator import SimulatedTenant
from tests.conftest import installed, settings_for

pytestmark = pytest.mark.integration

NETWORKS = [f"185.220.101.{n}" for n in range(1, 11)]


def page(prefix: str, addresses: list[str]) -> list[Any]:
    """A batch of alerts, each naming one address."""
    return [
        alert
        for n, address in enumerate(addresses)
        for alert in normalize(
            {
                "source": "generic",
                "id": f"{prefix}-{n}",
                "title": "Forged SMTP submissions flooding Exchange Online",
                "severity": "high",
                "category": "Impact",
                "entities": [{"kind": "ip", "address": address, "roles": ["attacker"]}],
            }
        )
    ]


class Calls:
    """Single reservations and ledger reads made by one container's intake."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, services: Container) -> None:
        self.reserves = 0
        self.ledger_reads = 0
        registry = services.blocks
        assert isinstance(registry, TableBlockRegistry)
        reserve, get = registry.reserve, services.state.get

        async def counted_reserve(*args: Any, **kwargs: Any) -> Any:
            self.reserves += 1
            return await reserve(*args, **kwargs)

        async def counted_get(*args: Any, **kwargs: Any) -> Any:
            self.ledger_reads += 1
            return await get(*args, **kwargs)

        monkeypatch.setattr(registry, "reserve", counted_reserve)
        monkeypatch.setattr(services.state, "get", counted_get)


def blocks_queued(results: list[Any]) -> set[str]:
    return {
        action.target
        for result in results
        for action in result.plan.actions
        if action.kind is ActionKind.BLOCK_IP and action.id in result.queued
    }


async def test_new_networks_are_reserved_together_and_a_block_handed_on_is_not_read_again(
    sim: SimulatedTenant, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(sim, azurite)
    async with installed(settings) as services:
        calls = Calls(monkeypatch, services)
        first = await services.intake.handle_many(page("storm-a", NETWORKS))
        assert len(blocks_queued(first)) == len(NETWORKS)
        assert calls.reserves == 0, "reserved in one transaction, not one by one"
        # The blocks are pending (nothing has run them yet); later alerts name them again.
        second = await services.intake.handle_many(page("storm-b", NETWORKS))
        assert blocks_queued(second) == set()
        assert all(len(r.coalesced) == 1 for r in second)
        assert calls.ledger_reads == 0, "this worker handed them on itself"
    async with installed(settings) as other:
        # Another worker does not know that: it reads each claim, and sends none again.
        calls = Calls(monkeypatch, other)
        third = await other.intake.handle_many(page("storm-c", NETWORKS))
        assert blocks_queued(third) == set()
        assert calls.ledger_reads == len(NETWORKS)
        assert len(other.queue) == 0
