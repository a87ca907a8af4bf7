"""The change notification functions invoked as the host invokes them: the validation
handshake, forged and oversized posts, and messages the processor cannot read."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from drill.azurite import Azurite
from drill.host import registered_functions
from shared.adapters.notification_queue import InMemoryNotificationQueue
from shared.container import Container
from shared.models import AuditEvent, utcnow
from shared.simulator import SimulatedTenant
from shared.watch.ports import SubscriptionSpec, WatchPurpose
from tests.conftest import installed, settings_for

pytestmark = pytest.mark.integration

SUBSCRIPTION = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
GROUP = "7d1c0b9e-4f3a-4e2b-9c8d-1a2b3c4d5e6f"


def post(route: str, body: bytes, params: dict[str, str] | None = None) -> func.HttpRequest:
    return func.HttpRequest(
        method="POST",
        url=f"http://127.0.0.1/api/{route}",
        headers={"Content-Type": "application/json; charset=utf-8"},
        params=params or {},
        route_params={},
        body=body,
    )


async def call(function: str, req: func.HttpRequest) -> func.HttpResponse:
    response: func.HttpResponse = await registered_functions()[function].get_user_function()(req)
    return response


@pytest.mark.parametrize("function", ["notify_changes", "notify_lifecycle"])
@pytest.mark.parametrize(
    "token",
    ["Validation: Testing client application reachability", "<script>alert(1)</script>"],
)
async def test_the_validation_handshake_echoes_the_token_as_plain_text(
    function: str, token: str
) -> None:
    # No container is installed: the handshake touches nothing but the request.
    response = await call(function, post("notifications", b"", {"validationToken": token}))
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.get_body().decode() == token


async def test_an_absurd_validation_token_is_refused() -> None:
    response = await call(
        "notify_changes", post("notifications", b"", {"validationToken": "v" * 5000})
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert b"vvvv" not in response.get_body()


async def test_forged_notifications_get_403_and_an_audit_record(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    forged = {
        "value": [
            {
                "subscriptionId": "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
                "changeType": "updated",
                "resource": "Users/0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20",
                "clientState": "guess",
                "tenantId": "00000000-0000-0000-0000-0000000000aa",
            }
        ]
    }
    settings = settings_for(sim, azurite, NOTIFICATION_TENANT_ID=sim.tenant_id)
    async with installed(settings) as services:
        body = json.dumps(forged).encode()
        response = await call("notify_changes", post("notifications", body))
        assert response.status_code == 403
        records = [r async for r in services.audit_store.newest_first()]
        assert [r.entry.event for r in records] == [AuditEvent.NOTIFICATION_REJECTED]
        assert "guess" not in records[0].body
        queue = services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue) and len(queue) == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"value": [' + b",".join([b"{}"] * 1001) + b"]}", 413),
        (b'{"value": "nope"}', 400),
        (b"{not json", 400),
        (b"x" * 2_000_000, 413),
    ],
)
async def test_bad_posts_are_refused(services: Container, body: bytes, status: int) -> None:
    response = await call("notify_changes", post("notifications", body))
    assert response.status_code == status
    problem: dict[str, Any] = json.loads(response.get_body())
    assert problem["status"] == status


async def test_an_unreadable_queue_message_is_dropped(services: Container) -> None:
    message = ServiceBusMessage(
        body=b'{"id": 5}',
        message_id="m-1",
        content_type="application/json",
        delivery_count=1,
        application_properties={},
        user_properties={},
    )
    await registered_functions()["process_notification"].get_user_function()(message)
    assert [r async for r in services.audit_store.newest_first()] == []


@pytest.mark.parametrize("function", ["notify_changes", "notify_lifecycle"])
@pytest.mark.parametrize("event", [["reauthorizationRequired"], {"a": 1}, 3])
async def test_a_lifecycle_event_of_the_wrong_type_is_refused_not_a_500(
    sim: SimulatedTenant, azurite: Azurite, function: str, event: Any
) -> None:
    settings = settings_for(sim, azurite, NOTIFICATION_TENANT_ID=sim.tenant_id)
    async with installed(settings) as services:
        spec = SubscriptionSpec(f"groups/{GROUP}", "updated", WatchPurpose.PRIVILEGED_GROUP)
        store = services.subscription_store
        claimed = await store.claim(spec, "the-client-state", utcnow(), None)
        assert claimed is not None
        await store.save(claimed, SUBSCRIPTION, utcnow() + timedelta(days=1))
        item = {
            "subscriptionId": SUBSCRIPTION,
            "subscriptionExpirationDateTime": "2026-12-20T11:00:00.0000000+01:00",
            "tenantId": sim.tenant_id,
            "clientState": "the-client-state",
            "lifecycleEvent": event,
        }
        response = await call(
            function, post("notifications", json.dumps({"value": [item]}).encode())
        )
        assert response.status_code == 403
        records = [r async for r in services.audit_store.newest_first()]
        assert records[0].entry.result["reasons"] == {"unknown lifecycleEvent": 1}


async def test_lone_surrogates_in_a_notification_are_no_500(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    settings = settings_for(sim, azurite, NOTIFICATION_TENANT_ID=sim.tenant_id)
    async with installed(settings) as services:
        spec = SubscriptionSpec(f"groups/{GROUP}", "updated", WatchPurpose.PRIVILEGED_GROUP)
        store = services.subscription_store
        claimed = await store.claim(spec, "the-client-state", utcnow(), None)
        assert claimed is not None
        await store.save(claimed, SUBSCRIPTION, utcnow() + timedelta(days=1))
        good = {
            "subscriptionId": SUBSCRIPTION,
            "tenantId": sim.tenant_id,
            "clientState": "the-client-state",
            "changeType": "updated",
            "resource": f"Groups/{GROUP}LONE",
            "resourceData": {"id": GROUP},
            "extra": "LONE",
        }
        forged = {**good, "clientState": "xLONE", "resource": f"Groups/{GROUP}"}
        # Valid JSON escapes of lone UTF-16 surrogates, as an attacker would send them.
        body = json.dumps({"value": [good, forged]}).replace("LONE", "\\ud800")
        response = await call("notify_changes", post("notifications", body.encode()))
        assert response.status_code == 202
        assert json.loads(response.get_body()) == {"accepted": 1, "rejected": 1}
        queue = services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue) and len(queue) == 1
