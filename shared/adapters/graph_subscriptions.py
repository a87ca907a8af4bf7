"""Graph change notification subscriptions and the reads a notification needs, through
msgraph-sdk: the `GraphSubscriptions` and `WatchedDirectory` ports. Subscribing needs only the
watched resource's read permission."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph import GraphServiceClient
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

from shared.adapters.graph import _raise_typed, member_ids
from shared.errors import PermanentError
from shared.watch.ports import CREATED, GraphSubscription, SubscriptionSpec

WATCHED_USER_FIELDS = [
    "id",
    "userPrincipalName",
    "displayName",
    "accountEnabled",
    "createdDateTime",
]
T = TypeVar("T")


async def _unless_missing(call: Awaitable[T], what: str) -> T | None:
    """The call's result, or None when Graph answers 404; other errors typed."""
    try:
        return await call
    except Exception as exc:
        try:
            _raise_typed(exc, what)
        except PermanentError as error:
            if error.status == 404:
                return None
            raise


def _subscription(found: Subscription | None, what: str) -> GraphSubscription:
    if found is None or not found.id or found.expiration_date_time is None:
        raise PermanentError(f"{what}: Graph returned no subscription")
    return GraphSubscription(
        id=found.id, resource=found.resource or "", expires_at=found.expiration_date_time
    )


class GraphWatch:
    """Subscriptions (User.Read.All for users, GroupMember.Read.All for groups) and the
    changed objects' state (the same permissions)."""

    def __init__(self, client: GraphServiceClient) -> None:
        self._client = client

    async def create(
        self,
        spec: SubscriptionSpec,
        client_state: str,
        notification_url: str,
        lifecycle_url: str | None,
        expires_at: datetime,
    ) -> GraphSubscription:
        body = Subscription(
            change_type=spec.change_type,
            notification_url=notification_url,
            lifecycle_notification_url=lifecycle_url,
            resource=spec.resource,
            expiration_date_time=expires_at,
            client_state=client_state,
        )
        what = f"subscribe to {spec.resource}"
        try:
            created = await self._client.subscriptions.post(body)
        except Exception as exc:
            _raise_typed(exc, what)
        return _subscription(created, what)

    async def get(self, subscription_id: str) -> GraphSubscription | None:
        what = f"read subscription {subscription_id}"
        builder = self._client.subscriptions.by_subscription_id(subscription_id)
        found = await _unless_missing(builder.get(), what)
        return None if found is None else _subscription(found, what)

    async def renew(self, subscription_id: str, expires_at: datetime) -> GraphSubscription:
        what = f"renew subscription {subscription_id}"
        builder = self._client.subscriptions.by_subscription_id(subscription_id)
        try:
            renewed = await builder.patch(Subscription(expiration_date_time=expires_at))
        except Exception as exc:
            _raise_typed(exc, what)
        return _subscription(renewed, what)

    async def delete(self, subscription_id: str) -> None:
        try:
            await self._client.subscriptions.by_subscription_id(subscription_id).delete()
        except Exception as exc:
            _raise_typed(exc, f"delete subscription {subscription_id}")

    async def user_snapshot(self, user_id: str) -> dict[str, Any] | None:
        """Permission: User.Read.All."""
        query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
            select=WATCHED_USER_FIELDS
        )
        config = RequestConfiguration(query_parameters=query)
        found = await _unless_missing(
            self._client.users.by_user_id(user_id).get(request_configuration=config),
            f"read user {user_id}",
        )
        if found is None:
            return None
        return {
            "userPrincipalName": found.user_principal_name,
            "displayName": found.display_name,
            "accountEnabled": found.account_enabled,
            CREATED: (found.created_date_time.isoformat() if found.created_date_time else None),
        }

    async def group_member_ids(self, group_id: str) -> list[str]:
        """Direct members' object ids. Permission: GroupMember.Read.All."""
        return await member_ids(self._client, group_id)
