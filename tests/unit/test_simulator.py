"""The simulated tenant over real HTTP: plain urllib for the wire format, msgraph-sdk for fit."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any
from urllib.parse import quote

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user import User
from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import (
    Alerts_v2RequestBuilder,
)

from shared.simulator import Fault, SimulatedTenant, SimUser
from tests.conftest import sdk_client

# The SDK's generated request builders warn about their own deprecated classes on import.
pytestmark = pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning")

ALICE = SimUser(
    id="5f1c2a3b-0d4e-4f5a-9b6c-7d8e9f0a1b2c",
    user_principal_name="alice@contoso.com",
    display_name="Alice Example",
)
BASE_TIME = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
# urllib would otherwise route 127.0.0.1 through any proxy set in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant() as tenant:
        tenant.add_user(ALICE)
        yield tenant


def call(
    sim: SimulatedTenant,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = "sim-token",
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, Any]:
    """Send one request; `path` is relative to the Graph base URL, or absolute."""
    url = path if path.startswith("http") else sim.base_url + path
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=10) as response:
            raw = response.read()
            status, response_headers = response.status, response.headers
    except urllib.error.HTTPError as error:
        raw = error.read()
        status, response_headers = error.code, error.headers
    return status, response_headers, json.loads(raw) if raw else None


def assert_graph_error(body: Any, code: str) -> None:
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["innerError"]["request-id"]
    assert body["error"]["innerError"]["date"]


def alert(index: int) -> dict[str, Any]:
    updated = BASE_TIME + timedelta(seconds=index)
    return {
        "id": f"alert-{index:04d}",
        "title": f"Suspicious sign-in {index}",
        "severity": "high",
        "lastUpdateDateTime": updated.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
    }


def test_requests_without_the_bearer_token_are_rejected(sim: SimulatedTenant) -> None:
    for token in (None, "wrong-token"):
        status, headers, body = call(sim, "GET", f"/users/{ALICE.id}", token=token)
        assert status == 401
        assert headers["request-id"]
        assert_graph_error(body, "InvalidAuthenticationToken")


def test_get_user_by_id_ignores_select(sim: SimulatedTenant) -> None:
    status, headers, body = call(sim, "GET", f"/users/{ALICE.id}?$select=id,accountEnabled&x=1")

    assert status == 200
    assert headers["request-id"]
    assert body["@odata.context"].endswith("/$metadata#users/$entity")
    assert body["id"] == ALICE.id
    assert body["userPrincipalName"] == ALICE.user_principal_name
    assert body["displayName"] == ALICE.display_name
    assert body["accountEnabled"] is True


def test_get_user_by_url_encoded_upn_case_insensitively(sim: SimulatedTenant) -> None:
    status, _, body = call(sim, "GET", "/users/" + quote("ALICE@contoso.com", safe=""))

    assert status == 200
    assert body["id"] == ALICE.id
    assert sim.requests == [("GET", "/users/ALICE@contoso.com")]


def test_unknown_user_is_404_on_every_user_route(sim: SimulatedTenant) -> None:
    missing = "/users/nobody@contoso.com"
    for method, path, body in (
        ("GET", missing, None),
        ("PATCH", missing, b'{"accountEnabled": false}'),
        ("POST", missing + "/revokeSignInSessions", None),
    ):
        status, _, answer = call(sim, method, path, body)
        assert status == 404
        assert_graph_error(answer, "Request_ResourceNotFound")
    with pytest.raises(KeyError):
        sim.user("nobody@contoso.com")


def test_patch_updates_the_account(sim: SimulatedTenant) -> None:
    patch = b'{"accountEnabled": false, "displayName": "Alice (contained)"}'
    # Properties beyond accountEnabled need User.ReadWrite.All, which the responder never holds.
    sim.set_grants(sim.grants | {"User.ReadWrite.All"})

    status, _, body = call(sim, "PATCH", f"/users/{ALICE.id}", patch)

    assert (status, body) == (204, None)
    user = sim.user(ALICE.user_principal_name)
    assert user.account_enabled is False
    assert user.display_name == "Alice (contained)"


@pytest.mark.parametrize(
    "patch",
    [b"{not json", b"[]", b'{"accountEnabled": "false"}', b'{"displayName": 3}', b'{"x": 1}'],
)
def test_patch_rejects_bad_bodies(sim: SimulatedTenant, patch: bytes) -> None:
    status, _, body = call(sim, "PATCH", f"/users/{ALICE.id}", patch)

    assert status == 400
    assert_graph_error(body, "Request_BadRequest")
    assert sim.user(ALICE.id).account_enabled is True


@pytest.mark.parametrize("action", ["revokeSignInSessions", "microsoft.graph.revokeSignInSessions"])
def test_revoke_sign_in_sessions(sim: SimulatedTenant, action: str) -> None:
    before = datetime.now(UTC)

    status, _, body = call(sim, "POST", f"/users/{ALICE.id}/{action}")

    assert status == 200
    assert body["value"] is True
    assert body["@odata.context"].endswith("#Edm.Boolean")
    user = sim.user(ALICE.id)
    assert user.revocations == 1
    assert user.sign_in_sessions_revoked_at is not None
    assert user.sign_in_sessions_revoked_at >= before


def test_client_request_id_is_echoed(sim: SimulatedTenant) -> None:
    _, headers, _ = call(sim, "GET", f"/users/{ALICE.id}", headers={"client-request-id": "abc"})
    assert headers["client-request-id"] == "abc"

    _, headers, body = call(sim, "GET", "/users/x", headers={"client-request-id": "def"})
    assert headers["client-request-id"] == "def"
    assert body["error"]["innerError"]["client-request-id"] == "def"


def test_unknown_routes_are_404(sim: SimulatedTenant) -> None:
    for method, path in (("GET", "/groups"), ("DELETE", f"/users/{ALICE.id}")):
        status, _, body = call(sim, method, path)
        assert status == 404
        assert_graph_error(body, "UnknownRoute")

    status, _, body = call(sim, "GET", sim.base_url.removesuffix("/v1.0") + "/beta/users")
    assert status == 404
    assert_graph_error(body, "UnknownRoute")


def test_alerts_page_newest_first_through_skip_next_links(sim: SimulatedTenant) -> None:
    # List alerts_v2: the most recent alerts at the top; $count, $filter, $skip and $top.
    indexes = list(range(250))
    random.Random(7).shuffle(indexes)
    for index in indexes:
        sim.add_alert(alert(index))
    since = quote("lastUpdateDateTime ge 2024-05-01T10:00:00Z")

    url = f"/security/alerts_v2?$filter={since}&$top=100&$count=true"
    seen: list[str] = []
    page_sizes: list[int] = []
    counts: list[int] = []
    while url:
        status, _, body = call(sim, "GET", url)
        assert status == 200
        page_sizes.append(len(body["value"]))
        counts.append(body["@odata.count"])
        seen.extend(item["id"] for item in body["value"])
        url = body.get("@odata.nextLink", "")
        assert not url or (f"$skip={len(seen)}" in url and url.startswith(sim.base_url))

    assert page_sizes == [100, 100, 50] and counts == [250, 250, 250]
    assert seen == [f"alert-{index:04d}" for index in reversed(range(250))]


def test_an_alert_moving_onto_a_page_already_read_is_skipped(sim: SimulatedTenant) -> None:
    # $skip counts positions afresh: an alert whose update is listed late (its
    # lastUpdateDateTime older than the newest) moves from an unread page onto one already
    # read, and a client following nextLink never sees it.
    for index in range(10):
        sim.add_alert(alert(index))
    _, _, first = call(sim, "GET", "/security/alerts_v2?$top=5")
    assert [i["id"] for i in first["value"]] == [f"alert-{i:04d}" for i in (9, 8, 7, 6, 5)]
    sim.add_alert({**alert(2), "lastUpdateDateTime": "2024-05-01T10:00:07.5000000Z"})
    _, _, second = call(sim, "GET", first["@odata.nextLink"])
    assert [i["id"] for i in second["value"]] == [f"alert-{i:04d}" for i in (5, 4, 3, 1, 0)]


def test_an_alert_arriving_between_pages_repeats_one(sim: SimulatedTenant) -> None:
    for index in range(10, 20):
        sim.add_alert(alert(index))
    _, _, first = call(sim, "GET", "/security/alerts_v2?$top=5")
    sim.add_alert(alert(30))
    _, _, second = call(sim, "GET", first["@odata.nextLink"])
    assert [i["id"] for i in second["value"]][0] == first["value"][-1]["id"]


def test_alert_filter_gt_excludes_and_ge_includes_the_boundary(sim: SimulatedTenant) -> None:
    for index in range(5):
        sim.add_alert(alert(index))
    boundary = "2024-05-01T10:00:02.0000000Z"

    _, _, after = call(
        sim, "GET", "/security/alerts_v2?$filter=" + quote(f"lastUpdateDateTime gt {boundary}")
    )
    _, _, from_ = call(
        sim, "GET", "/security/alerts_v2?$filter=" + quote(f"lastUpdateDateTime ge {boundary}")
    )
    _, _, everything = call(sim, "GET", "/security/alerts_v2")

    assert [item["id"] for item in after["value"]] == ["alert-0004", "alert-0003"]
    assert [item["id"] for item in from_["value"]] == ["alert-0004", "alert-0003", "alert-0002"]
    assert len(everything["value"]) == 5
    assert everything["@odata.context"].endswith("#security/alerts_v2")


@pytest.mark.parametrize(
    "query",
    [
        "$filter=" + quote("lastUpdateDateTime eq 2024-05-01T10:00:00Z"),
        "$filter=" + quote("createdDateTime gt 2024-05-01T10:00:00Z"),
        "$filter=" + quote("lastUpdateDateTime gt yesterday"),
        "$filter=" + quote("lastUpdateDateTime gt 2024-05-01T10:00:00Z and status eq 'new'"),
        "$top=0",
        "$top=2001",
        "$orderby=" + quote("lastUpdateDateTime desc"),
        "$orderby=" + quote("lastUpdateDateTime asc"),
        "$skiptoken=not-a-token",
        "$skip=-1",
        "$count=yes",
    ],
)
def test_alert_queries_it_does_not_understand_are_400(sim: SimulatedTenant, query: str) -> None:
    status, _, body = call(sim, "GET", "/security/alerts_v2?" + query)

    assert status == 400
    assert_graph_error(body, "BadRequest")


def test_throttling_fault_is_used_up_after_its_times(sim: SimulatedTenant) -> None:
    sim.add_fault(
        Fault(method="GET", path_pattern=r"^/users/", status=429, retry_after="1", times=2)
    )

    answers = [call(sim, "GET", f"/users/{ALICE.id}") for _ in range(3)]

    for status, headers, body in answers[:2]:
        assert status == 429
        assert headers["Retry-After"] == "1"
        assert_graph_error(body, "TooManyRequests")
    assert answers[2][0] == 200
    assert sim.requests == [("GET", f"/users/{ALICE.id}")] * 3


def test_faults_only_hit_matching_requests_and_can_be_cleared(sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(method="POST", status=503, times=None))

    assert call(sim, "GET", f"/users/{ALICE.id}")[0] == 200
    for _ in range(2):
        status, _, body = call(sim, "POST", f"/users/{ALICE.id}/revokeSignInSessions")
        assert status == 503
        assert_graph_error(body, "ServiceUnavailable")
    sim.clear_faults()
    assert call(sim, "POST", f"/users/{ALICE.id}/revokeSignInSessions")[0] == 200
    assert sim.user(ALICE.id).revocations == 1


def test_unauthenticated_requests_do_not_use_up_faults(sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(status=503))

    assert call(sim, "GET", f"/users/{ALICE.id}", token=None)[0] == 401
    assert call(sim, "GET", f"/users/{ALICE.id}")[0] == 503


def test_slow_fault_still_answers(sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(status=0, delay_s=0.2))

    status, _, body = call(sim, "GET", f"/users/{ALICE.id}")

    assert status == 200
    assert body["id"] == ALICE.id


def test_request_log_can_be_reset(sim: SimulatedTenant) -> None:
    call(sim, "GET", f"/users/{ALICE.id}?$select=id")
    call(sim, "POST", f"/users/{ALICE.id}/revokeSignInSessions")
    assert sim.requests == [
        ("GET", f"/users/{ALICE.id}"),
        ("POST", f"/users/{ALICE.id}/revokeSignInSessions"),
    ]

    sim.reset_requests()

    assert sim.requests == []


def test_invalid_faults_and_duplicate_users_are_refused(sim: SimulatedTenant) -> None:
    with pytest.raises(ValueError):
        Fault(status=200)
    with pytest.raises(ValueError):
        Fault(times=0)
    with pytest.raises(ValueError):
        sim.add_user(SimUser(id="other", user_principal_name="Alice@Contoso.com", display_name="A"))
    with pytest.raises(ValueError):
        sim.add_alert({"id": "a-1"})
    with pytest.raises(ValueError):
        sim.add_alert({"id": "a-1", "lastUpdateDateTime": "yesterday"})


def test_msgraph_sdk_contains_a_user_over_the_wire(sim: SimulatedTenant) -> None:
    async def scenario() -> None:
        client, http_client = sdk_client(sim)
        async with http_client:
            user = await client.users.by_user_id(ALICE.id).get()
            assert user is not None
            assert user.user_principal_name == ALICE.user_principal_name
            assert user.account_enabled is True

            await client.users.by_user_id(ALICE.id).patch(User(account_enabled=False))
            revoked = await client.users.by_user_id(
                ALICE.user_principal_name
            ).revoke_sign_in_sessions.post()
            assert revoked is not None and revoked.value is True

            with pytest.raises(ODataError) as missing:
                await client.users.by_user_id("nobody@contoso.com").get()
            assert missing.value.response_status_code == 404
            assert missing.value.error is not None
            assert missing.value.error.code == "Request_ResourceNotFound"

    asyncio.run(scenario())

    user = sim.user(ALICE.id)
    assert user.account_enabled is False
    assert user.revocations == 1
    assert sim.requests == [
        ("GET", f"/users/{ALICE.id}"),
        ("PATCH", f"/users/{ALICE.id}"),
        ("POST", f"/users/{ALICE.user_principal_name}/revokeSignInSessions"),
        ("GET", "/users/nobody@contoso.com"),
    ]


def test_msgraph_sdk_pages_alerts_and_retries_throttling(sim: SimulatedTenant) -> None:
    for index in range(6):
        sim.add_alert(alert(index))
    sim.add_fault(Fault(method="GET", path_pattern="alerts_v2", status=429, retry_after="1"))

    async def scenario() -> list[str]:
        client, http_client = sdk_client(sim)
        query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(
            filter="lastUpdateDateTime gt 2024-05-01T10:00:00Z", top=2
        )
        config = RequestConfiguration(query_parameters=query)
        ids: list[str] = []
        async with http_client:
            page = await client.security.alerts_v2.get(request_configuration=config)
            while page is not None:
                ids.extend(item.id for item in page.value or [] if item.id)
                if not page.odata_next_link:
                    break
                page = await client.security.alerts_v2.with_url(page.odata_next_link).get()
        return ids

    ids = asyncio.run(scenario())

    assert ids == [f"alert-{index:04d}" for index in range(5, 0, -1)]
    # The throttled attempt, its retry, then two more pages.
    assert sim.requests == [("GET", "/security/alerts_v2")] * 4


def test_a_fault_with_a_rate_hits_only_that_share_and_spares_the_rest(
    sim: SimulatedTenant,
) -> None:
    sim.seed_faults(11)
    sim.add_fault(
        Fault(path_pattern=r"^/users/", status=429, retry_after="1", times=None, rate=0.2)
    )
    sim.add_fault(Fault(path_pattern=r"^/users/", status=503, times=None, rate=0.5))

    statuses = [call(sim, "GET", f"/users/{ALICE.id}")[0] for _ in range(200)]

    throttled, unavailable = statuses.count(429), statuses.count(503)
    # Seeded: the same draws every run. About 20 % throttled, then half the rest 503.
    assert 20 <= throttled <= 60 and 50 <= unavailable <= 110
    assert statuses.count(200) == 200 - throttled - unavailable
    assert sim.faults_applied == {"429": throttled, "503": unavailable}
    with pytest.raises(ValueError):
        Fault(rate=0)
    with pytest.raises(ValueError):
        Fault(rate=1.5)


def test_a_lost_response_is_carried_out_but_never_answered(sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(method="PATCH", status=0, drop_response=True))

    body = json.dumps({"accountEnabled": False}).encode()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(sim, "PATCH", f"/users/{ALICE.id}", body)

    assert not sim.user(ALICE.id).account_enabled
    assert sim.faults_applied == {"lost_response": 1}
    with pytest.raises(ValueError):
        Fault(status=503, drop_response=True)


def test_the_write_log_shows_every_write_and_whether_it_changed_anything(
    sim: SimulatedTenant,
) -> None:
    sim.add_fault(Fault(method="PATCH", status=503))
    disable = json.dumps({"accountEnabled": False}).encode()
    assert call(sim, "PATCH", f"/users/{ALICE.id}", disable)[0] == 503
    assert sim.writes == [], "a request failed by a fault wrote nothing"

    for _ in range(2):
        assert call(sim, "PATCH", f"/users/{ALICE.id}", disable)[0] == 204
    assert call(sim, "POST", f"/users/{ALICE.id}/revokeSignInSessions")[0] == 200
    # Properties beyond accountEnabled need User.ReadWrite.All, which the responder never holds.
    sim.set_grants(sim.grants | {"User.ReadWrite.All"})
    rename = json.dumps({"displayName": "Alice E."}).encode()
    assert call(sim, "PATCH", f"/users/{ALICE.id}", rename)[0] == 204

    assert [(w.kind, w.target, w.changed) for w in sim.writes] == [
        ("disable", ALICE.id, True),
        ("disable", ALICE.id, False),
        ("revoke", ALICE.id, True),
    ]
