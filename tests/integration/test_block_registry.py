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


class Writes:
    """The registry's transactions and single-row reservations and updates."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, registry: TableBlockRegistry) -> None:
        self.transactions = 0
        self.singles = 0
        write_entities = state_table.write_entities
        reserve, update = registry.reserve, registry.update

        async def counted_write(*args: Any) -> Any:
            self.transactions += 1
            return await write_entities(*args)

        async def counted_reserve(*args: Any, **kwargs: Any) -> Any:
            self.singles += 1
            return await reserve(*args, **kwargs)

        async def counted_update(*args: Any, **kwargs: Any) -> Any:
            self.singles += 1
            return await update(*args, **kwargs)

        monkeypatch.setattr(state_table, "write_entities", counted_write)
        monkeypatch.setattr(registry, "reserve", counted_reserve)
        monkeypatch.setattr(registry, "update", counted_update)


async def test_new_and_finished_networks_are_reserved_together_as_each_would_be(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = await registry_of(services, ["198.51.100.1/32"])
    finished = await registry.get("198.51.100.1/32")
    assert finished is not None
    assert await registry.update(finished, BlockState.UNBLOCKED)
    finished = await registry.get("198.51.100.1/32")
    networks = ["198.51.100.1/32", "198.51.100.2/32", "198.51.100.3/32"]
    current = await registry.get_many(networks)
    writes = Writes(monkeypatch, registry)
    reserved = await registry.reserve_many(
        [block(n) for n in networks] + [block(networks[1])], current
    )
    assert (writes.transactions, writes.singles) == (1, 0)
    assert set(reserved) == set(networks)
    for network in networks:
        request, entry = reserved[network], await registry.get(network)
        assert request is not None and entry is not None
        assert entry.state == BlockState.PENDING and entry.block == request
    # The finished row's next generation, with that generation's action id.
    renewed, request = await registry.get(networks[0]), reserved[networks[0]]
    assert finished is not None and renewed is not None and request is not None
    assert renewed.generation == finished.generation + 1
    assert request.id == block(networks[0]).for_generation(finished.generation + 1).id


async def test_a_network_reserved_meanwhile_is_left_to_its_reserver_and_the_rest_reserved(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = services.blocks
    assert isinstance(registry, TableBlockRegistry)
    networks = ["198.51.100.1/32", "198.51.100.2/32", "198.51.100.3/32"]
    current = await registry.get_many(networks)
    assert set(current.values()) == {None}
    # Another intake reserves the second network after this one read the rows.
    theirs = await registry.reserve(block(networks[1]))
    assert theirs is not None
    writes = Writes(monkeypatch, registry)
    reserved = await registry.reserve_many([block(n) for n in networks], current)
    # The transaction landed nothing; each was then reserved on its own.
    assert (writes.transactions, writes.singles) == (1, 3)
    assert reserved[networks[1]] is None
    assert reserved[networks[0]] is not None and reserved[networks[2]] is not None
    entry = await registry.get(networks[1])
    assert entry is not None and entry.block == theirs


async def test_a_pass_moves_its_networks_together_and_one_changed_meanwhile_stays(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    networks = [f"198.51.100.{n}/32" for n in range(4)]
    registry = services.blocks
    assert isinstance(registry, TableBlockRegistry)
    for network in networks:
        assert await registry.reserve(block(network)) is not None
    entries = [e for n in networks if (e := await registry.get(n)) is not None]
    writes = Writes(monkeypatch, registry)
    moved = await registry.update_all([(e, BlockState.BLOCKED, None) for e in entries[:2]])
    assert moved == [True, True] and (writes.transactions, writes.singles) == (1, 0)
    # Another worker moves the fourth row after this pass read it.
    other = await registry.get(networks[3])
    assert other is not None and await registry.update(other, BlockState.FAILED)
    writes.transactions = writes.singles = 0
    moved = await registry.update_all([(e, BlockState.BLOCKED, None) for e in entries[2:]])
    assert moved == [True, False] and (writes.transactions, writes.singles) == (1, 2)
    rows = [await registry.get(n) for n in networks]
    assert [row.state if row else None for row in rows] == ["blocked"] * 3 + ["failed"]


async def test_whether_any_network_is_in_a_state_is_asked_with_one_row(
    services: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    networks = [f"198.51.100.{n}/32" for n in range(3)]
    registry = await registry_of(services, networks)  # the first pending, the others blocked
    sizes: list[int] = []
    page = table_query._page

    async def counted_page(table: Any, query: str, shape: Any, following: Any) -> Any:
        sizes.append(shape.page_size)
        return await page(table, query, shape, following)

    monkeypatch.setattr(table_query, "_page", counted_page)
    assert await registry.any_in(BlockState.PENDING, BlockState.UNBLOCKING)
    assert await registry.any_in(BlockState.BLOCKED)
    assert not await registry.any_in(BlockState.UNBLOCKING, BlockState.FAILED)
    assert sizes == [1, 1, 1]
    entry = await registry.get(networks[0])
    assert entry is not None and await registry.update(entry, BlockState.BLOCKED)
    assert not await registry.any_in(BlockState.PENDING)
