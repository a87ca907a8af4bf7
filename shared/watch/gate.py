"""The change notification webhook's work: check every notification against the subscription
it claims to come from, queue the good ones, and audit the rest. Nothing is processed here:
Graph wants an answer within 3 seconds."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.audit import AuditChain, canonical_json
from shared.errors import InvalidInput
from shared.models import Actor, AuditEntry, AuditEvent, is_guid
from shared.watch.ports import (
    ChangeNotice,
    LifecycleEvent,
    NotificationQueue,
    SubscriptionRecord,
    SubscriptionStore,
)

# Graph batches notifications; far more than it sends in one POST is an attack on the queue.
MAX_NOTIFICATIONS = 1000
MAX_CLIENT_STATE = 128
MAX_RESOURCE = 1024
# Validation tokens are opaque and short; anything far longer is not from Graph.
MAX_VALIDATION_TOKEN = 1024
# The change types Graph sends (subscription resource, changeType).
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
_LIFECYCLE_EVENTS = frozenset(str(e) for e in LifecycleEvent)
# A UTF-16 surrogate left alone by the JSON parser (valid JSON, "\ud800"): no UTF-8 encoding.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_RESOURCE_ID = re.compile(r"^(?:users|groups)/([0-9a-fA-F-]{36})$", re.IGNORECASE)
_SUBSCRIPTIONS_SHOWN = 10


class BatchTooLarge(InvalidInput):
    """More notifications in one request than Graph ever sends."""


def validation_token_problem(token: str) -> str | None:
    """Why a validation token is refused, or None. The token is echoed as text/plain, never
    interpreted, so only its size and printability are checked."""
    if not token:
        return "validationToken is empty"
    if len(token) > MAX_VALIDATION_TOKEN:
        return f"validationToken is longer than {MAX_VALIDATION_TOKEN} characters"
    if not token.isprintable():
        return "validationToken holds control characters"
    return None


@dataclass
class GateReport:
    accepted: list[ChangeNotice] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    subscriptions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted), "rejected": sum(self.rejected.values())}


def notice_key(item: dict[str, Any], receipt: str) -> str:
    """The key of one received notification: its content but the secret, and the receipt (one
    per webhook call). Graph sends no id or time of its own for directory changes, so two
    changes of the same object send identical notifications: a content-only key would drop the
    second as a duplicate. A notification Graph delivers again gets a new key and is processed
    again, which is harmless: the processor compares with the last seen state."""
    content = {k: v for k, v in item.items() if k != "clientState"}
    text = canonical_json(content) + "\n" + receipt
    return "ntf-" + hashlib.sha256(text.encode()).hexdigest()[:40]


class NotificationGate:
    def __init__(
        self,
        store: SubscriptionStore,
        queue: NotificationQueue,
        chain: AuditChain,
        tenant_id: str | None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._chain = chain
        self._tenant_id = (tenant_id or "").lower()

    async def accept(self, payload: object, lifecycle: bool) -> GateReport:
        """Queue the notifications that prove their origin; raises InvalidInput when the
        payload is no notification collection at all.

        `lifecycle` names the route the payload came to. Graph allows one URL for both kinds
        (lifecycleNotificationUrl may equal notificationUrl), so a notification carrying a
        `lifecycleEvent` is checked as a lifecycle notification on either route."""
        items = [_text_safe(item) for item in _items(payload)]
        receipt = uuid.uuid4().hex
        report = GateReport()
        records = await self._records(items)
        for item in items:
            problem = self._check(item, lifecycle, records)
            if problem is not None:
                report.rejected[problem] += 1
                sub = item.get("subscriptionId") if isinstance(item, dict) else None
                if isinstance(sub, str) and is_guid(sub) and sub not in report.subscriptions:
                    report.subscriptions.append(sub.lower())
                continue
            record = records[item["subscriptionId"].lower()]
            report.accepted.append(_notice(item, record, f"{receipt}:{len(report.accepted)}"))
        if report.accepted:
            await self._queue.send(report.accepted)
        if report.rejected:
            await self._chain.append(self._rejection(report, lifecycle))
        return report

    async def _records(self, items: list[Any]) -> Mapping[str, SubscriptionRecord]:
        """The stored subscriptions the items name, in one store read whatever their number:
        Graph wants an answer within 3 seconds, and a flood of unknown ids must not cost one
        table query each. Items failing the cheap checks name nothing worth reading."""
        wanted = {
            item["subscriptionId"].lower() for item in items if self._origin_problem(item) is None
        }
        if not wanted:
            return {}
        return await self._store.by_subscription_ids(wanted)

    def _origin_problem(self, item: object) -> str | None:
        """The checks that need no stored subscription."""
        if not isinstance(item, dict):
            return "not an object"
        subscription_id = item.get("subscriptionId")
        if not isinstance(subscription_id, str) or not is_guid(subscription_id):
            return "subscriptionId is not a GUID"
        # Live lifecycle notifications name the tenant `organizationId` and carry no tenantId
        # (msgraph-sdk-java#1551, msgraph-sdk-dotnet#3103), unlike the documented shape.
        tenant = item.get("tenantId")
        if tenant is None:
            tenant = item.get("organizationId")
        if not isinstance(tenant, str) or tenant.lower() != self._tenant_id:
            return "wrong tenantId"
        presented = item.get("clientState")
        if not isinstance(presented, str) or len(presented) > MAX_CLIENT_STATE:
            return "clientState missing"
        return None

    def _check(
        self, item: Any, lifecycle: bool, records: Mapping[str, SubscriptionRecord]
    ) -> str | None:
        problem = self._origin_problem(item)
        if problem is not None:
            return problem
        record = records.get(item["subscriptionId"].lower())
        if record is None:
            return "unknown subscription"
        presented: str = item["clientState"]
        if not hmac.compare_digest(presented.encode(), record.client_state.encode()):
            return "clientState mismatch"
        # A null lifecycleEvent is no lifecycle notification (serializers write absent as null).
        if lifecycle or item.get("lifecycleEvent") is not None:
            # Checked by type first: a list or an object is no event name (and no set key).
            event = item.get("lifecycleEvent")
            if not isinstance(event, str) or event not in _LIFECYCLE_EVENTS:
                return "unknown lifecycleEvent"
            return None
        change_type = item.get("changeType")
        if not isinstance(change_type, str) or not change_type:
            return "changeType missing"
        if change_type not in CHANGE_TYPES:
            return "unknown changeType"
        resource = item.get("resource")
        if not isinstance(resource, str) or not 0 < len(resource) <= MAX_RESOURCE:
            return "resource missing"
        return None

    def _rejection(self, report: GateReport, lifecycle: bool) -> AuditEntry:
        # Counts and subscription ids only: never the presented clientState or the body.
        route = "lifecycle" if lifecycle else "change"
        rejected = sum(report.rejected.values())
        return AuditEntry(
            event=AuditEvent.NOTIFICATION_REJECTED,
            actor=Actor(),
            reason=f"{rejected} {route} notification(s) failed the origin checks",
            result={
                "rejected": rejected,
                "accepted": len(report.accepted),
                "reasons": dict(sorted(report.rejected.items())),
                "subscriptions": report.subscriptions[:_SUBSCRIPTIONS_SHOWN],
            },
        )


def _text_safe(value: Any) -> Any:
    """`value` with every lone surrogate replaced by U+FFFD, so nothing downstream (hashing,
    the queue, the audit) meets a string that has no UTF-8 form. A replaced clientState no
    longer matches, so such a notification is refused like any other forgery."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_text_safe(v) for v in value]
    if isinstance(value, dict):
        return {_text_safe(k): _text_safe(v) for k, v in value.items()}
    return value


def _items(payload: object) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("value"), list):
        raise InvalidInput('a notification collection is an object with a "value" array')
    items: list[Any] = payload["value"]
    if len(items) > MAX_NOTIFICATIONS:
        raise BatchTooLarge(f"more than {MAX_NOTIFICATIONS} notifications in one request")
    return items


def _notice(item: dict[str, Any], record: SubscriptionRecord | None, receipt: str) -> ChangeNotice:
    assert record is not None  # checked by _check
    resource = item.get("resource")
    resource_text = resource if isinstance(resource, str) else record.spec.resource
    data = item.get("resourceData")
    # A lifecycle notification's resourceData, when present, is the subscription itself.
    lifecycle = item.get("lifecycleEvent") is not None
    object_id = data.get("id") if isinstance(data, dict) and not lifecycle else None
    if not (isinstance(object_id, str) and is_guid(object_id)):
        match = _RESOURCE_ID.match(resource_text)
        object_id = match[1] if match else record.spec.object_id
    return ChangeNotice(
        id=notice_key(item, receipt),
        subscription_id=record.subscription_id,
        subscription_key=record.spec.key,
        purpose=record.spec.purpose,
        resource=resource_text[:MAX_RESOURCE],
        change_type=str(item.get("changeType") or ""),
        lifecycle_event=str(item.get("lifecycleEvent") or ""),
        object_id=(object_id or "").lower(),
    )
