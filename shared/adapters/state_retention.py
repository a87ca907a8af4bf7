"""Time to live for the state table's rows, never for the audit trail (another table, which
this adapter cannot name).

Rows go once they were last written longer ago than the time to live (the table's own
`Timestamp`), and only rows nothing depends on any more: closed actions (never open or held
ones), settled approvals (never pending ones), handled alert versions, claimed notification
keys, Defender stream rows, finished IP block registry rows (unblocked or failed; never a
block pending, in place or being lifted), and disable-budget entries older than the budget's
window. A network blocked again after its row went starts a new row whose generations cannot
repeat the old row's action ids (see `TableBlockRegistry.reserve`). Rows that hold current
state stay: the watermark, open or held actions, pending approvals, active blocks, the
emergency access activation, subscriptions, snapshots and leases.

Every partition the responder queries is then bounded by the time to live, not by the table's
age. Least privilege: `Storage Table Data Contributor` on the state table (delete)."""

from __future__ import annotations

import logging
from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables.aio import TableClient

from shared.adapters.notice_table import NOTICE_DELIVERIES
from shared.adapters.state_table import ACTIONS, APPROVALS, BLOCKS, BUDGET, HANDLED
from shared.adapters.watch_table import NOTIFICATIONS, STREAM_INFO
from shared.models import OutcomeStatus
from shared.ports import LEDGER_QUEUED, ApprovalState, BlockState

logger = logging.getLogger(__name__)

# Deletes per kind of row and run: a backlog is worked off over several runs.
MAX_DELETES = 5000

EXPIRING = {
    "handled": f"PartitionKey eq '{HANDLED}'",
    "ledger": (
        f"PartitionKey eq '{ACTIONS}' and State ne '{LEDGER_QUEUED}' "
        f"and State ne '{OutcomeStatus.HELD}'"
    ),
    "approvals": f"PartitionKey eq '{APPROVALS}' and State ne '{ApprovalState.PENDING}'",
    "notifications": f"PartitionKey eq '{NOTIFICATIONS}'",
    "blocks": (
        f"PartitionKey eq '{BLOCKS}' "
        f"and (State eq '{BlockState.UNBLOCKED}' or State eq '{BlockState.FAILED}')"
    ),
    # Delivered or failed notices; a row still `sending` keeps a notice from going out twice.
    "notices": f"PartitionKey eq '{NOTICE_DELIVERIES}' and State ne 'sending'",
    # AlertInfo rows, and every alert's evidence partition (`dfev-<digest>`).
    "defender": (
        f"(PartitionKey eq '{STREAM_INFO}' "
        "or (PartitionKey ge 'dfev-' and PartitionKey lt 'dfev.'))"
    ),
}


class TableStateRetention:
    """`StateRetention` on the state table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def purge(self, before: datetime, budget_before: datetime) -> dict[str, int]:
        deleted = {
            kind: await self._delete(f"{query} and Timestamp lt @before", before)
            for kind, query in EXPIRING.items()
        }
        deleted["budget"] = await self._delete(
            f"PartitionKey eq '{BUDGET}' and At lt @before", budget_before
        )
        return deleted

    async def _delete(self, query: str, before: datetime) -> int:
        rows = self._table.query_entities(
            query, parameters={"before": before}, select=["PartitionKey", "RowKey"]
        )
        deleted = 0
        async for row in rows:
            if deleted >= MAX_DELETES:
                break
            try:
                # Only as it was read: a row written since stays.
                await self._table.delete_entity(
                    row["PartitionKey"],
                    row["RowKey"],
                    etag=row.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            deleted += 1
        return deleted
