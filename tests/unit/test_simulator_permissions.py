"""The simulated tenant's identity platform and permission checks over raw HTTP: tokens carry
the grants as `roles`, each endpoint refuses a token without its permission in the real
service's words, and a removed grant bites with the next token."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from shared.permissions import EXCHANGE_AUDIENCE, GRAPH_AUDIENCE
from shared.simulator import SimulatedTenant, SimUser

ALICE = SimUser(
    id="5f1c2a3b-0d4e-4f5a-9b6c-7d8e9f0a1b2c",
    user_principal_name="alice@contoso.com",
    display_name="Alice Example",
)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant() as tenant:
        tenant.add_user(ALICE)
        yield tenant


def send(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode()


def token_request(sim: SimulatedTenant, **form: str) -> tuple[int, Any]:
    fields = {
        "grant_type": "client_credentials",
        "client_id": "m365-responder",
        "client_secret": sim.token,
        "scope": f"{GRAPH_AUDIENCE}/.default",
        **form,
    }
    body = urllib.parse.urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return send(sim.token_url, "POST", body, headers)


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def graph(sim: SimulatedTenant, path: str, token: str, method: str = "GET", body: Any = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return send(sim.base_url + path, method, data, headers)


def test_the_token_endpoint_issues_tokens_carrying_the_grants_of_their_audience(
    sim: SimulatedTenant,
) -> None:
    status, issued = token_request(sim)
    assert status == 200 and issued["token_type"] == "Bearer" and issued["expires_in"] > 3000
    graph_claims = claims(issued["access_token"])
    assert graph_claims["aud"] == GRAPH_AUDIENCE and graph_claims["idtyp"] == "app"
    assert "User.Read.All" in graph_claims["roles"]
    assert "Exchange.ManageAsApp" not in graph_claims["roles"]
    assert "7be44c8a-adaf-4e2a-84d6-ab2649e08a13" in graph_claims["wids"]

    _, exchange = token_request(sim, scope=f"{EXCHANGE_AUDIENCE}/.default")
    assert claims(exchange["access_token"])["roles"] == ["Exchange.ManageAsApp"]
    # The identity platform is not Graph: nothing of this is in the request log.
    assert sim.requests == []


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"scope": GRAPH_AUDIENCE}, 400, "invalid_scope"),
        ({"scope": "https://vault.azure.net/.default"}, 400, "invalid_scope"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
    ],
)
def test_the_token_endpoint_refuses_like_entra(
    sim: SimulatedTenant, form: dict[str, str], status: int, error: str
) -> None:
    got, body = token_request(sim, **form)
    assert (got, body["error"]) == (status, error)
    assert body["error_description"].startswith("AADSTS")


def test_a_token_for_another_audience_or_forged_is_refused(sim: SimulatedTenant) -> None:
    exchange_token = sim.app_token(EXCHANGE_AUDIENCE)
    status, body = graph(sim, f"/users/{ALICE.id}", exchange_token)
    assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationToken")
    forged = sim.issue_token(audience=GRAPH_AUDIENCE, upn=None, algorithm="none")
    assert graph(sim, f"/users/{ALICE.id}", forged)[0] == 401


def test_a_removed_grant_bites_with_the_next_token(sim: SimulatedTenant) -> None:
    before = sim.app_token()
    sim.revoke_grant("User.Read.All")
    after = sim.app_token()
    assert graph(sim, f"/users/{ALICE.id}", before)[0] == 200, "issued tokens keep their roles"
    status, body = graph(sim, f"/users/{ALICE.id}", after)
    assert status == 403
    assert body["error"]["code"] == "Authorization_RequestDenied"
    assert body["error"]["message"] == "Insufficient privileges to complete the operation."
    assert body["error"]["innerError"]["request-id"]


def test_each_family_refuses_in_its_own_words(sim: SimulatedTenant) -> None:
    sim.set_grants({"User.Read.All"})
    token = sim.app_token()
    status, body = graph(sim, "/identity/conditionalAccess/policies", token)
    assert (status, body["error"]["code"]) == (403, "AccessDenied")
    assert body["error"]["message"] == (
        "You cannot perform the requested operation, required scopes are missing in the token."
    )
    status, body = graph(sim, "/security/alerts_v2", token)
    assert (status, body["error"]["code"]) == (403, "Forbidden")
    assert body["error"]["message"].startswith("Missing application roles. API required roles: ")
    assert body["error"]["message"].endswith("application roles: User.Read.All.")
    subscription = {
        "changeType": "updated",
        "notificationUrl": "https://responder.example/api/notifications",
        "resource": "groups/0b000000-0000-4000-8000-000000000002",
        "expirationDateTime": "2030-01-01T00:00:00Z",
        "clientState": "c" * 64,
    }
    status, body = graph(sim, "/subscriptions", token, "POST", subscription)
    assert (status, body["error"]["code"]) == (403, "ExtensionError")
    assert body["error"]["message"].startswith(
        "Operation: Create; Exception: [Status Code: Forbidden"
    )


def test_writes_need_the_write_and_the_read_permission(sim: SimulatedTenant) -> None:
    location = {
        "@odata.type": "#microsoft.graph.ipNamedLocation",
        "displayName": "Blocked",
        "isTrusted": False,
        "ipRanges": [
            {"@odata.type": "#microsoft.graph.iPv4CidrRange", "cidrAddress": "185.220.101.0/24"}
        ],
    }
    sim.set_grants({"Policy.ReadWrite.ConditionalAccess"})
    token = sim.app_token()
    assert (
        graph(sim, "/identity/conditionalAccess/namedLocations", token, "POST", location)[0] == 403
    )
    sim.set_grants({"Policy.ReadWrite.ConditionalAccess", "Policy.Read.All"})
    token = sim.app_token()
    assert (
        graph(sim, "/identity/conditionalAccess/namedLocations", token, "POST", location)[0] == 201
    )


def test_exchange_needs_manage_as_app_and_a_role_for_the_cmdlet(sim: SimulatedTenant) -> None:
    url = f"{sim.exchange_base_url}/adminapi/beta/{sim.default_domain}/InvokeCommand"
    body = json.dumps({"CmdletInput": {"CmdletName": "Get-TransportRule", "Parameters": {}}})

    def invoke() -> tuple[int, Any]:
        token = sim.app_token(EXCHANGE_AUDIENCE)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        return send(url, "POST", body.encode(), headers)

    assert invoke()[0] == 200
    sim.set_exchange_roles([])
    status, answer = invoke()
    assert status == 401 and "User is not allowed to call Get-TransportRule" in json.dumps(answer)
    sim.set_exchange_roles(["Transport Rules"])
    sim.revoke_grant("Exchange.ManageAsApp")
    assert invoke()[0] == 401
    # A Graph token is no Exchange token, whatever it carries.
    headers = {"Authorization": f"Bearer {sim.app_token()}", "Content-Type": "application/json"}
    assert send(url, "POST", body.encode(), headers)[0] == 401
