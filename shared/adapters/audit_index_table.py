"""The audit index in Azure Table Storage: one partition per (dimension, value), one row per
audit record filed there, newest first.

The index is derived from the audit trail and never part of it: rows are upserted (a rebuild
or a repeated write changes nothing) and readers re-check every record it points to. Values
are hashed into the PartitionKey because they may hold characters keys forbid (/ \\ # ?).
Least privilege: Storage Table Data Contributor on this table only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from azure.data.tables.aio import TableClient

from shared.adapters.audit_table import row_key
from shared.ports import IndexDimension, IndexEntry

MAX_TRANSACTION = 100  # Table Storage's limit of operations in one entity group transaction
PARALLEL_WRITES = 8


def partition_key(dimension: IndexDimension, value: str) -> str:
    return f"{dimension}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def to_entity(entry: IndexEntry) -> dict[str, Any]:
    return {
        "PartitionKey": partition_key(entry.dimension, entry.value),
        "RowKey": row_key(entry.seq),
        "Seq": entry.seq,
        "At": entry.at,
    }


class AuditIndexTable:
    """`AuditIndex` on a Table Storage table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def add(self, entries: list[IndexEntry]) -> None:
        partitions: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in entries:
            entity = to_entity(entry)
            # One transaction may not name the same row twice.
            partitions.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = entity
        batches = [
            rows[start : start + MAX_TRANSACTION]
            for rows in (list(p.values()) for p in partitions.values())
            for start in range(0, len(rows), MAX_TRANSACTION)
        ]
        gate = asyncio.Semaphore(PARALLEL_WRITES)

        async def write(batch: list[dict[str, Any]]) -> None:
            async with gate:
                await self._table.submit_transaction([("upsert", row) for row in batch])

        await asyncio.gather(*(write(batch) for batch in batches))

    async def seqs(
        self, dimension: IndexDimension, value: str, before_seq: int | None = None
    ) -> AsyncIterator[int]:
        query = f"PartitionKey eq '{partition_key(dimension, value)}'"
        if before_seq is not None:
            query += f" and RowKey gt '{row_key(before_seq)}'"
        async for entity in self._table.query_entities(query, select=["Seq"]):
            yield int(entity["Seq"])
