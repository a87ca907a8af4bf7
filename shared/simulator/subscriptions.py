"""Graph change notification subscriptions and groups as the simulated tenant keeps them.

Creating a subscription performs Graph's validation handshake against its notificationUrl (and
lifecycleNotificationUrl) with a real HTTP POST; expiry is enforced (41,760 minutes at most for
users and groups). Changes made through the simulator are delivered to matching subscriptions
by a background thread, as Graph delivers them: asynchronously, one POST per batch.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from shared.simulator.state import JsonObject, format_timestamp, parse_timestamp

logger = logging.getLogger(__name__)

MAX_LIFETIME = timedelta(minutes=41_760)
VALIDATION_TIMEOUT_S = 10.0
DELIVERY_TIMEOUT_S = 10.0
_CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
# Users and groups support only `updated` and `deleted` (subscription resource type, changeType);
# a new user or group is announced as `updated`.
_DIRECTORY_CHANGE_TYPES = frozenset({"updated", "deleted"})
# Lifecycle notifications for users and groups: only reauthorizationRequired (the others are sent
# for Outlook and Teams resources alone).
_DIRECTORY_LIFECYCLE_EVENTS = frozenset({"reauthorizationRequired"})


def _is_directory(resource: str) -> bool:
    """`users`, `groups`, `users/{id}`, `/groups/{id}`, ... (any case)."""
    return resource.strip("/").split("/")[0].lower() in ("users", "groups")


class SubscriptionError(Exception):
    """A refused subscription request; the server answers it in Graph's error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """One POST the simulator made to a webhook, and the status it got (0: no answer)."""

    url: str
    body: JsonObject
    status: int


def _post(url: str, body: bytes, timeout: float) -> tuple[int, bytes, str]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, b"", ""


def _with_query(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={quote(value, safe='')}"


def validate_endpoint(url: str) -> bool:
    """Graph's handshake: POST ?validationToken=..., expect 200 text/plain echoing it."""
    token = "Validation: Testing client application reachability for subscription Request-Id: "
    token += str(uuid.uuid4())
    status, body, content_type = _post(
        _with_query(url, "validationToken", token), b"", VALIDATION_TIMEOUT_S
    )
    return status == 200 and content_type.startswith("text/plain") and body.decode() == token


class SubscriptionStore:
    """Subscriptions, groups, and the delivery thread posting notifications."""

    def __init__(self, tenant_id: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._tenant_id = tenant_id
        self._clock = clock
        self._lock = threading.Lock()
        self._subscriptions: dict[str, JsonObject] = {}
        self._groups: dict[str, JsonObject] = {}
        self._outbox: queue.Queue[tuple[str, JsonObject] | None] = queue.Queue()
        self._deliveries: list[Delivery] = []
        self._worker: threading.Thread | None = None

    # --- subscriptions ---------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> JsonObject:
        resource = body.get("resource")
        url = body.get("notificationUrl")
        lifecycle_url = body.get("lifecycleNotificationUrl")
        change_type = body.get("changeType")
        client_state = body.get("clientState")
        if not isinstance(resource, str) or not resource:
            raise SubscriptionError(400, "InvalidRequest", "resource is required.")
        if not isinstance(url, str) or not url.startswith(("https://", "http://127.0.0.1")):
            raise SubscriptionError(400, "InvalidRequest", "notificationUrl must be https.")
        if not isinstance(change_type, str) or not set(change_type.split(",")) <= _CHANGE_TYPES:
            raise SubscriptionError(400, "InvalidRequest", "Invalid changeType.")
        if _is_directory(resource):
            for kind in change_type.split(","):
                if kind not in _DIRECTORY_CHANGE_TYPES:
                    raise SubscriptionError(
                        400, "InvalidRequest", f"Invalid 'changeType' attribute: '{kind}'."
                    )
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > 128
        ):
            raise SubscriptionError(400, "InvalidRequest", "clientState exceeds 128 characters.")
        expires = self._expiry(body)
        if not validate_endpoint(url) or (
            isinstance(lifecycle_url, str) and not validate_endpoint(lifecycle_url)
        ):
            raise SubscriptionError(
                400, "ValidationError", "Subscription validation request failed."
            )
        subscription_id = str(uuid.uuid4())
        subscription = {
            "id": subscription_id,
            "resource": resource,
            "changeType": change_type,
            "notificationUrl": url,
            "lifecycleNotificationUrl": lifecycle_url if isinstance(lifecycle_url, str) else None,
            "clientState": client_state,
            "expirationDateTime": format_timestamp(expires),
            "applicationId": "00000000-0000-0000-0000-00000000a0b1",
            "creatorId": "00000000-0000-0000-0000-00000000c0b1",
        }
        with self._lock:
            self._subscriptions[subscription_id] = subscription
            return copy.deepcopy(subscription)

    def _expiry(self, body: Mapping[str, Any]) -> datetime:
        value = body.get("expirationDateTime")
        try:
            expires = parse_timestamp(value) if isinstance(value, str) else None
        except ValueError:
            expires = None
        if expires is None:
            raise SubscriptionError(400, "InvalidRequest", "expirationDateTime is required.")
        now = self._clock()
        if expires <= now or expires > now + MAX_LIFETIME:
            raise SubscriptionError(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {int(MAX_LIFETIME.total_seconds() // 60)} "
                "minutes in the future.",
            )
        return expires

    def get(self, subscription_id: str) -> JsonObject:
        with self._lock:
            return copy.deepcopy(self._live(subscription_id))

    def update(self, subscription_id: str, body: Mapping[str, Any]) -> JsonObject:
        expires = self._expiry(body)
        with self._lock:
            subscription = self._live(subscription_id)
            subscription["expirationDateTime"] = format_timestamp(expires)
            return copy.deepcopy(subscription)

    def delete(self, subscription_id: str) -> None:
        with self._lock:
            self._live(subscription_id)
            del self._subscriptions[subscription_id.lower()]

    def all(self) -> list[JsonObject]:
        with self._lock:
            return [copy.deepcopy(s) for s in self._subscriptions.values() if self._active(s)]

    def _live(self, subscription_id: str) -> JsonObject:
        found = self._subscriptions.get(subscription_id.lower())
        if found is None or not self._active(found):
            raise SubscriptionError(
                404, "ResourceNotFound", f"The object was not found: {subscription_id}."
            )
        return found

    def _active(self, subscription: JsonObject) -> bool:
        return parse_timestamp(subscription["expirationDateTime"]) > self._clock()

    # --- groups ----------------------------------------------------------------------------

    def add_group(self, group_id: str, name: str, role_assignable: bool = False) -> None:
        with self._lock:
            self._groups[group_id.lower()] = {
                "id": group_id,
                "displayName": name,
                "isAssignableToRole": role_assignable,
                "members": [],
                "owners": [],
            }

    def groups_of(self, member_id: str) -> list[JsonObject]:
        """The groups `member_id` belongs to (without their member lists)."""
        wanted = member_id.lower()
        with self._lock:
            return [
                {k: v for k, v in group.items() if k not in ("members", "owners")}
                for group in self._groups.values()
                if wanted in (m.lower() for m in group["members"])
            ]

    def groups_owned_by(self, owner_id: str) -> list[JsonObject]:
        """The groups `owner_id` owns (without their member and owner lists)."""
        wanted = owner_id.lower()
        with self._lock:
            return [
                {k: v for k, v in group.items() if k not in ("members", "owners")}
                for group in self._groups.values()
                if wanted in (o.lower() for o in group["owners"])
            ]

    def add_owner(self, group_id: str, user_id: str) -> None:
        self.group(group_id)
        with self._lock:
            owners = self._groups[group_id.lower()]["owners"]
            if user_id not in owners:
                owners.append(user_id)

    def group(self, group_id: str) -> JsonObject:
        with self._lock:
            found = self._groups.get(group_id.lower())
            if found is None:
                raise SubscriptionError(
                    404, "Request_ResourceNotFound", f"Resource '{group_id}' does not exist."
                )
            return copy.deepcopy(found)

    def add_member(self, group_id: str, user_id: str) -> None:
        self.group(group_id)
        with self._lock:
            members = self._groups[group_id.lower()]["members"]
            if user_id not in members:
                members.append(user_id)

    # --- delivery --------------------------------------------------------------------------

    def notify(self, resource: str, change_type: str, resource_data: JsonObject) -> int:
        """Queue a change notification for every live subscription watching `resource`;
        returns how many were queued."""
        wanted = resource.lower()
        matching = [
            s
            for s in self.all()
            if change_type in s["changeType"].split(",")
            and (s["resource"].lower() == wanted or (s["resource"].lower() == wanted.split("/")[0]))
        ]
        for subscription in matching:
            item = {
                "subscriptionId": subscription["id"],
                "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                "changeType": change_type,
                "resource": resource,
                "resourceData": resource_data,
                "clientState": subscription["clientState"],
                "tenantId": self._tenant_id,
            }
            self.send(subscription["notificationUrl"], {"value": [item]})
        return len(matching)

    def lifecycle(self, subscription_id: str, event: str) -> None:
        """Queue a lifecycle notification; `subscriptionRemoved` also removes the subscription.
        ValueError for an event Graph never sends for the subscription's resource."""
        subscription = self.get(subscription_id)
        if _is_directory(subscription["resource"]) and event not in _DIRECTORY_LIFECYCLE_EVENTS:
            raise ValueError(
                f"Graph sends no {event} lifecycle notification for {subscription['resource']}"
            )
        item = {
            "subscriptionId": subscription["id"],
            "subscriptionExpirationDateTime": subscription["expirationDateTime"],
            "tenantId": self._tenant_id,
            "clientState": subscription["clientState"],
            "lifecycleEvent": event,
        }
        if event == "subscriptionRemoved":
            self.delete(subscription_id)
        url = subscription["lifecycleNotificationUrl"] or subscription["notificationUrl"]
        self.send(url, {"value": [item]})

    def send(self, url: str, body: JsonObject) -> None:
        """Queue one POST of `body` to `url` for the delivery thread."""
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._deliver_forever, name="sim-notifications", daemon=True
                )
                self._worker.start()
        self._outbox.put((url, body))

    def wait_for_deliveries(self) -> list[Delivery]:
        """Block until every queued notification was posted; returns all deliveries so far."""
        self._outbox.join()
        with self._lock:
            return list(self._deliveries)

    def stop(self) -> None:
        if self._worker is not None:
            self._outbox.put(None)
            self._worker.join()

    def _deliver_forever(self) -> None:
        while True:
            job = self._outbox.get()
            try:
                if job is None:
                    return
                url, body = job
                status, _, _ = _post(url, json.dumps(body).encode(), DELIVERY_TIMEOUT_S)
                with self._lock:
                    self._deliveries.append(Delivery(url, body, status))
            finally:
                self._outbox.task_done()
