"""The URLs of Graph requests, expanded once from their builders' templates
(shared/adapters/graph_urls.py): the same text std-uritemplate gives, for the templates of every
request builder the adapters call and arbitrary values."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from msgraph import GraphServiceClient
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from stduritemplate import StdUriTemplate

from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.graph import build_graph_client
from shared.adapters.graph_urls import expand, settle
from shared.config import Settings

BASE = "https://graph.microsoft.com/v1.0"


def _client() -> GraphServiceClient:
    settings = Settings.model_validate(
        {
            "GRAPH_BASE_URL": BASE,
            "RESPONDER_CREDENTIAL": "simulator",
            "SIMULATOR_TOKEN": "unused",
            "RESPONDER_QUEUE": "memory",
            "RESPONDER_TABLES_ENDPOINT": "https://account.table.core.windows.net",
        }
    )
    return build_graph_client(settings, StaticTokenCredential("unused"))


def _templates() -> list[str]:
    """The templates of the request builders the adapters call (shared/adapters/graph.py,
    graph_subscriptions.py)."""
    client = _client()
    user = client.users.by_user_id("u")
    access = client.identity.conditional_access
    builders: list[Any] = [
        user,
        user.revoke_sign_in_sessions,
        user.transitive_member_of.graph_group,
        client.role_management.directory.role_assignments,
        client.groups.by_group_id("g").members,
        client.security.alerts_v2,
        access.policies,
        access.policies.by_conditional_access_policy_id("p"),
        access.named_locations,
        access.named_locations.by_named_location_id("n"),
        client.subscriptions,
        client.subscriptions.by_subscription_id("s"),
    ]
    return sorted({b.url_template for b in builders})


TEMPLATES = _templates()
_NAMES = re.compile(r"[{,]([+?]?)([A-Za-z0-9_.%]+)")

text = st.text(max_size=12)
scalar = st.one_of(st.none(), text, st.booleans(), st.integers(-(10**6), 10**6))
value = st.one_of(scalar, st.lists(st.one_of(text, st.booleans(), st.integers()), max_size=3))
base = st.one_of(
    st.just(BASE),
    st.just("http://127.0.0.1:8443/v1.0"),
    st.text(min_size=1, max_size=20),
    st.text(st.characters(max_codepoint=127), min_size=1, max_size=20),
)


def test_every_template_the_adapters_use_is_expanded_here_not_handed_back() -> None:
    from shared.adapters.graph_urls import _compiled

    assert len(TEMPLATES) >= 10
    assert all(_compiled(t) is not None for t in TEMPLATES), "all three kinds of expression"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TEMPLATES), st.data(), base)
def test_the_expansion_is_std_uritemplates(template: str, data: Any, baseurl: str) -> None:
    names = [name for _, name in _NAMES.findall(template)]
    values = {name: data.draw(value, label=name) for name in names}
    values["baseurl"] = baseurl
    assert expand(template, values) == StdUriTemplate.expand(template, dict(values))


def test_what_is_not_expanded_here_is_left_to_std_uritemplate() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("{+base}/x", {"base": "https://h/a%20b%zz"}),  # pct-encoded triplets pass through
        ("/x{/seg}", {"seg": "a"}),  # another operator
        ("/x{?list*}", {"list": ["a", "b"]}),  # explode modifier
        ("/x{?at}", {"at": 1.5}),  # a value of another type
        ("/x{?map}", {"map": {"a": "b"}}),
        ("/x{?pair}", {"pair": ("a", "b")}),  # std-uritemplate refuses a tuple
    ]
    for template, values in cases:
        try:
            expected = StdUriTemplate.expand(template, dict(values))
        except ValueError as refused:
            with pytest.raises(ValueError, match=re.escape(str(refused))):
                expand(template, values)
        else:
            assert expand(template, values) == expected


def test_a_request_is_given_its_url_once_and_its_builder_stays_usable() -> None:
    client = _client()
    builder = client.users.by_user_id("adele.vance@contoso.de")
    query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
        select=["id", "accountEnabled"]
    )
    config: RequestConfiguration[Any] = RequestConfiguration(query_parameters=query)
    request = builder.to_get_request_information(config)
    request.path_parameters = {**request.path_parameters, "baseurl": BASE}
    expected = request.url
    request = builder.to_get_request_information(config)
    settle(request, BASE)
    assert (
        request.url
        == expected
        == (f"{BASE}/users/adele.vance%40contoso.de?%24select=id,accountEnabled")
    )
    assert request.path_parameters == {} and request.query_parameters == {}
    settle(request, BASE)
    assert request.url == expected, "settled twice (a request sent again), the same URL"
    assert builder.path_parameters["user%2Did"] == "adele.vance@contoso.de"
    again = builder.to_get_request_information(config)
    settle(again, BASE)
    assert again.url == expected

    followed = RequestInformation(Method.GET)
    followed.url = f"{BASE}/users?$skiptoken=abc"
    settle(followed, BASE)
    assert followed.url == f"{BASE}/users?$skiptoken=abc"
