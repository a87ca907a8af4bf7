"""Notice state in the state table: the dispatcher's cursor over the audit trail (one row,
replaced under its etag) and one row per notice task, which makes a task's delivery happen at
most once. Least privilege: Storage Table Data Contributor on the state table (as for the
rest of it)."""

from __future__ import annotations

import json

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.notices.ports import Claim, DeliveryState, DispatchCursor

NOTICE_CURSOR = "noticecursor"
NOTICE_DELIVERIES = "notice"
_CURSOR_ROW = "audit"


class TableNoticeRows:
    """`NoticeRows` on the state table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def cursor(self) -> DispatchCursor | None:
        try:
            entity = await self._table.get_entity(NOTICE_CURSOR, _CURSOR_ROW)
        except ResourceNotFoundError:
            return None
        return DispatchCursor(
            done=_numbers(entity["Done"]),
            planned=_numbers(entity["Planned"]),
            etag=entity.metadata["etag"] or "",
        )

    async def save_cursor(self, cursor: DispatchCursor) -> str | None:
        entity = {
            "PartitionKey": NOTICE_CURSOR,
            "RowKey": _CURSOR_ROW,
            "Done": json.dumps(cursor.done, sort_keys=True),
            "Planned": json.dumps(cursor.planned, sort_keys=True),
        }
        try:
            if not cursor.etag:
                stored = await self._table.create_entity(entity)
            else:
                stored = await self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=cursor.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return None
        return str(stored["etag"])

    async def delivery(self, task_id: str) -> DeliveryState | None:
        try:
            entity = await self._table.get_entity(NOTICE_DELIVERIES, task_id)
        except ResourceNotFoundError:
            return None
        return DeliveryState(entity["State"])

    async def claim(self, task_id: str) -> Claim | None:
        entity = {
            "PartitionKey": NOTICE_DELIVERIES,
            "RowKey": task_id,
            "State": str(DeliveryState.SENDING),
        }
        try:
            await self._table.create_entity(entity)
            return Claim.FIRST
        except ResourceExistsError:
            pass
        try:
            current = await self._table.get_entity(NOTICE_DELIVERIES, task_id)
        except ResourceNotFoundError:
            return None
        if current["State"] != DeliveryState.RETRY:
            return None
        try:
            await self._table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return None
        return Claim.AGAIN

    async def settle(self, task_id: str, state: DeliveryState) -> None:
        await self._table.upsert_entity(
            {"PartitionKey": NOTICE_DELIVERIES, "RowKey": task_id, "State": str(state)},
            mode=UpdateMode.REPLACE,
        )


def _numbers(text: str) -> dict[str, int]:
    """A cursor column: each chain's number, as JSON."""
    value = json.loads(text)
    return {str(chain): int(seq) for chain, seq in value.items()}
