"""The interfaces the watch services depend on, and the messages they pass around."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from shared.ports import DeadLetterHandler

# Users, groups and other directory resources: 41,760 minutes (just under 29 days).
DIRECTORY_MAX_LIFETIME = timedelta(minutes=41_760)


class WatchPurpose(StrEnum):
    """Why a resource is watched, which decides what a change to it means."""

    PROTECTED_USER = "protected_user"
    PRIVILEGED_GROUP = "privileged_group"
    ALL_USERS = "all_users"


class LifecycleEvent(StrEnum):
    REAUTHORIZATION_REQUIRED = "reauthorizationRequired"
    SUBSCRIPTION_REMOVED = "subscriptionRemoved"
    MISSED = "missed"


@dataclass(frozen=True)
class SubscriptionSpec:
    """A subscription the configuration asks for."""

    resource: str
    change_type: str
    purpose: WatchPurpose

    @property
    def key(self) -> str:
        # Resources hold "/", which Table keys forbid.
        return hashlib.sha256(self.resource.lower().encode()).hexdigest()[:40]

    @property
    def object_id(self) -> str | None:
        """The watched object's id for `users/{id}` and `groups/{id}`."""
        parts = self.resource.split("/")
        return parts[1] if len(parts) == 2 else None

    @property
    def max_lifetime(self) -> timedelta:
        return DIRECTORY_MAX_LIFETIME


@dataclass(frozen=True)
class GraphSubscription:
    """A subscription as Graph reports it."""

    id: str
    resource: str
    expires_at: datetime


@dataclass(frozen=True)
class SubscriptionRecord:
    """A stored subscription: the spec it serves, its Graph id ("" while being created), its
    expiry, and the clientState secret every notification must carry."""

    spec: SubscriptionSpec
    client_state: str
    subscription_id: str = ""
    expires_at: datetime | None = None
    claimed_at: datetime | None = None
    etag: str = ""


class GraphSubscriptions(Protocol):
    """Graph change notification subscriptions."""

    async def create(
        self,
        spec: SubscriptionSpec,
        client_state: str,
        notification_url: str,
        lifecycle_url: str | None,
        expires_at: datetime,
    ) -> GraphSubscription: ...

    async def get(self, subscription_id: str) -> GraphSubscription | None: ...

    async def renew(self, subscription_id: str, expires_at: datetime) -> GraphSubscription:
        """Raises PermanentError(status=404) when the subscription is gone."""
        ...

    async def delete(self, subscription_id: str) -> None: ...


class SubscriptionStore(Protocol):
    """Subscriptions and their secrets in table storage; writes are conditional (etag)."""

    async def get(self, key: str) -> SubscriptionRecord | None: ...

    async def by_subscription_id(self, subscription_id: str) -> SubscriptionRecord | None: ...

    async def by_subscription_ids(
        self, subscription_ids: Collection[str]
    ) -> dict[str, SubscriptionRecord]:
        """The stored records of those of `subscription_ids` (lower-case GUIDs) that are
        known, keyed by subscription id; one read whatever the number of ids."""
        ...

    async def claim(
        self,
        spec: SubscriptionSpec,
        client_state: str,
        at: datetime,
        current: SubscriptionRecord | None,
    ) -> SubscriptionRecord | None:
        """Mark the spec as being (re)created by this caller with a new secret; None when
        another caller changed or created the record first."""
        ...

    async def save(
        self, record: SubscriptionRecord, subscription_id: str, expires_at: datetime
    ) -> bool:
        """Store the Graph id and expiry unless the record changed since it was read."""
        ...


# The key of a user snapshot's creation time (ISO 8601, or None when Graph has none).
CREATED = "createdDateTime"


class WatchedDirectory(Protocol):
    """Reads of the objects a notification points at."""

    async def user_snapshot(self, user_id: str) -> dict[str, Any] | None:
        """The watched fields of a user, and its creation time under `CREATED`; None when the
        user no longer exists."""
        ...

    async def group_member_ids(self, group_id: str) -> list[str]: ...


class Snapshots(Protocol):
    """The last seen state of watched objects, to tell what changed."""

    async def get(self, kind: str, object_id: str) -> dict[str, Any] | None: ...

    async def put(self, kind: str, object_id: str, snapshot: dict[str, Any]) -> None: ...


class NotificationClaims(Protocol):
    """One row per notification handled, so a replayed or redelivered one is dropped."""

    async def claim(self, key: str) -> bool: ...

    async def release(self, key: str) -> None: ...


class ChangeNotice(BaseModel):
    """An accepted notification as it travels on the queue: checked, without its clientState."""

    model_config = ConfigDict(frozen=True)

    id: str
    subscription_id: str
    subscription_key: str
    purpose: WatchPurpose
    resource: str
    change_type: str = ""
    lifecycle_event: str = ""
    object_id: str = ""


class NotificationQueue(Protocol):
    async def send(self, notices: list[ChangeNotice]) -> None: ...

    async def drain_dead_letters(self, handler: DeadLetterHandler, max_count: int) -> int:
        """As `ActionQueue.drain_dead_letters`, for the notifications queue."""
        ...
