"""The change notification gate: only notifications that prove their origin (known
subscription, its clientState, our tenant) reach the queue; the rest are audited without the
secret they presented."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.audit import AuditChain
from shared.errors import InvalidInput
from shared.models import AuditEvent
from shared.watch.gate import (
    MAX_NOTIFICATIONS,
    BatchTooLarge,
    NotificationGate,
    notice_key,
    validation_token_problem,
)
from shared.watch.ports import ChangeNotice, SubscriptionRecord, SubscriptionSpec, WatchPurpose
from tests.fakes import MemoryAuditStore

TENANT = "00000000-0000-0000-0000-0000000000aa"
SUBSCRIPTION = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
SECRET = "s3cret-client-state-" + "x" * 40
USER = "0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20"
SPEC = SubscriptionSpec(f"users/{USER}", "updated,deleted", WatchPurpose.PROTECTED_USER)


class FakeStore:
    def __init__(self) -> None:
        self.record = SubscriptionRecord(SPEC, SECRET, SUBSCRIPTION)
        self.lookups = 0

    async def by_subscription_ids(self, ids: Collection[str]) -> dict[str, SubscriptionRecord]:
        self.lookups += 1
        return {SUBSCRIPTION: self.record} if SUBSCRIPTION in ids else {}


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[ChangeNotice] = []

    async def send(self, notices: list[ChangeNotice]) -> None:
        self.sent.extend(notices)


def notification(**overrides: Any) -> dict[str, Any]:
    item = {
        "subscriptionId": SUBSCRIPTION,
        "subscriptionExpirationDateTime": "2026-12-20T11:00:00.0000000+01:00",
        "changeType": "updated",
        "resource": f"Users/{USER}",
        "resourceData": {"@odata.type": "#Microsoft.Graph.User", "id": USER},
        "clientState": SECRET,
        "tenantId": TENANT,
    }
    item.update(overrides)
    return item


@pytest.fixture
def parts() -> tuple[NotificationGate, FakeStore, FakeQueue, MemoryAuditStore]:
    store, queue, audit = FakeStore(), FakeQueue(), MemoryAuditStore()
    gate = NotificationGate(store, queue, AuditChain(audit), TENANT)  # type: ignore[arg-type]
    return gate, store, queue, audit


async def test_a_genuine_notification_is_queued_without_its_secret(parts: Any) -> None:
    gate, _, queue, audit = parts
    report = await gate.accept({"value": [notification()]}, lifecycle=False)
    assert report.as_dict() == {"accepted": 1, "rejected": 0}
    [notice] = queue.sent
    assert notice.object_id == USER and notice.purpose is WatchPurpose.PROTECTED_USER
    assert SECRET not in notice.model_dump_json()
    assert audit.records == {}


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"clientState": "guessed"}, "clientState mismatch"),
        ({"clientState": SECRET[:-1]}, "clientState mismatch"),
        ({"clientState": None}, "clientState missing"),
        ({"clientState": "x" * 500}, "clientState missing"),
        ({"subscriptionId": str(uuid.uuid4())}, "unknown subscription"),
        ({"subscriptionId": "'; drop table --"}, "subscriptionId is not a GUID"),
        ({"tenantId": str(uuid.uuid4())}, "wrong tenantId"),
        ({"tenantId": None}, "wrong tenantId"),
        ({"changeType": None}, "changeType missing"),
    ],
)
async def test_forged_notifications_are_refused_and_audited_without_the_secret(
    parts: Any, override: dict[str, Any], reason: str
) -> None:
    gate, _, queue, audit = parts
    report = await gate.accept({"value": [notification(**override)]}, lifecycle=False)
    assert report.accepted == [] and report.rejected == {reason: 1}
    assert queue.sent == []
    [record] = audit.records.values()
    assert record.entry.event is AuditEvent.NOTIFICATION_REJECTED
    assert record.entry.result["reasons"] == {reason: 1}
    presented = override.get("clientState")
    if isinstance(presented, str):
        assert presented not in record.body
    assert SECRET not in record.body


async def test_a_forged_notification_beside_genuine_ones_is_dropped_alone(parts: Any) -> None:
    gate, store, queue, audit = parts
    items = [notification(), notification(clientState="nope"), notification(changeType="deleted")]
    report = await gate.accept({"value": items}, lifecycle=False)
    assert report.as_dict() == {"accepted": 2, "rejected": 1}
    assert [n.change_type for n in queue.sent] == ["updated", "deleted"]
    assert store.lookups == 1  # one lookup per subscription, not per notification
    assert len(audit.records) == 1


async def test_lifecycle_notifications_need_a_known_event(parts: Any) -> None:
    gate, _, queue, _ = parts
    lifecycle = {k: v for k, v in notification().items() if k not in ("changeType", "resource")}
    report = await gate.accept(
        {"value": [{**lifecycle, "lifecycleEvent": "reauthorizationRequired"}]}, lifecycle=True
    )
    assert report.as_dict() == {"accepted": 1, "rejected": 0}
    assert queue.sent[0].lifecycle_event == "reauthorizationRequired"
    report = await gate.accept(
        {"value": [{**lifecycle, "lifecycleEvent": "selfDestruct"}]}, lifecycle=True
    )
    assert report.rejected == {"unknown lifecycleEvent": 1}


def lifecycle_notification(event: Any) -> dict[str, Any]:
    item = {k: v for k, v in notification().items() if k not in ("changeType", "resource")}
    return {**item, "lifecycleEvent": event}


async def test_lifecycle_notifications_at_the_change_url_are_handled_as_lifecycle(
    parts: Any,
) -> None:
    # lifecycleNotificationUrl may be the notificationUrl itself: the event must not be lost.
    gate, _, queue, _ = parts
    report = await gate.accept(
        {"value": [lifecycle_notification("reauthorizationRequired")]}, lifecycle=False
    )
    assert report.as_dict() == {"accepted": 1, "rejected": 0}
    [notice] = queue.sent
    assert notice.lifecycle_event == "reauthorizationRequired" and notice.change_type == ""


@pytest.mark.parametrize("route_is_lifecycle", [True, False])
@pytest.mark.parametrize(
    "event", [["reauthorizationRequired"], {"name": "missed"}, 7, "", "x" * 5000]
)
async def test_a_lifecycle_event_that_is_no_known_name_is_a_counted_rejection(
    parts: Any, event: Any, route_is_lifecycle: bool
) -> None:
    gate, _, queue, audit = parts
    report = await gate.accept(
        {"value": [lifecycle_notification(event)]}, lifecycle=route_is_lifecycle
    )
    assert report.rejected == {"unknown lifecycleEvent": 1} and queue.sent == []
    [record] = audit.records.values()
    assert record.entry.result["reasons"] == {"unknown lifecycleEvent": 1}


async def test_a_change_notification_with_a_null_lifecycle_event_is_a_change(
    parts: Any,
) -> None:
    gate, _, queue, _ = parts
    report = await gate.accept({"value": [notification(lifecycleEvent=None)]}, lifecycle=False)
    assert report.as_dict() == {"accepted": 1, "rejected": 0}
    assert queue.sent[0].change_type == "updated" and queue.sent[0].lifecycle_event == ""


async def test_a_change_notification_at_the_lifecycle_url_is_refused(parts: Any) -> None:
    gate, _, queue, _ = parts
    report = await gate.accept({"value": [notification()]}, lifecycle=True)
    assert report.rejected == {"unknown lifecycleEvent": 1} and queue.sent == []


async def test_a_thousand_unknown_subscriptions_cost_one_store_read(parts: Any) -> None:
    gate, store, queue, audit = parts
    items = [notification(subscriptionId=str(uuid.uuid4())) for _ in range(MAX_NOTIFICATIONS)]
    report = await gate.accept({"value": items}, lifecycle=False)
    assert report.rejected == {"unknown subscription": MAX_NOTIFICATIONS}
    assert store.lookups == 1 and queue.sent == []
    [record] = audit.records.values()
    assert record.entry.result["rejected"] == MAX_NOTIFICATIONS
    assert len(record.entry.result["subscriptions"]) == 10


@pytest.mark.parametrize(
    "override",
    [
        {"resource": f"Users/{USER}\ud800"},
        {"subscriptionExpirationDateTime": "\udfff"},
        {"resourceData": {"@odata.type": "#Microsoft.Graph.User\ud83d", "id": USER}},
        {"\ud800unknown": "field"},
    ],
)
async def test_lone_surrogates_become_replacement_characters(
    parts: Any, override: dict[str, Any]
) -> None:
    # Valid JSON that json.loads turns into strings with no UTF-8 form.
    body = json.loads(json.dumps({"value": [notification(**override)]}).replace("\\\\u", "\\u"))
    gate, _, queue, _ = parts
    report = await gate.accept(body, lifecycle=False)
    assert report.as_dict() == {"accepted": 1, "rejected": 0}
    [notice] = queue.sent
    notice.model_dump_json().encode()  # encodable: the queue can carry it
    assert notice.object_id == USER


async def test_a_lone_surrogate_in_the_client_state_is_a_mismatch_not_a_crash(
    parts: Any,
) -> None:
    gate, _, queue, audit = parts
    report = await gate.accept(
        {"value": [notification(clientState=SECRET[:-1] + "\ud800")]}, lifecycle=False
    )
    assert report.rejected == {"clientState mismatch": 1} and queue.sent == []
    [record] = audit.records.values()
    record.body.encode()


@pytest.mark.parametrize("change_type", ["x" * 100_000, "updated,deleted", "Updated", "\ud800"])
async def test_a_change_type_graph_never_sends_is_refused(parts: Any, change_type: str) -> None:
    gate, _, queue, _ = parts
    report = await gate.accept({"value": [notification(changeType=change_type)]}, lifecycle=False)
    assert report.rejected == {"unknown changeType": 1} and queue.sent == []


async def test_a_huge_batch_is_refused_before_any_lookup(parts: Any) -> None:
    gate, store, queue, _ = parts
    with pytest.raises(BatchTooLarge):
        await gate.accept({"value": [notification()] * (MAX_NOTIFICATIONS + 1)}, lifecycle=False)
    assert store.lookups == 0 and queue.sent == []


@pytest.mark.parametrize("payload", [[], {"value": "x"}, {"values": []}, None, "text"])
async def test_anything_but_a_notification_collection_is_invalid(
    parts: Any, payload: object
) -> None:
    gate, _, _, _ = parts
    with pytest.raises(InvalidInput):
        await gate.accept(payload, lifecycle=False)


def test_notification_keys_tell_receipts_apart_and_leave_the_secret_out() -> None:
    original = notification()
    assert notice_key(json.loads(json.dumps(original)), "r1") == notice_key(original, "r1")
    assert notice_key(notification(changeType="deleted"), "r1") != notice_key(original, "r1")
    # A second change of the same object sends the same body again: a new receipt, a new key.
    assert notice_key(original, "r2") != notice_key(original, "r1")
    # The secret is no part of the key, so the key reveals nothing about it.
    assert notice_key(notification(clientState="other"), "r1") == notice_key(original, "r1")


@pytest.mark.parametrize(
    ("token", "refused"),
    [
        ("Validation: Testing client application reachability", False),
        ("<script>alert(document.cookie)</script>", False),  # echoed as text/plain only
        ("", True),
        ("a" * 1025, True),
        ("line\r\nSet-Cookie: x=1", True),
    ],
)
def test_validation_tokens(token: str, refused: bool) -> None:
    assert (validation_token_problem(token) is not None) is refused


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=20), children, max_size=6)
        ),
        max_leaves=30,
    )
)
async def test_random_bodies_never_reach_the_queue_or_raise_anything_but_invalid_input(
    body: object,
) -> None:
    store, queue, audit = FakeStore(), FakeQueue(), MemoryAuditStore()
    gate = NotificationGate(store, queue, AuditChain(audit), TENANT)  # type: ignore[arg-type]
    for payload in (body, {"value": body if isinstance(body, list) else [body]}):
        try:
            await gate.accept(payload, lifecycle=False)
        except InvalidInput:
            pass
    assert queue.sent == []
