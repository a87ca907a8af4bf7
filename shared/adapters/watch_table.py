"""Change notification state in the state table: subscriptions with their clientState secrets,
the last seen state of watched objects, and the notifications already handled. Least
privilege: the state table's Storage Table Data Contributor role."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.adapters.state_table import _key
from shared.defender_stream import row_digest
from shared.models import is_guid
from shared.watch.ports import SubscriptionRecord, SubscriptionSpec, WatchPurpose

SUBSCRIPTIONS = "subscription"
SNAPSHOTS = "snapshot"
NOTIFICATIONS = "notification"


def _record(entity: Any) -> SubscriptionRecord:
    spec = SubscriptionSpec(
        entity["Resource"], entity["ChangeType"], WatchPurpose(entity["Purpose"])
    )
    claimed = entity.get("ClaimedAt") or ""
    expires = entity.get("ExpiresAt") or ""
    return SubscriptionRecord(
        spec=spec,
        client_state=entity["ClientState"],
        subscription_id=entity.get("SubscriptionId") or "",
        expires_at=datetime.fromisoformat(expires) if expires else None,
        claimed_at=datetime.fromisoformat(claimed) if claimed else None,
        etag=entity.metadata["etag"],
    )


class TableSubscriptions:
    """`SubscriptionStore`: one row per desired subscription, keyed by the spec."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def get(self, key: str) -> SubscriptionRecord | None:
        try:
            return _record(await self._table.get_entity(SUBSCRIPTIONS, key))
        except ResourceNotFoundError:
            return None

    async def by_subscription_id(self, subscription_id: str) -> SubscriptionRecord | None:
        if not is_guid(subscription_id):
            return None
        query = "PartitionKey eq @partition and SubscriptionId eq @id"
        rows = self._table.query_entities(
            query, parameters={"partition": SUBSCRIPTIONS, "id": subscription_id.lower()}
        )
        async for entity in rows:
            return _record(entity)
        return None

    async def by_subscription_ids(
        self, subscription_ids: Collection[str]
    ) -> dict[str, SubscriptionRecord]:
        """One query over the subscription partition (a row per configured subscription, so a
        few rows), matched here: a notification naming a thousand unknown ids costs one read,
        not a thousand."""
        wanted = {s.lower() for s in subscription_ids if is_guid(s)}
        if not wanted:
            return {}
        rows = self._table.query_entities(
            "PartitionKey eq @partition", parameters={"partition": SUBSCRIPTIONS}
        )
        found: dict[str, SubscriptionRecord] = {}
        async for entity in rows:
            subscription_id = (entity.get("SubscriptionId") or "").lower()
            if subscription_id in wanted:
                found[subscription_id] = _record(entity)
        return found

    async def claim(
        self,
        spec: SubscriptionSpec,
        client_state: str,
        at: datetime,
        current: SubscriptionRecord | None,
    ) -> SubscriptionRecord | None:
        entity = {
            "PartitionKey": SUBSCRIPTIONS,
            "RowKey": spec.key,
            "Resource": spec.resource,
            "ChangeType": spec.change_type,
            "Purpose": str(spec.purpose),
            "ClientState": client_state,
            "SubscriptionId": "",
            "ExpiresAt": "",
            "ClaimedAt": at.isoformat(),
        }
        try:
            if current is None:
                meta = await self._table.create_entity(entity)
            else:
                meta = await self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=current.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            return None
        return SubscriptionRecord(spec, client_state, claimed_at=at, etag=meta["etag"])

    async def save(
        self, record: SubscriptionRecord, subscription_id: str, expires_at: datetime
    ) -> bool:
        try:
            await self._table.update_entity(
                {
                    "PartitionKey": SUBSCRIPTIONS,
                    "RowKey": record.spec.key,
                    "SubscriptionId": subscription_id.lower(),
                    "ExpiresAt": expires_at.isoformat(),
                    "ClaimedAt": "",
                },
                mode=UpdateMode.MERGE,
                etag=record.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True


class TableSnapshots:
    """`Snapshots`: the last seen state of a watched user or group, as JSON."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        try:
            entity = await self._table.get_entity(SNAPSHOTS, f"{kind}-{object_id.lower()}")
        except ResourceNotFoundError:
            return None
        snapshot: dict[str, Any] = json.loads(entity["State"])
        return snapshot

    async def put(self, kind: str, object_id: str, snapshot: dict[str, Any]) -> None:
        await self._table.upsert_entity(
            {
                "PartitionKey": SNAPSHOTS,
                "RowKey": f"{kind}-{object_id.lower()}",
                "State": json.dumps(snapshot, sort_keys=True),
            },
            mode=UpdateMode.REPLACE,
        )


class TableNotificationClaims:
    """`NotificationClaims`: an insert per notification key; a second insert loses."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def claim(self, key: str) -> bool:
        try:
            await self._table.create_entity({"PartitionKey": NOTIFICATIONS, "RowKey": _key(key)})
        except ResourceExistsError:
            return False
        return True

    async def release(self, key: str) -> None:
        await self._table.delete_entity(NOTIFICATIONS, _key(key))


STREAM_INFO = "dfinfo"


def _evidence_partition(alert_id: str) -> str:
    return f"dfev-{_key(alert_id)[:40]}"


class TableStreamRows:
    """`StreamRows`: AlertInfo rows in one partition, each alert's evidence in its own."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def put_info(self, alert_id: str, info: dict[str, Any]) -> None:
        await self._table.upsert_entity(
            {"PartitionKey": STREAM_INFO, "RowKey": _key(alert_id), "Row": json.dumps(info)},
            mode=UpdateMode.REPLACE,
        )

    async def add_evidence(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            await self._table.upsert_entity(
                {
                    "PartitionKey": _evidence_partition(row["AlertId"]),
                    "RowKey": row_digest(row),
                    "Row": json.dumps(row),
                },
                mode=UpdateMode.REPLACE,
            )

    async def info(self, alert_id: str) -> dict[str, Any] | None:
        try:
            entity = await self._table.get_entity(STREAM_INFO, _key(alert_id))
        except ResourceNotFoundError:
            return None
        row: dict[str, Any] = json.loads(entity["Row"])
        return row

    async def evidence(self, alert_id: str) -> list[dict[str, Any]]:
        rows = self._table.query_entities(
            "PartitionKey eq @partition", parameters={"partition": _evidence_partition(alert_id)}
        )
        return [json.loads(entity["Row"]) async for entity in rows]
