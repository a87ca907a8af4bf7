"""Hypothesis against the served app's webhooks (POST /api/alerts, /api/notifications and
/api/notifications/lifecycle) over loopback: whatever the body, no 5xx, and every refusal a
problem+json 4xx. Bounded here (FUZZ_BODY_EXAMPLES per test, default 60); `make fuzz` runs the
same tests with more."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drill.azurite import Azurite
from tests.served import Served, problems_of, served

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FUZZ_BODY_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples every run: a CI failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text as alert sources write it, with what breaks naive code: lone UTF-16 surrogates (valid
# JSON as \ud800 escapes), control characters, markup, very long values.
odd_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(["", " ", "\x00", "<script>", "1.2.3.4; Remove-TransportRule *", "ü" * 3]),
    st.integers(min_value=1_000, max_value=120_000).map(lambda n: "x" * n),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def either(*choices: Any) -> st.SearchStrategy[Any]:
    """One of the plausible values, or anything at all."""
    return st.one_of(st.sampled_from(choices), json_values)


entity = st.fixed_dictionaries(
    {"kind": either("user", "ip", "host", "mailbox")},
    optional={
        "user_id": either("5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01"),
        "upn": either("adele.vance@contoso.onmicrosoft.com"),
        "address": either("203.0.113.9", "185.220.101.0/24", "::1"),
        "roles": st.one_of(st.lists(either("compromised", "attacker"), max_size=3), json_values),
        "verdict": either("malicious", "suspicious"),
    },
)
generic_alert = st.fixed_dictionaries(
    {"id": either("fuzz-1"), "title": odd_text, "severity": either("high", "medium", "low")},
    optional={
        "source": either("generic"),
        "category": either("CredentialAccess", "AdminLockout", "Impact"),
        "incident_id": odd_text,
        "version": odd_text,
        "status": either("new", "resolved"),
        "entities": st.one_of(st.lists(entity, max_size=4), json_values),
    },
)
graph_alert = st.fixed_dictionaries(
    {
        "@odata.type": st.just("#microsoft.graph.security.alert"),
        "id": either("da637551227677560813_-961444813"),
        "title": odd_text,
        "lastUpdateDateTime": either("2026-11-30T10:00:00Z", "yesterday"),
    },
    optional={
        "severity": either("high"),
        "category": either("CredentialAccess"),
        "incidentId": odd_text,
        "evidence": json_values,
    },
)
sentinel_incident = st.fixed_dictionaries(
    {
        "objectSchemaType": st.just("Incident"),
        "object": st.fixed_dictionaries(
            {
                "properties": st.dictionaries(
                    st.sampled_from(
                        ["title", "severity", "status", "incidentNumber", "relatedEntities"]
                    ),
                    json_values,
                )
            },
            optional={"name": json_values, "id": json_values},
        ),
    },
    optional={"eventUniqueId": json_values, "workspaceId": json_values},
)
VALID_ALERT: dict[str, Any] = {
    "source": "generic",
    "id": "fuzz-valid",
    "title": "Token theft",
    "severity": "high",
    "category": "CredentialAccess",
    "entities": [
        {
            "kind": "user",
            "user_id": "5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01",
            "roles": ["compromised"],
        },
        {"kind": "ip", "address": "203.0.113.9", "roles": ["attacker"]},
    ],
}
alert_bodies = st.one_of(
    json_values,
    generic_alert,
    st.lists(generic_alert, max_size=3),
    graph_alert,
    sentinel_incident,
)
notification = st.fixed_dictionaries(
    {},
    optional={
        "subscriptionId": either("00000000-0000-4000-8000-000000000001"),
        "clientState": json_values,
        "tenantId": json_values,
        "changeType": either("updated", "created", "deleted"),
        "resource": either("users/5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01"),
        "lifecycleEvent": either("reauthorizationRequired", "subscriptionRemoved", "missed"),
        "subscriptionExpirationDateTime": json_values,
        "resourceData": json_values,
    },
)
notification_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"value": st.one_of(st.lists(notification, max_size=4), json_values)}),
)


@pytest.fixture(scope="module")
def app(azurite: Azurite) -> Iterator[Served]:
    with served(azurite) as running:
        yield running


def post(app: Served, route: str, body: bytes, headers: dict[str, str]) -> list[str]:
    response = app.http.post(f"/api/{route}", content=body, headers=headers)
    return problems_of(response)


def as_json(value: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes: valid JSON, as a sender sends it.
    return json.dumps(value).encode()


@FUZZ
@given(body=alert_bodies)
def test_the_alert_webhook_never_fails_on_a_body(app: Served, body: Any) -> None:
    headers = {**app.webhook, "Content-Type": "application/json"}
    assert not post(app, "alerts", as_json(body), headers)


@FUZZ
@example(changes={"title": "x\ud800"}, alert_id="surrogate-title")
@example(changes={"incident_id": "x" * 40_000}, alert_id="long-incident")
@example(changes={"version": "v" * 100_000}, alert_id="long-version")
@given(
    changes=st.dictionaries(
        st.sampled_from(["title", "incident_id", "version", "category", "provider", "id"]),
        odd_text,
        min_size=1,
        max_size=2,
    ),
    alert_id=st.uuids().map(str),
)
def test_odd_values_in_a_valid_alert_are_handled_or_refused(
    app: Served, changes: dict[str, Any], alert_id: str
) -> None:
    # These get past the shape checks into planning, the audit and the state table.
    body = {**VALID_ALERT, "id": alert_id, **changes}
    headers = {**app.webhook, "Content-Type": "application/json"}
    assert not post(app, "alerts", as_json(body), headers)


@FUZZ
@given(body=notification_bodies, lifecycle=st.booleans())
def test_the_notification_webhooks_never_fail_on_a_body(
    app: Served, body: Any, lifecycle: bool
) -> None:
    route = "notifications/lifecycle" if lifecycle else "notifications"
    assert not post(app, route, as_json(body), {"Content-Type": "application/json"})


@FUZZ
@given(
    raw=st.binary(max_size=300),
    kind=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=x"]),
    route=st.sampled_from(["alerts", "notifications", "notifications/lifecycle"]),
    # A query string cannot carry lone surrogates; anything else goes.
    token=st.none() | st.text(max_size=40) | st.just("x" * 2000),
)
def test_raw_bodies_content_types_and_validation_tokens_are_refused_cleanly(
    app: Served, raw: bytes, kind: str, route: str, token: str | None
) -> None:
    headers = {**app.webhook, "Content-Type": kind} if kind else dict(app.webhook)
    params = {} if token is None or route == "alerts" else {"validationToken": token}
    response = app.http.post(f"/api/{route}", content=raw, headers=headers, params=params)
    assert not problems_of(response)


API_ROUTES = [
    ("POST", "/api/actions"),
    ("GET", "/api/actions/act-00000000000000000000000000000000"),
    ("POST", "/api/actions/act-00000000000000000000000000000000/approve"),
    ("POST", "/api/actions/act-00000000000000000000000000000000/reject"),
    ("GET", "/api/audit"),
    ("GET", "/api/audit/export"),
    ("GET", "/api/audit/verify"),
]
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@FUZZ
@given(
    route=st.sampled_from(API_ROUTES),
    forged=st.sampled_from(["garbage", "none", "HS256", "expired", "audience", "issuer", "app"]),
    garbage=printable,
)
def test_a_bad_token_is_a_clean_401_or_403_on_every_api_route(
    app: Served, route: tuple[str, str], forged: str, garbage: str
) -> None:
    sim, audience = app.sim, "api://m365-responder"
    tokens = {
        "garbage": garbage,
        "none": sim.issue_token(audience=audience, roles=["Audit.Read"], algorithm="none"),
        "HS256": sim.issue_token(audience=audience, roles=["Audit.Read"], algorithm="HS256"),
        "expired": sim.issue_token(audience=audience, roles=["Audit.Read"], expires_in=-3600),
        "audience": sim.issue_token(audience="api://other", roles=["Audit.Read"]),
        "issuer": sim.issue_token(audience=audience, issuer="https://evil.example/v2.0"),
        "app": sim.issue_token(audience=audience, upn=None, app_id="c0ffee"),
    }
    method, path = route
    bearer = f"Bearer {tokens[forged]}".strip()  # a header value cannot end in a space
    headers = {"Authorization": bearer, "Content-Type": "application/json"}
    response = app.http.request(method, path, headers=headers, content=b"{}")
    assert response.status_code in (401, 403), (forged, method, path, response.status_code)
    assert not problems_of(response)
