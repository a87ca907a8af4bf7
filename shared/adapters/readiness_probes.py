"""Probes of the Azure side for the readiness check: tables and queues reachable, and the audit
table really insert-only for the app. Nothing here changes a record of the audit trail or a
queued message.
"""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient

from shared.models import utcnow

# One probe row, outside the chain's partition: the trail's readers never see it, and however
# often the check runs there is only ever this one row.
PROBE_PARTITION = "readiness-probe"
PROBE_ROW = "insert-only"


class AzureProbes:
    def __init__(
        self,
        tables: TableServiceClient,
        table_names: list[str],
        audit_table: str,
        queue_peek: QueuePeek | None,
    ) -> None:
        self._tables = tables
        self._names = table_names
        self._audit = audit_table
        self._peek = queue_peek

    async def tables_reachable(self) -> str:
        """Read one entity of each table (raises when a table cannot be read)."""
        for name in self._names:
            client = self._tables.get_table_client(name)
            async for _ in client.query_entities("PartitionKey eq 'none'", results_per_page=1):
                break
        return f"read {', '.join(self._names)}"

    async def queue_reachable(self) -> str:
        if self._peek is None:
            return "in-memory queue (drills and local runs only): nothing to reach"
        return await self._peek.peek()

    async def audit_update_refused(self) -> tuple[bool, str]:
        """Insert the probe row (once; it is never part of the chain), then try to change it.
        True when the update was refused for lack of authorization."""
        client = self._tables.get_table_client(self._audit)
        probe = {
            "PartitionKey": PROBE_PARTITION,
            "RowKey": PROBE_ROW,
            "Purpose": "responder doctor: proves the app cannot change audit records",
        }
        try:
            await client.create_entity(probe)
        except ResourceExistsError:
            pass
        try:
            await client.update_entity(
                {**probe, "TriedAt": utcnow().isoformat()}, mode=UpdateMode.MERGE
            )
        except HttpResponseError as exc:
            if exc.status_code == 403:
                code = getattr(exc, "error_code", None) or ""
                return True, f"update refused: 403 {code}".strip()
            raise
        return False, "the update of the probe record was accepted"


class QueuePeek:
    """Peeks (never receives) one message of each Service Bus queue: reachable and readable."""

    def __init__(self, namespace: str, queues: list[str], credential: AsyncTokenCredential):
        self._namespace = namespace
        self._queues = queues
        self._credential = credential

    async def peek(self) -> str:
        from azure.servicebus.aio import ServiceBusClient

        async with ServiceBusClient(self._namespace, self._credential) as client:
            for queue in self._queues:
                async with client.get_queue_receiver(queue) as receiver:
                    await receiver.peek_messages(max_message_count=1)
        return f"peeked {', '.join(self._queues)} on {self._namespace}"
