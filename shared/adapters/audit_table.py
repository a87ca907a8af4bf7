"""The audit trail in Azure Table Storage: one partition per hash chain.

A lane chain (`c00` .. `c31`) holds, in its partition:

- a record row per record, RowKey `r` + its number in the chain subtracted from a constant (a
  plain query returns the newest first, and the newest is the chain head in one small read):
  `Seq` (the position), `Chain`, `ChainSeq`, `PrevHash`, `Hash` and `Body`, the canonical text
  the hash covers; nothing else, so no readable copy can disagree with the hashed text. Two
  writers cannot take the same number: the second insert of the row fails;
- the record's index rows, RowKey `x` + dimension, value digest and position (see
  `audit_index_table`).

A record with its index rows is inserted in one entity group transaction (one round trip,
its body written by `table_batch`); a record without, as one insert. The single
chain of earlier versions (partition `chain`, RowKey its sequence number subtracted from a
constant, copies `Event`, `Actor`, ... beside `Body`) is read and verified as it is, copies
included, and never appended to.
Least privilege: data actions `tableServices/tables/entities/read` and `.../add/action`.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from collections.abc import AsyncIterator
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableClient

from shared.adapters.table_batch import insert_entities
from shared.adapters.table_query import query_json
from shared.adapters.table_service import as_int, int64
from shared.audit import LANE_CHAINS, chain_of_position, chain_seq_of
from shared.models import LEGACY_CHAIN, AuditEntry, AuditRecord
from shared.ports import AppendConflict, ChainHead, IndexDimension, IndexEntry

PARTITION = LEGACY_CHAIN
_ROW_BASE = 10**19 - 1
RECORD, INDEX = "r", "x"
LANE_COLUMNS = frozenset(
    {"PartitionKey", "RowKey", "Seq", "Chain", "ChainSeq", "PrevHash", "Hash", "Body"}
)


def row_key(seq: int) -> str:
    return f"{_ROW_BASE - seq:019d}"


def index_prefix(dimension: IndexDimension, value: str) -> str:
    """The RowKey prefix of the index rows of one (dimension, value) in a lane partition."""
    return f"{INDEX}{dimension}:{hashlib.sha256(value.encode()).hexdigest()[:32]}:"


def key_upper(prefix: str) -> str:
    """The smallest key above every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def index_entity(entry: IndexEntry) -> dict[str, Any]:
    return {
        "PartitionKey": chain_of_position(entry.seq),
        "RowKey": index_prefix(entry.dimension, entry.value) + row_key(entry.seq),
        "Seq": int64(entry.seq),
        "At": entry.at,
    }


def legacy_copies(entry: AuditEntry) -> dict[str, Any]:
    """The readable copies the single-chain layout kept beside `Body`."""
    return {
        "Event": str(entry.event),
        "At": entry.at,
        "Actor": entry.actor.name,
        "ActionId": entry.action_id or "",
        "Kind": entry.kind or "",
        "Target": entry.target or "",
        "AlertId": entry.alert_id or "",
    }


def to_entity(record: AuditRecord) -> dict[str, Any]:
    return {
        "PartitionKey": record.chain,
        "RowKey": RECORD + row_key(record.chain_seq),
        "Seq": int64(record.seq),
        "Chain": record.chain,
        "ChainSeq": record.chain_seq,
        "PrevHash": record.prev_hash,
        "Hash": record.hash,
        "Body": record.body,
    }


def from_entity(entity: dict[str, Any]) -> AuditRecord:
    body = entity["Body"]
    entry = AuditEntry.model_validate_json(body)
    chain = entity["PartitionKey"]
    defect = None
    if chain == LEGACY_CHAIN:
        changed = sorted(
            name
            for name, value in legacy_copies(entry).items()
            if name in entity and entity[name] != value
        )
        if changed:
            defect = f"copied column {', '.join(changed)} differs from the hashed text"
    elif not LANE_COLUMNS.issuperset(entity):
        extra = sorted(set(entity) - LANE_COLUMNS)
        defect = f"column {', '.join(extra)} beside the hashed text was added"
    position = as_int(entity["Seq"])
    return AuditRecord(
        seq=position,
        prev_hash=entity["PrevHash"],
        hash=entity["Hash"],
        entry=entry,
        body=body,
        chain=chain,
        chain_seq=int(entity.get("ChainSeq") or position),
        defect=defect,
    )


async def _merged(streams: list[AsyncIterator[AuditRecord]]) -> AsyncIterator[AuditRecord]:
    """Records of several newest-first streams, highest position first."""
    heap: list[tuple[int, int, AuditRecord]] = []

    async def pull(n: int) -> None:
        record = await anext(streams[n], None)
        if record is not None:
            heapq.heappush(heap, (-record.seq, n, record))

    await asyncio.gather(*(pull(n) for n in range(len(streams))))
    while heap:
        _, n, record = heapq.heappop(heap)
        yield record
        await pull(n)


class AuditTable:
    """`AuditStore` on a Table Storage table."""

    chains = LANE_CHAINS

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def head(self) -> AuditRecord | None:
        async for record in self.newest_first():
            return record
        return None

    async def chain_head(self, chain: str) -> ChainHead | None:
        if chain == LEGACY_CHAIN:
            query = f"PartitionKey eq '{LEGACY_CHAIN}'"
        else:
            query = f"PartitionKey eq '{chain}' and RowKey ge '{RECORD}' and RowKey lt 's'"
        pages = self._table.query_entities(
            query, results_per_page=1, select=["Seq", "ChainSeq", "Hash"]
        ).by_page()
        async for page in pages:
            async for entity in page:
                position = as_int(entity["Seq"])
                seq = int(entity.get("ChainSeq") or position)
                return ChainHead(chain, seq, entity["Hash"], position)
        return None

    async def heads(self) -> dict[str, ChainHead]:
        names = (LEGACY_CHAIN, *self.chains)
        found = await asyncio.gather(*(self.chain_head(name) for name in names))
        return {name: head for name, head in zip(names, found, strict=True) if head}

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        chain = records[0].chain
        if chain == LEGACY_CHAIN or any(record.chain != chain for record in records):
            raise ValueError("appends go to one lane chain at a time")
        entities = [to_entity(record) for record in records]
        # One transaction may not name the same row twice (an entry filed twice).
        rows = {row["RowKey"]: row for row in map(index_entity, index)}
        entities += rows.values()
        try:
            if len(entities) == 1:
                await self._table.create_entity(entities[0])
            else:
                await insert_entities(self._table, entities)
        except TableTransactionError as exc:
            if exc.status_code == 409 or getattr(exc, "error_code", None) == "EntityAlreadyExists":
                raise AppendConflict(str(exc)) from exc
            raise
        except ResourceExistsError as exc:
            raise AppendConflict(str(exc)) from exc

    async def get(self, seq: int) -> AuditRecord | None:
        chain = chain_of_position(seq)
        number = row_key(chain_seq_of(seq))
        key = number if chain == LEGACY_CHAIN else RECORD + number
        try:
            entity = await self._table.get_entity(chain, key)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "TableNotFound":
                raise
            return None
        record = from_entity(entity)
        return record if record.seq == seq else None

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        lanes = [self._records(chain, before_seq) for chain in self.chains]
        async for record in _merged(lanes):
            yield record
        # Every record of the single-chain layout comes before every lane record.
        async for record in self._records(LEGACY_CHAIN, before_seq):
            yield record

    def chain_newest_first(self, chain: str, whole: bool = False) -> AsyncIterator[AuditRecord]:
        return self._records(chain, None, read_ahead=whole)

    async def _records(
        self, chain: str, before_seq: int | None, read_ahead: bool = False
    ) -> AsyncIterator[AuditRecord]:
        if chain == LEGACY_CHAIN:
            query = f"PartitionKey eq '{LEGACY_CHAIN}'"
            if before_seq is not None:
                # Lower sequence numbers have higher row keys.
                query += f" and RowKey gt '{row_key(before_seq)}'"
        else:
            query = f"PartitionKey eq '{chain}' and RowKey ge '{RECORD}' and RowKey lt 's'"
            if before_seq is not None:
                # A lane's numbers follow its positions; the position bound is a filter.
                query += f" and Seq lt {before_seq}L"
        # Lane columns are strings and integers: read as plain JSON (table_query); the single
        # chain's copied columns keep the SDK's typed reading.
        entities = (
            self._table.query_entities(query)
            if chain == LEGACY_CHAIN
            else query_json(self._table, query, read_ahead=read_ahead)
        )
        async for entity in entities:
            yield from_entity(entity)
