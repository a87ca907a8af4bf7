"""The audit chain on Azurite: insert-only appends racing on 409, and verification that
catches edits made behind the app's back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from drill.azurite import Azurite
from shared.adapters.audit_table import AuditTable, row_key
from shared.audit import AuditChain
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
    assert [r.seq for r in records] == list(range(40, 0, -1))
    assert len({r.entry.action_id for r in records}) == 40
    report = await AuditChain(AuditTable(table)).verify()
    assert report.ok and report.records_checked == 40 and report.head_seq == 40


async def test_a_batch_that_loses_the_race_lands_whole_after_the_winner(
    table: TableClient,
) -> None:
    first, second = AuditChain(AuditTable(table)), AuditChain(AuditTable(table))
    await first.append(entry(0))
    await second.append(entry(1))  # `first` still believes the head is record 1
    records = await first.append_all([entry(n) for n in range(2, 7)])
    assert [r.seq for r in records] == [3, 4, 5, 6, 7]
    assert (await AuditChain(AuditTable(table)).verify()).ok


async def test_the_head_is_found_with_one_read(table: TableClient) -> None:
    chain = AuditChain(AuditTable(table))
    await chain.append_all([entry(n) for n in range(120)])
    head = await AuditTable(table).head()
    assert head is not None and head.seq == 120


async def test_an_edit_made_with_storage_keys_is_found(table: TableClient) -> None:
    await AuditChain(AuditTable(table)).append_all([entry(n) for n in range(6)])
    tampered = await table.get_entity("chain", row_key(4))
    tampered["Body"] = tampered["Body"].replace("adele.vance", "megan.bowen")
    await table.update_entity(tampered, mode=UpdateMode.REPLACE)
    report = await AuditChain(AuditTable(table)).verify()
    assert report.first_broken_seq == 4


async def test_a_deleted_record_is_found(table: TableClient) -> None:
    await AuditChain(AuditTable(table)).append_all([entry(n) for n in range(6)])
    await table.delete_entity("chain", row_key(2))
    report = await AuditChain(AuditTable(table)).verify()
    assert report.first_broken_seq == 2 and "missing" in (report.problem or "")
