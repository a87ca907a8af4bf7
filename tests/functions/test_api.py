"""The engineers' and auditors' HTTP API, invoked as the host invokes it, with Entra tokens
issued by the simulated tenant and checked against its JWKS over HTTP."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drill.host import LocalHost, registered_functions
from shared.adapters.queue import InMemoryActionQueue
from shared.audit_export import verify_export
from shared.container import Container
from shared.identity import ROLE_ACT, ROLE_AUDIT_READ
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, API_AUDIENCE, BREAK_GLASS

pytestmark = pytest.mark.integration

ENGINEER = "oncall@contoso.onmicrosoft.com"


def call(
    function: str,
    method: str,
    route: str,
    token: str | None = None,
    body: Any = None,
    route_params: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> func.HttpRequest:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return func.HttpRequest(
        method=method,
        url=f"http://127.0.0.1/api/{route}",
        headers=headers,
        params={},
        route_params=route_params or {},
        body=raw if raw is not None else (b"" if body is None else json.dumps(body).encode()),
    )


async def invoke(function: str, req: func.HttpRequest) -> func.HttpResponse:
    response: func.HttpResponse = await registered_functions()[function].get_user_function()(req)
    return response


def token(sim: SimulatedTenant, *roles: str, **claims: Any) -> str:
    return sim.issue_token(audience=API_AUDIENCE, roles=roles, upn=ENGINEER, **claims)


def problem(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = json.loads(response.get_body())
    assert body["status"] == response.status_code and body["detail"]
    return body


def disable(user: str = ADELE.id, **extra: Any) -> dict[str, Any]:
    return {"kind": "disable_account", "target": user, "reason": "confirmed phishing", **extra}


async def test_an_engineer_disables_an_account_and_the_audit_names_them(
    services: Container, sim: SimulatedTenant
) -> None:
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", token(sim, ROLE_ACT), disable())
    )
    assert response.status_code == 202, response.get_body()
    accepted = json.loads(response.get_body())
    assert accepted["decision"] == "execute" and accepted["queued"] is True
    assert isinstance(services.queue, InMemoryActionQueue)
    await LocalHost().pump(services.queue)
    assert not sim.user(ADELE.id).account_enabled
    records = [r async for r in services.audit_store.newest_first()]
    assert {r.entry.actor.name for r in records} == {ENGINEER}
    assert {r.entry.actor.kind for r in records} == {"engineer"}

    state = await invoke(
        "get_action",
        call(
            "get_action",
            "GET",
            f"actions/{accepted['id']}",
            token(sim, ROLE_AUDIT_READ),
            route_params={"action_id": accepted["id"]},
        ),
    )
    assert state.status_code == 200
    assert json.loads(state.get_body())["state"] == "executed"


async def test_the_actor_comes_from_the_token_not_the_body(
    services: Container, sim: SimulatedTenant
) -> None:
    body = disable(requested_by={"kind": "engineer", "name": "ceo@contoso.com"})
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", token(sim, ROLE_ACT), body)
    )
    assert response.status_code == 400
    assert "requested_by" in problem(response)["detail"]


async def test_guards_apply_to_engineers_too(services: Container, sim: SimulatedTenant) -> None:
    response = await invoke(
        "request_action",
        call("request_action", "POST", "actions", token(sim, ROLE_ACT), disable(BREAK_GLASS.id)),
    )
    accepted = json.loads(response.get_body())
    assert response.status_code == 202
    assert accepted["decision"] == "refused" and "protected identity" in accepted["reason"]
    assert accepted["queued"] is False


async def test_the_same_request_id_returns_the_same_action(
    services: Container, sim: SimulatedTenant
) -> None:
    body = disable(request_id="ticket-4711-disable")
    first, again = [
        json.loads(
            (
                await invoke(
                    "request_action",
                    call("request_action", "POST", "actions", token(sim, ROLE_ACT), body),
                )
            ).get_body()
        )
        for _ in range(2)
    ]
    assert first["id"] == again["id"] and again["coalesced"] is True
    assert again["state"] == "queued" and "decision" not in again


async def test_a_repeated_request_id_with_another_body_reports_the_first_request(
    services: Container, sim: SimulatedTenant
) -> None:
    first = await _request(sim, disable(request_id="ticket-4712-disable", dry_run=True))
    response = await invoke(
        "request_action",
        call(
            "request_action",
            "POST",
            "actions",
            token(sim, ROLE_ACT),
            disable(request_id="ticket-4712-disable"),
        ),
    )
    assert response.status_code == 200
    again = json.loads(response.get_body())
    assert again["id"] == first["id"] and first["decision"] == "dry_run"
    assert again["coalesced"] is True and "decision" not in again


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        (None, 401),
        ({"expires_in": -600}, 401),
        ({"not_before_offset": 600}, 401),
        ({"audience": "api://someone-else"}, 401),
        ({"issuer": "https://login.microsoftonline.com/evil/v2.0"}, 401),
        ({"algorithm": "none"}, 401),
        ({"algorithm": "HS256"}, 401),
        ({"kid": "unknown-key"}, 401),
        ({"roles": ()}, 403),
        ({"roles": (ROLE_AUDIT_READ,)}, 403),
    ],
)
async def test_bad_tokens_are_refused_with_a_problem(
    services: Container, sim: SimulatedTenant, claims: dict[str, Any] | None, status: int
) -> None:
    if claims is None:
        bearer = None
    else:
        claims = dict(claims)
        roles = claims.pop("roles", (ROLE_ACT,))
        audience = claims.pop("audience", API_AUDIENCE)
        bearer = sim.issue_token(audience=audience, roles=roles, upn=ENGINEER, **claims)
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", bearer, disable())
    )
    assert response.status_code == status
    detail = problem(response)["detail"]
    if bearer:
        assert bearer not in detail
    assert isinstance(services.queue, InMemoryActionQueue) and len(services.queue) == 0


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"kind": "format_disk", "target": ADELE.id, "reason": "why not"}, "kind"),
        ({"kind": "disable_account", "target": "not a user", "reason": "x" * 5}, "target"),
        (
            {"kind": "block_ip", "target": "1.2.3.4; Remove-TransportRule *", "reason": "flood"},
            "target",
        ),
        ({"kind": "disable_account", "target": ADELE.id}, "reason"),
        (disable(ttl_minutes=60), "block_ip and activate_breakglass only"),
        (disable(request_id="../../etc"), "request_id"),
        ([1, 2, 3], "body"),
    ],
)
async def test_bad_bodies_are_a_400_that_says_why(
    services: Container, sim: SimulatedTenant, body: Any, detail: str
) -> None:
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", token(sim, ROLE_ACT), body)
    )
    assert response.status_code == 400
    assert detail in problem(response)["detail"]


async def test_audit_verification_needs_the_auditor_role(
    services: Container, sim: SimulatedTenant
) -> None:
    denied = await invoke(
        "verify_audit", call("verify_audit", "GET", "audit/verify", token(sim, ROLE_ACT))
    )
    assert denied.status_code == 403
    allowed = await invoke(
        "verify_audit", call("verify_audit", "GET", "audit/verify", token(sim, ROLE_AUDIT_READ))
    )
    assert allowed.status_code == 200
    assert json.loads(allowed.get_body())["verified"] is True


async def test_health_is_anonymous_and_reveals_nothing(services: Container) -> None:
    response = await invoke("health", call("health", "GET", "health"))
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"status": "ok"}


async def test_an_unknown_action_is_a_404(services: Container, sim: SimulatedTenant) -> None:
    response = await invoke(
        "get_action",
        call(
            "get_action",
            "GET",
            "actions/act-nope",
            token(sim, ROLE_ACT),
            route_params={"action_id": "act-nope"},
        ),
    )
    assert response.status_code == 404


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=30),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
async def test_random_bodies_never_cause_a_500(
    services: Container, sim: SimulatedTenant, body: bytes
) -> None:
    bearer = token(sim, ROLE_ACT)
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", bearer, raw=body)
    )
    assert response.status_code in (202, 400)


async def _request(sim: SimulatedTenant, body: dict[str, Any]) -> dict[str, Any]:
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", token(sim, ROLE_ACT), body)
    )
    assert response.status_code == 202, response.get_body()
    accepted: dict[str, Any] = json.loads(response.get_body())
    return accepted


def audit_call(function: str, route: str, sim: SimulatedTenant, **params: str) -> func.HttpRequest:
    return func.HttpRequest(
        method="GET",
        url=f"http://127.0.0.1/api/{route}",
        headers={"Authorization": f"Bearer {token(sim, ROLE_AUDIT_READ)}"},
        params=params,
        route_params={},
        body=b"",
    )


async def test_auditors_page_through_a_target_newest_first(
    services: Container, sim: SimulatedTenant
) -> None:
    for n in range(5):
        await _request(sim, disable(reason=f"ticket {n}", request_id=f"ticket-000{n}-x"))
    await _request(sim, disable(BREAK_GLASS.id, reason="should be refused"))
    seen: list[int] = []
    continuation: str | None = None
    while True:
        params = {"target": ADELE.id, "limit": "2"}
        if continuation:
            params["continuation"] = continuation
        response = await invoke("query_audit", audit_call("query_audit", "audit", sim, **params))
        assert response.status_code == 200, response.get_body()
        page = json.loads(response.get_body())
        seen += [int(r["seq"]) for r in page["records"]]
        assert all(r["target"] == ADELE.id for r in page["records"])
        continuation = page["continuation"]
        if not continuation:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"continuation": "not-a-token"}, "continuation"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_audit_queries_are_a_400(
    services: Container, sim: SimulatedTenant, params: dict[str, str], detail: str
) -> None:
    response = await invoke("query_audit", audit_call("query_audit", "audit", sim, **params))
    assert response.status_code == 400
    assert detail in problem(response)["detail"]


async def test_a_tampered_continuation_token_is_refused(
    services: Container, sim: SimulatedTenant
) -> None:
    for n in range(3):
        await _request(sim, disable(reason=f"ticket {n}", request_id=f"tamper-000{n}"))
    first = json.loads(
        (
            await invoke(
                "query_audit", audit_call("query_audit", "audit", sim, limit="1", target=ADELE.id)
            )
        ).get_body()
    )
    token_text = first["continuation"]
    forged = token_text[:-2] + ("AA" if not token_text.endswith("AA") else "BB")
    response = await invoke(
        "query_audit",
        audit_call("query_audit", "audit", sim, limit="1", target=ADELE.id, continuation=forged),
    )
    assert response.status_code == 400


async def test_the_csv_export_defuses_spreadsheet_formulas(
    services: Container, sim: SimulatedTenant
) -> None:
    await _request(sim, disable(reason='=HYPERLINK("http://evil.example","click")'))
    response = await invoke(
        "export_audit", audit_call("export_audit", "audit/export", sim, format="csv")
    )
    assert response.status_code == 200 and response.mimetype == "text/csv"
    text = response.get_body().decode()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    lines = await invoke(
        "export_audit", audit_call("export_audit", "audit/export", sim, format="jsonl")
    )
    # The header, one record, the end line.
    assert len(lines.get_body().decode().strip().splitlines()) == 3
    bad = await invoke(
        "export_audit", audit_call("export_audit", "audit/export", sim, format="xls")
    )
    assert bad.status_code == 400


async def test_the_export_is_read_page_by_page_following_the_link_header(
    services: Container, sim: SimulatedTenant
) -> None:
    for n in range(5):
        await _request(sim, disable(reason=f"ticket {n}", request_id=f"export-000{n}"))
    params = {"format": "jsonl", "limit": "2", "target": ADELE.id}
    lines: list[str] = []
    sizes: list[str] = []
    links: list[str] = []
    while True:
        response = await invoke(
            "export_audit", audit_call("export_audit", "audit/export", sim, **params)
        )
        assert response.status_code == 200, response.get_body()
        assert response.mimetype == "application/x-ndjson"
        lines += response.get_body().decode().splitlines(keepends=True)
        sizes.append(response.headers["X-Audit-Records"])
        link = response.headers.get("Link")
        if link is None:
            break
        links.append(link)
        match = re.fullmatch(r'<(/api/audit/export\?[^>]+)>; rel="next"', link)
        assert match, link
        params = dict(parse_qsl(urlsplit(match.group(1)).query))
    assert sizes == ["2", "2", "1"] and len(links) == 2
    verdict = verify_export(lines)
    assert verdict.ok and verdict.records_checked == 5 and not verdict.whole_trail

    first_link = dict(parse_qsl(urlsplit(links[0][1:].split(">")[0]).query))
    payload, signature = first_link["continuation"].split(".")
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    forged = dict(first_link, continuation=f"{payload}.{flipped}")
    refused = await invoke(
        "export_audit", audit_call("export_audit", "audit/export", sim, **forged)
    )
    assert refused.status_code == 400
    assert refused.mimetype == "application/problem+json"
    assert "continuation" in json.loads(refused.get_body())["detail"]


async def test_the_openapi_document_is_served_anonymously(services: Container) -> None:
    response = await invoke("openapi", call("openapi", "GET", "openapi.json"))
    assert response.status_code == 200
    assert json.loads(response.get_body())["openapi"] == "3.1.0"


async def test_an_oversized_body_is_refused(services: Container, sim: SimulatedTenant) -> None:
    body = disable(reason="x" * 900, pad="y" * services.settings.max_body_bytes)
    response = await invoke(
        "request_action", call("request_action", "POST", "actions", token(sim, ROLE_ACT), body)
    )
    assert response.status_code == 413


ROUTES = [
    ("request_action", "POST", "actions"),
    ("get_action", "GET", "actions/{action_id}"),
    ("approve_action", "POST", "actions/{action_id}/approve"),
    ("reject_action", "POST", "actions/{action_id}/reject"),
    ("list_approvals", "GET", "approvals"),
    ("query_audit", "GET", "audit"),
    ("export_audit", "GET", "audit/export"),
    ("verify_audit", "GET", "audit/verify"),
]
ALL_ROLES = ("Responder.Act", "Responder.Approve", "Audit.Read")


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(ROUTES),
    body=st.binary(max_size=200),
    params=st.dictionaries(
        st.sampled_from(["since", "until", "target", "limit", "continuation", "format", "x"]),
        st.text(max_size=40),
        max_size=4,
    ),
    action_id=st.text(max_size=40),
)
async def test_random_input_at_every_route_never_causes_a_500(
    services: Container,
    sim: SimulatedTenant,
    route: tuple[str, str, str],
    body: bytes,
    params: dict[str, str],
    action_id: str,
) -> None:
    function, method, path = route
    request = func.HttpRequest(
        method=method,
        url=f"http://127.0.0.1/api/{path}",
        headers={
            "Authorization": f"Bearer {sim.issue_token(audience=API_AUDIENCE, roles=ALL_ROLES)}",
            "Content-Type": "application/json",
        },
        params=params,
        route_params={"action_id": action_id},
        body=body if method == "POST" else b"",
    )
    response = await invoke(function, request)
    assert response.status_code < 500, (function, response.get_body()[:200])


@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01T00:00:00"},
        {"until": "9999-12-31T23:59:59"},
        {"limit": "²"},
    ],
)
async def test_out_of_range_query_values_are_a_400(
    services: Container, sim: SimulatedTenant, params: dict[str, str]
) -> None:
    response = await invoke("query_audit", audit_call("query_audit", "audit", sim, **params))
    assert response.status_code == 400
