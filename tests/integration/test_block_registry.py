"""Reading many networks' registry rows at once (`TableBlockRegistry.get_many`, what a storm's
batch does): the same entries, ETags included, as a point read of each, from one query of the
partition while it fits a page, and by keys once it does not."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters import state_table, table_query
from shared.adapters.state_table import MANY_NETWORKS, TableBlockRegistry
from shared.container import Container
from shared.models import ActionKind, ActionRequest
from shared.ports import BlockState

pytestmark = pytest.mark.integration


def block(network: str) -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.BLOCK_IP, network, "alert-1"),
        kind=ActionKind.BLOCK_IP,
        target=network,
    )


async def registry_of(services: Container, networks: list[str]) -> TableBlockRegistry:
    registry = services.blocks
    assert isinstance(registry, TableBlockRegistry)
    for n, network in enumerate(networks):
        assert await registry.reserve(block(network)) is not None
        if n % 3:
            entry = await registry.get(network)
            assert entry is not None
            assert await registry.update(entry, BlockState.BLOCKED)
    return registry


class Reads:
    """The registry's queries and point reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queries = 0
        self.points = 0
        page, get_json = table_query._page, table_query.get_json

        async def counted_page(*args: Any) -> Any:
            self.queries += 1
            return await page(*args)

        async def counted_get(*args: Any, **kwargs: Any) -> Any:
            self.points += 1
            return await get_json(*args, **kwargs)

        monkeypatch.setattr(table_query, "_page", counted_page)
        monkeypatch.setattr(f"{state_table.__name__}.get_json", counted_get)


async def test_many_networks_are_read_in_one_query_as_each_would_be_read_by_its_keys(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    networks = [f"198.51.100.{n}/32" for n in range(12)]
    registry = await registry_of(services, networks)
    asked = [*networks[:10], "203.0.113.1/32", "203.0.113.2/32"]
    reads = Reads(monkeypatch)
    found = await registry.get_many(asked)
    assert (reads.queries, reads.points) == (1, 0)
    assert set(found) == set(asked)
    for network in asked:
        assert found[network] == await registry.get(network), network
    assert found["203.0.113.1/32"] is None
    states = {entry.state for n in networks[:10] if (entry := found[n]) is not None}
    assert states == {"pending", "blocked"}


async def test_a_few_networks_are_read_by_their_keys(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    networks = [f"198.51.100.{n}/32" for n in range(MANY_NETWORKS)]
    registry = await registry_of(services, networks)
    reads = Reads(monkeypatch)
    found = await registry.get_many(networks[: MANY_NETWORKS - 1])
    assert (reads.queries, reads.points) == (0, MANY_NETWORKS - 1)
    assert all(entry is not None for entry in found.values())


async def test_a_partition_beyond_a_page_is_read_by_keys_for_what_the_page_missed(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    networks = [f"198.51.100.{n}/32" for n in range(12)]
    registry = await registry_of(services, networks)
    monkeypatch.setattr(registry, "REGISTRY_PAGE", 5)
    reads = Reads(monkeypatch)
    asked = [*networks, "203.0.113.1/32"]
    found = await registry.get_many(asked)
    # The page held 5 rows (row keys sort as text): the other 8 are read by their keys.
    assert (reads.queries, reads.points) == (1, len(asked) - 5)
    for network in asked:
        assert found[network] == await registry.get(network), network
    reads.queries = reads.points = 0
    await registry.get_many(asked)
    assert (reads.queries, reads.points) == (0, len(asked)), "by keys for a while"
