"""The audit chain on Azurite: insert-only appends racing on 409, and verification that
catches edits made behind the app's back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.core.pipeline import PipelineResponse
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from drill.azurite import Azurite
from shared.adapters.audit_table import AuditTable, legacy_copies, row_key
from shared.audit import GENESIS_HASH, AuditChain, chain_entry
from shared.audit_query import index_entries
from shared.models import Actor, AuditEntry, AuditEvent

pytestmark = pytest.mark.integration


@pytest.fixture
async def table(azurite: Azurite) -> AsyncIterator[TableClient]:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        client = await service.create_table(f"Audit{uuid.uuid4().hex[:10]}")
        yield client
        await service.delete_table(client.table_name)


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        event=AuditEvent.ACTION_EXECUTED,
        actor=Actor(kind="engineer", name=f"engineer{n % 3}@contoso.com"),
        action_id=f"act-{n}",
        kind="disable_account",
        target="adele.vance@contoso.onmicrosoft.com",
        reason="Überprüfung – Kennwort-Spray",
    )


async def test_concurrent_writers_on_separate_clients_lose_nothing(
    table: TableClient, azurite: Azurite
) -> None:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        writers = [
            AuditChain(AuditTable(service.get_table_client(table.table_name))) for _ in range(5)
        ]

        async def write(chain: AuditChain, base: int) -> None:
            for n in range(8):
                await chain.append(entry(base + n))

        await asyncio.gather(*(write(chain, i * 100) for i, chain in enumerate(writers)))
    records = [r async for r in AuditTable(table).newest_first()]
    assert len(records) == 40 and len({r.entry.action_id for r in records}) == 40
    positions = [r.seq for r in records]
    assert positions == sorted(positions, reverse=True) and len(set(positions)) == 40
    report = await AuditChain(AuditTable(table)).verify()
    assert report.ok and report.records_checked == 40 and report.head_seq == positions[0]
    assert sum(head.seq for head in report.chains.values()) == 40


async def test_a_writer_that_loses_a_chain_moves_to_another_and_links_there(
    table: TableClient,
) -> None:
    store = AuditTable(table)
    first, second = AuditChain(store), AuditChain(store)
    second._free = list(first._free)  # both prefer the same chain
    await first.append(entry(0))
    await second.append(entry(1))  # `first` still believes it holds the head
    records = await first.append_all([entry(n) for n in range(2, 7)])
    assert len({r.chain for r in records}) == 1 and records[0].chain_seq == 1
    assert [r.chain_seq for r in records] == [1, 2, 3, 4, 5]
    assert (await AuditChain(store).verify()).ok


async def test_one_append_is_one_round_trip_with_its_index_rows(
    table: TableClient, azurite: Azurite
) -> None:
    requests: list[str] = []

    def seen(response: PipelineResponse[Any, Any]) -> None:
        requests.append(response.http_request.url)

    async with TableServiceClient.from_connection_string(
        azurite.connection_string, raw_response_hook=seen
    ) as service:
        chain = AuditChain(
            AuditTable(service.get_table_client(table.table_name)), indexer=index_entries
        )
        await chain.append(entry(0))  # learns its chain's head
        requests.clear()
        [record] = await chain.append_all([entry(1)])
    assert len(requests) == 1 and requests[0].endswith("/$batch")
    rows = [e async for e in table.query_entities(f"PartitionKey eq '{record.chain}'")]
    filed = [r for r in rows if r["RowKey"].startswith("x")]
    assert len(filed) == len(index_entries(record)) * 2  # both records' rows


async def test_an_indexed_append_that_loses_a_chain_moves_to_another(table: TableClient) -> None:
    store = AuditTable(table)
    first = AuditChain(store, indexer=index_entries)
    second = AuditChain(store, indexer=index_entries)
    second._free = list(first._free)  # both prefer the same chain
    await first.append(entry(0))
    await second.append(entry(1))  # `first` still believes it holds the head
    [record] = await first.append_all([entry(2)])
    assert record.chain_seq == 1  # a conflict on the taken number, then a fresh chain
    rows = [e async for e in table.query_entities("RowKey ge 'x' and RowKey lt 'y'")]
    assert len(rows) == 3 * len(index_entries(record))  # nothing of the lost try landed
    assert (await AuditChain(store).verify()).ok


async def test_the_head_is_found_with_one_small_read(table: TableClient) -> None:
    chain = AuditChain(AuditTable(table))
    records = await chain.append_all([entry(n) for n in range(120)])
    head = await AuditTable(table).chain_head(records[-1].chain)
    assert head is not None and head.seq == 120 and head.hash == records[-1].hash
    newest = await AuditTable(table).head()
    assert newest is not None and newest.seq == records[-1].seq


async def test_an_edit_made_with_storage_keys_is_found(table: TableClient) -> None:
    records = await AuditChain(AuditTable(table)).append_all([entry(n) for n in range(6)])
    tampered = await table.get_entity(records[3].chain, "r" + row_key(records[3].chain_seq))
    tampered["Body"] = tampered["Body"].replace("adele.vance", "megan.bowen")
    await table.update_entity(tampered, mode=UpdateMode.REPLACE)
    report = await AuditChain(AuditTable(table)).verify()
    assert report.first_broken_seq == records[3].seq


async def test_a_readable_copy_added_beside_the_hashed_text_is_found(table: TableClient) -> None:
    records = await AuditChain(AuditTable(table)).append_all([entry(n) for n in range(3)])
    tampered = await table.get_entity(records[1].chain, "r" + row_key(records[1].chain_seq))
    tampered["Target"] = "megan.bowen@contoso.com"
    await table.update_entity(tampered, mode=UpdateMode.REPLACE)
    report = await AuditChain(AuditTable(table)).verify()
    assert report.first_broken_seq == records[1].seq
    assert "Target" in (report.problem or "")


async def test_a_deleted_record_is_found(table: TableClient) -> None:
    records = await AuditChain(AuditTable(table)).append_all([entry(n) for n in range(6)])
    await table.delete_entity(records[2].chain, "r" + row_key(records[2].chain_seq))
    report = await AuditChain(AuditTable(table)).verify()
    assert report.first_broken_seq == records[3].seq and "missing" in (report.problem or "")


async def test_a_trail_of_the_single_chain_layout_still_verifies_and_reads(
    table: TableClient,
) -> None:
    """A trail written by earlier versions (partition `chain`, copies beside `Body`) verifies
    as it is; new records go to the lanes, after it."""
    old = [chain_entry(1, GENESIS_HASH, entry(1))]
    old.append(chain_entry(2, old[0].hash, entry(2)))
    for record in old:
        await table.create_entity(
            {
                "PartitionKey": "chain",
                "RowKey": row_key(record.seq),
                "Seq": record.seq,
                "PrevHash": record.prev_hash,
                "Hash": record.hash,
                "Body": record.body,
                **legacy_copies(record.entry),
            }
        )
    store = AuditTable(table)
    [new] = await AuditChain(store).append_all([entry(3)])
    assert [r.seq for r in [r async for r in store.newest_first()]] == [new.seq, 2, 1]
    assert (await store.get(2)) == old[1].model_copy(update={"defect": None})
    report = await AuditChain(store).verify()
    assert report.ok and set(report.chains) == {"chain", new.chain}
    copy = await table.get_entity("chain", row_key(1))
    copy["Actor"] = "someone.else@contoso.com"
    await table.update_entity(copy, mode=UpdateMode.REPLACE)
    report = await AuditChain(store).verify()
    assert report.first_broken_seq == 1 and "Actor" in (report.problem or "")
