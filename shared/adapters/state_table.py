"""The responder's working state in Table Storage: the poller's watermark, the alert versions
already handled, and the action ledger. Unlike the audit trail this table is mutable.
Least privilege: data actions `read`, `write`, `add/action`, `update/action`, `delete` on it."""

from __future__ import annotations

import hashlib
from datetime import datetime

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.models import ActionRequest, OutcomeStatus
from shared.ports import LEDGER_QUEUED, LedgerEntry

WATERMARKS = "watermark"
HANDLED = "handled"
ACTIONS = "action"


def _key(text: str) -> str:
    # Alert ids and versions may hold characters Table keys forbid (/ \ # ?).
    return hashlib.sha256(text.encode()).hexdigest()


class StateTable:
    """`AlertCheckpoint` and `ActionLedger` on one Table Storage table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def watermark(self, feed: str) -> datetime | None:
        try:
            entity = await self._table.get_entity(WATERMARKS, feed)
        except ResourceNotFoundError:
            return None
        value = entity["Value"]
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    async def advance_watermark(self, feed: str, value: datetime) -> None:
        await self._table.upsert_entity(
            {"PartitionKey": WATERMARKS, "RowKey": feed, "Value": value}, mode=UpdateMode.REPLACE
        )

    async def is_handled(self, alert_key: str, version: str) -> bool:
        try:
            await self._table.get_entity(HANDLED, _key(f"{alert_key}|{version}"))
        except ResourceNotFoundError:
            return False
        return True

    async def mark_handled(self, alert_key: str, version: str) -> None:
        await self._table.upsert_entity(
            {
                "PartitionKey": HANDLED,
                "RowKey": _key(f"{alert_key}|{version}"),
                "AlertKey": alert_key,
                "Version": version,
            }
        )

    async def claim(self, action: ActionRequest) -> bool:
        try:
            await self._table.create_entity(
                {
                    "PartitionKey": ACTIONS,
                    "RowKey": action.id,
                    "State": LEDGER_QUEUED,
                    "Kind": str(action.kind),
                    "Target": action.target,
                }
            )
        except ResourceExistsError:
            return False
        return True

    async def release(self, action_id: str) -> None:
        await self._table.delete_entity(ACTIONS, action_id)

    async def get(self, action_id: str) -> LedgerEntry | None:
        try:
            entity = await self._table.get_entity(ACTIONS, action_id)
        except ResourceNotFoundError:
            return None
        return LedgerEntry(
            action_id=action_id, state=entity["State"], kind=entity["Kind"], target=entity["Target"]
        )

    async def finish(self, action_id: str, status: OutcomeStatus, audit_seq: int) -> None:
        await self._table.upsert_entity(
            {
                "PartitionKey": ACTIONS,
                "RowKey": action_id,
                "State": str(status),
                "AuditSeq": audit_seq,
            },
            mode=UpdateMode.MERGE,
        )
