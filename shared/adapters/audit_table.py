"""The audit trail in Azure Table Storage: one partition, newest record first.

RowKey is the sequence number subtracted from a constant, so a plain query returns the newest
record first (the chain head costs one read). Records are only ever inserted; the columns beside
`Body` are copies for filtering and are not trusted by verification, which reads `Body` only.
Least privilege: data actions `tableServices/tables/entities/read` and `.../add/action`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableClient

from shared.models import AuditEntry, AuditRecord
from shared.ports import AppendConflict

PARTITION = "chain"
_ROW_BASE = 10**19 - 1


def row_key(seq: int) -> str:
    return f"{_ROW_BASE - seq:019d}"


def to_entity(record: AuditRecord) -> dict[str, Any]:
    entry = record.entry
    return {
        "PartitionKey": PARTITION,
        "RowKey": row_key(record.seq),
        "Seq": record.seq,
        "PrevHash": record.prev_hash,
        "Hash": record.hash,
        "Body": record.body,
        "Event": str(entry.event),
        "At": entry.at,
        "Actor": entry.actor.name,
        "ActionId": entry.action_id or "",
        "Kind": entry.kind or "",
        "Target": entry.target or "",
        "AlertId": entry.alert_id or "",
    }


def from_entity(entity: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        seq=int(entity["Seq"]),
        prev_hash=entity["PrevHash"],
        hash=entity["Hash"],
        entry=AuditEntry.model_validate_json(entity["Body"]),
        body=entity["Body"],
    )


class AuditTable:
    """`AuditStore` on a Table Storage table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def head(self) -> AuditRecord | None:
        pages = self._table.query_entities(
            f"PartitionKey eq '{PARTITION}'", results_per_page=1
        ).by_page()
        async for page in pages:
            async for entity in page:
                return from_entity(entity)
        return None

    async def insert_all(self, records: list[AuditRecord]) -> None:
        entities = [to_entity(record) for record in records]
        try:
            if len(entities) == 1:
                await self._table.create_entity(entities[0])
            else:
                await self._table.submit_transaction([("create", e) for e in entities])
        except ResourceExistsError as exc:
            raise AppendConflict(str(exc)) from exc
        except TableTransactionError as exc:
            if exc.status_code == 409 or getattr(exc, "error_code", None) == "EntityAlreadyExists":
                raise AppendConflict(str(exc)) from exc
            raise

    async def get(self, seq: int) -> AuditRecord | None:
        try:
            entity = await self._table.get_entity(PARTITION, row_key(seq))
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "TableNotFound":
                raise
            return None
        return from_entity(entity)

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        query = f"PartitionKey eq '{PARTITION}'"
        if before_seq is not None:
            # Lower sequence numbers have higher row keys.
            query += f" and RowKey gt '{row_key(before_seq)}'"
        async for entity in self._table.query_entities(query):
            yield from_entity(entity)
