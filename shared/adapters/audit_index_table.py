"""The audit index in Azure Table Storage, newest first per (dimension, value).

A lane record's index rows live in the audit table beside the record, in its chain's partition
(RowKey `x` + dimension, value digest, position; see `audit_table`), written in the record's own
transaction; a lookup reads that key range in every lane partition. Records of the single-chain
layout of earlier versions keep their index in the index table, one partition per
(dimension, value), as that layout wrote it.

The index is derived from the trail and never part of it: readers re-check every record it
points to. Values are hashed into the keys because they may hold characters keys forbid
(/ \\ # ?). A rebuild only adds rows that are missing.
Least privilege: audit table as in `audit_table`; Storage Table Data Contributor on the index
table only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableClient

from shared.adapters.audit_table import index_entity, index_prefix, key_upper, row_key
from shared.adapters.table_service import as_int
from shared.audit import LANE_CHAINS, LANE_POSITION_FLOOR
from shared.ports import IndexDimension, IndexEntry

MAX_TRANSACTION = 100  # Table Storage's limit of operations in one entity group transaction
PARALLEL_WRITES = 8


def partition_key(dimension: IndexDimension, value: str) -> str:
    return f"{dimension}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def to_entity(entry: IndexEntry) -> dict[str, Any]:
    """An index row of the single-chain layout, in the index table."""
    return {
        "PartitionKey": partition_key(entry.dimension, entry.value),
        "RowKey": row_key(entry.seq),
        "Seq": entry.seq,
        "At": entry.at,
    }


async def _merged(streams: list[AsyncIterator[int]]) -> AsyncIterator[int]:
    heads: list[int | None] = list(await asyncio.gather(*(anext(s, None) for s in streams)))
    while any(h is not None for h in heads):
        n = max((i for i, h in enumerate(heads) if h is not None), key=lambda i: heads[i] or 0)
        yield heads[n] or 0
        heads[n] = await anext(streams[n], None)


class AuditIndexTable:
    """`AuditIndex` on the audit table's lane partitions and the older index table."""

    def __init__(self, legacy: TableClient, audit: TableClient) -> None:
        self._legacy = legacy
        self._audit = audit

    async def add(self, entries: list[IndexEntry]) -> None:
        gate = asyncio.Semaphore(PARALLEL_WRITES)
        lane = [e for e in entries if e.seq >= LANE_POSITION_FLOOR]
        older = [e for e in entries if e.seq < LANE_POSITION_FLOOR]

        async def create(row: dict[str, Any]) -> None:
            async with gate:
                try:
                    await self._audit.create_entity(row)
                except ResourceExistsError:
                    pass  # insert-only table: a row already filed stays as it is

        partitions: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in older:
            entity = to_entity(entry)
            # One transaction may not name the same row twice.
            partitions.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = entity
        batches = [
            rows[start : start + MAX_TRANSACTION]
            for rows in (list(p.values()) for p in partitions.values())
            for start in range(0, len(rows), MAX_TRANSACTION)
        ]

        async def write(batch: list[dict[str, Any]]) -> None:
            async with gate:
                await self._legacy.submit_transaction([("upsert", row) for row in batch])

        rows = {(r["PartitionKey"], r["RowKey"]): r for r in map(index_entity, lane)}
        await asyncio.gather(
            *(create(row) for row in rows.values()), *(write(batch) for batch in batches)
        )

    async def seqs(
        self,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> AsyncIterator[int]:
        streams = [
            self._lane(chain, dimension, value, before_seq, after_seq) for chain in LANE_CHAINS
        ]
        async for seq in _merged(streams):
            yield seq
        older = after_seq is None or after_seq < LANE_POSITION_FLOOR
        if older and (before_seq is None or before_seq > 1):
            async for seq in self._older(dimension, value, before_seq, after_seq):
                yield seq

    async def _lane(
        self,
        chain: str,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None,
        after_seq: int | None,
    ) -> AsyncIterator[int]:
        # Row keys fall as positions rise: `before_seq` is a lower key bound, `after_seq` an
        # upper one.
        prefix = index_prefix(dimension, value)
        low = (
            f"RowKey gt '{prefix + row_key(before_seq)}'" if before_seq else f"RowKey ge '{prefix}'"
        )
        high = f"RowKey lt '{prefix + row_key(after_seq)}'" if after_seq else None
        high = high or f"RowKey lt '{key_upper(prefix)}'"
        query = f"PartitionKey eq '{chain}' and {low} and {high}"
        async for entity in self._audit.query_entities(query, select=["Seq"]):
            yield as_int(entity["Seq"])

    async def _older(
        self,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None,
        after_seq: int | None,
    ) -> AsyncIterator[int]:
        query = f"PartitionKey eq '{partition_key(dimension, value)}'"
        if before_seq is not None:
            query += f" and RowKey gt '{row_key(before_seq)}'"
        if after_seq is not None:
            query += f" and RowKey lt '{row_key(after_seq)}'"
        async for entity in self._legacy.query_entities(query, select=["Seq"]):
            yield int(entity["Seq"])
