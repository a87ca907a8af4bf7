"""Published Graph bodies replayed through the code that meets them in production: error
answers through the Graph adapter over real HTTP, change and lifecycle notifications through
the webhook functions and the queue processor. Each fixture names its source."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from drill.azurite import Azurite
from drill.host import LocalHost, registered_functions
from drill.serve import LocalApi
from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.graph import GraphDirectory, build_graph_client
from shared.adapters.graph_subscriptions import GraphWatch
from shared.adapters.notification_queue import InMemoryNotificationQueue
from shared.config import Settings
from shared.errors import PermanentError, TransientError
from shared.ingest import normalize_graph_alert
from shared.models import utcnow
from shared.simulator import SimulatedTenant
from shared.watch.ports import SubscriptionSpec, WatchPurpose
from tests.conftest import BREAK_GLASS, installed, settings_for

HERE = Path(__file__).parent
GROUP = "7d1c0b9e-4f3a-4e2b-9c8d-1a2b3c4d5e6f"


def fixture(path: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((HERE / path).read_text())
    assert loaded["source"].startswith("https://")
    return loaded


class _Canned(BaseHTTPRequestHandler):
    reply: dict[str, Any] = {}

    def _answer(self) -> None:
        body = json.dumps(self.reply["body"]).encode()
        self.send_response(self.reply["status"])
        for name, value in self.reply["headers"].items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[type[_Canned], str]]:
    """A loopback server answering every request with one fixture's status, headers, body."""
    handler = type("Handler", (_Canned,), {"reply": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1.0"
    finally:
        server.shutdown()
        server.server_close()


def graph_client(base_url: str) -> Any:
    settings = Settings.model_validate(
        {
            "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
            "GRAPH_BASE_URL": base_url,
            "RESPONDER_CREDENTIAL": "simulator",
            "SIMULATOR_TOKEN": "contract-token",
            "RESPONDER_QUEUE": "memory",
            "GRAPH_MAX_RETRIES": 0,
        }
    )
    return build_graph_client(settings, StaticTokenCredential("contract-token"))


async def test_400_for_created_on_users_is_permanent_with_the_body_request_id(
    canned: Any,
) -> None:
    handler, base_url = canned
    handler.reply = fixture("errors/400_subscription_created_on_users.json")
    spec = SubscriptionSpec("users", "created", WatchPurpose.ALL_USERS)
    with pytest.raises(PermanentError) as raised:
        await GraphWatch(graph_client(base_url)).create(
            spec, "state", "https://x.example/api/notifications", None, utcnow()
        )
    assert raised.value.status == 400 and raised.value.request_id == "xxx"
    assert "Invalid 'changeType' attribute: 'created'" in str(raised.value)


async def test_403_on_a_disable_is_permanent_with_the_body_request_id(canned: Any) -> None:
    handler, base_url = canned
    handler.reply = fixture("errors/403_authorization_request_denied.json")
    with pytest.raises(PermanentError) as raised:
        await GraphDirectory(graph_client(base_url)).set_account_enabled(BREAK_GLASS.id, False)
    assert raised.value.status == 403
    assert raised.value.request_id == "b1909fc0-aa5c-4b43-8a1f-xxxxxxxxxxxx"
    assert "Authorization_RequestDenied" in str(raised.value)


async def test_404_on_a_user_read_is_permanent_with_the_body_request_id(canned: Any) -> None:
    handler, base_url = canned
    handler.reply = fixture("errors/404_user_not_found.json")
    with pytest.raises(PermanentError) as raised:
        await GraphDirectory(graph_client(base_url)).get_user(BREAK_GLASS.id)
    assert raised.value.status == 404
    assert raised.value.request_id == "9b0df954-93b5-4de9-8b99-43c204a8aaf8"


async def test_429_is_transient_with_a_fractional_retry_after(canned: Any) -> None:
    handler, base_url = canned
    handler.reply = fixture("errors/429_throttled_fractional_retry_after.json")
    with pytest.raises(TransientError) as raised:
        await GraphDirectory(graph_client(base_url)).revoke_sign_in_sessions(BREAK_GLASS.id)
    assert raised.value.status == 429 and raised.value.retry_after == pytest.approx(2.128)
    assert raised.value.request_id == "94fb3b52-452a-4535-a601-69e0a90e3aa2"


@pytest.mark.parametrize(
    "variant",
    [
        {"innererror": {"requestId": "camel-1"}},
        {"innerError": {"requestId": "camel-2"}},
        {"innerError": {"request-id": "dashed-3"}},
    ],
)
async def test_the_request_id_is_read_from_every_spelling_of_the_inner_error(
    canned: Any, variant: dict[str, Any]
) -> None:
    handler, base_url = canned
    handler.reply = {
        "status": 403,
        "headers": {"Content-Type": "application/json"},
        "body": {"error": {"code": "Forbidden", "message": "no", **variant}},
    }
    with pytest.raises(PermanentError) as raised:
        await GraphDirectory(graph_client(base_url)).get_user(BREAK_GLASS.id)
    expected = next(iter(next(iter(variant.values())).values()))
    assert raised.value.request_id == expected


def _request(body: bytes) -> func.HttpRequest:
    return func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/notifications",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={},
        body=body,
    )


def _filled(body: dict[str, Any], values: dict[str, str]) -> bytes:
    text = json.dumps(body)
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text.encode()


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    [
        "notifications/lifecycle_documented_structure.json",
        "notifications/lifecycle_reauthorization_live_organization_id.json",
        "notifications/lifecycle_reauthorization_live_subscriptions_resource.json",
    ],
)
async def test_reauthorization_required_as_published_renews_the_subscription(
    sim: SimulatedTenant, azurite: Azurite, path: str
) -> None:
    case = fixture(path)
    sim.add_group(GROUP, "Tier 0 administrators")
    async with LocalApi(settings_for(sim, azurite)).serving() as base_url:
        settings = settings_for(
            sim,
            azurite,
            NOTIFICATION_URL=f"{base_url}/api/notifications?code=function-key",
            NOTIFICATION_TENANT_ID=sim.tenant_id,
            WATCHED_GROUPS=GROUP,
        )
        async with installed(settings) as services:
            await services.subscriptions.ensure()
            [live] = [s for s in sim.subscriptions if s["resource"] == f"groups/{GROUP}"]
            sim.set_subscription_expiry(live["id"], utcnow() + timedelta(hours=1))
            body = _filled(
                case["body"],
                {
                    "<subscription_guid>": live["id"],
                    "<tenant_guid>": sim.tenant_id,
                    "<secretClientState>": live["clientState"],
                },
            )
            function = registered_functions()[case["route"]].get_user_function()
            response = await function(_request(body))
            assert response.status_code == 202, response.get_body()
            assert json.loads(response.get_body()) == {"accepted": 1, "rejected": 0}
            queue = services.notification_queue
            assert isinstance(queue, InMemoryNotificationQueue)
            assert await LocalHost().pump(queue, "process_notification") == 1
            [renewed] = [s for s in sim.subscriptions if s["id"] == live["id"]]
            assert renewed["expirationDateTime"] > (utcnow() + timedelta(days=28)).isoformat()


@pytest.mark.integration
@pytest.mark.parametrize(
    "path",
    ["notifications/user_updated_published.json", "notifications/user_updated_with_offset.json"],
)
async def test_user_change_notifications_as_published_are_queued_for_that_user(
    sim: SimulatedTenant, azurite: Azurite, path: str
) -> None:
    case = fixture(path)
    settings = settings_for(sim, azurite, NOTIFICATION_TENANT_ID=sim.tenant_id)
    async with installed(settings) as services:
        spec = SubscriptionSpec(
            f"users/{BREAK_GLASS.id}", "updated,deleted", WatchPurpose.PROTECTED_USER
        )
        store = services.subscription_store
        claimed = await store.claim(spec, "published-client-state", utcnow(), None)
        assert claimed is not None
        subscription_id = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
        await store.save(claimed, subscription_id, utcnow() + timedelta(days=1))
        body = _filled(
            case["body"],
            {
                "<subscription_guid>": subscription_id,
                "<tenant_guid>": sim.tenant_id,
                "<secretClientState>": "published-client-state",
                "<user_guid>": BREAK_GLASS.id,
            },
        )
        response = await registered_functions()[case["route"]].get_user_function()(_request(body))
        assert response.status_code == 202
        queue = services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue) and len(queue) == 1
        delivery = queue.receive()
        assert delivery is not None
        notice = json.loads(delivery.body)
        assert notice["object_id"] == BREAK_GLASS.id.lower()
        assert notice["change_type"] == "updated" and notice["lifecycle_event"] == ""


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, Any] = {}
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        page = self.pages["second" if "$skip=1" in self.path else "first"]
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_alerts_v2_pages_as_graph_lists_them_are_read_to_the_end_and_normalized() -> None:
    case = fixture("alerts_v2/pages_newest_first_with_next_link.json")
    handler = type("Handler", (_Pages,), {"pages": {}, "paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1.0"
    handler.pages = json.loads(json.dumps(case["pages"]).replace("{base}", base_url))
    try:
        directory = GraphDirectory(graph_client(base_url))
        since = datetime(2021, 5, 1, tzinfo=UTC)
        pages = [page async for page in directory.alerts_updated_since(since)]
    finally:
        server.shutdown()
        server.server_close()
    assert [[a["id"] for a in page] for page in pages] == [
        ["da637551227677560813_-961444813"],
        ["da637551227677560813_-961444814"],
    ]
    first, second = handler.paths
    assert "%24count=true" in first or "$count=true" in first
    assert "lastUpdateDateTime%20ge%202021-05-01" in first
    assert second.endswith("$skip=1")
    alerts = [normalize_graph_alert(raw) for page in pages for raw in page]
    assert [(a.alert_id, str(a.severity), a.category) for a in alerts] == [
        ("da637551227677560813_-961444813", "low", "DefenseEvasion"),
        ("da637551227677560813_-961444814", "low", "DefenseEvasion"),
    ]
    assert alerts[0].updated_at == datetime(2021, 5, 2, 14, 19, 1, 326666, tzinfo=UTC)


@pytest.mark.integration
async def test_a_live_group_notification_is_queued_for_that_group(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    case = fixture("notifications/group_updated_live_sequence_number.json")
    settings = settings_for(sim, azurite, NOTIFICATION_TENANT_ID=sim.tenant_id)
    async with installed(settings) as services:
        spec = SubscriptionSpec(f"groups/{GROUP}", "updated", WatchPurpose.PRIVILEGED_GROUP)
        claimed = await services.subscription_store.claim(spec, "the-state", utcnow(), None)
        assert claimed is not None
        subscription_id = "d850b120-19bb-4291-b9c4-845ea04dd38d"  # as published
        await services.subscription_store.save(claimed, subscription_id, utcnow() + timedelta(1))
        body = _filled(
            case["body"],
            {
                "<subscription_guid>": subscription_id,
                "<tenant_guid>": sim.tenant_id,
                "<secretClientState>": "the-state",
                "<group_guid>": GROUP,
            },
        )
        response = await registered_functions()[case["route"]].get_user_function()(_request(body))
        assert response.status_code == 202
        queue = services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue)
        delivery = queue.receive()
        assert delivery is not None
        notice = json.loads(delivery.body)
        assert (notice["object_id"], notice["purpose"]) == (GROUP, "privileged_group")
