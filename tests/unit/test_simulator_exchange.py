"""The simulated tenant's Exchange admin API and named locations, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from msgraph.generated.models.i_pv4_cidr_range import IPv4CidrRange
from msgraph.generated.models.ip_named_location import IpNamedLocation

from shared.simulator import RULE_SIZE_LIMIT, Fault, SimulatedTenant, rule_size
from tests.conftest import sdk_client

# The SDK's generated request builders warn about their own deprecated classes on import.
pytestmark = pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning")

# urllib would otherwise route 127.0.0.1 through any proxy set in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LOCATIONS = "/identity/conditionalAccess/namedLocations"
IPV4 = "#microsoft.graph.iPv4CidrRange"
IPV6 = "#microsoft.graph.iPv6CidrRange"


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant(named_location_writes_per_second=None) as tenant:
        yield tenant


def send_raw(
    url: str,
    method: str,
    body: Any = None,
    *,
    token: str | None = "sim-token",
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def send(
    url: str,
    method: str,
    body: Any = None,
    *,
    token: str | None = "sim-token",
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, Any]:
    status, answered, raw = send_raw(url, method, body, token=token, headers=headers)
    return status, answered, json.loads(raw) if raw else None


def invoke_url(sim: SimulatedTenant, tenant: str | None = None) -> str:
    return f"{sim.exchange_base_url}/adminapi/beta/{tenant or sim.tenant_id}/InvokeCommand"


def invoke(
    sim: SimulatedTenant,
    cmdlet: str,
    parameters: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    token: str | None = "sim-token",
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, Any]:
    body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters or {}}}
    return send(url or invoke_url(sim), "POST", body, token=token, headers=headers)


NOT_FOUND = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"


def assert_exchange_error(
    body: Any, code: str, *reason_parts: str, message: str = "Invalid Operation"
) -> str:
    """Check the admin API's envelope as live tenants send it (tests/contracts/exchange) and
    return the reason, which is never at the top level."""
    error = body["error"]
    assert error["code"] == code
    assert error["message"] == message
    detail: str = error["details"][0]["message"]
    error_id, exception_type, reason = detail.split("|", 2)
    internal = error["innererror"]["internalexception"]
    if exception_type == NOT_FOUND:
        # The cmdlet's exception is only in details; internally it is the invocation wrapper.
        assert error_id == "Ex6F9304"
        assert internal["type"].endswith("DirectInvokeCmdletExecutionException")
    else:
        assert error_id == ""
        assert internal["message"] == reason
        assert internal["type"] == exception_type
    assert (
        error["innererror"]["type"] == "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"
    )
    assert error["@adminapi.warnings"] == []
    for part in reason_parts:
        assert part in reason
    return reason


def assert_graph_error(body: Any, code: str) -> str:
    assert body["error"]["code"] == code
    assert body["error"]["innerError"]["request-id"]
    message: str = body["error"]["message"]
    return message


def block_rule(name: str, *ranges: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "SenderIpRanges": list(ranges or ["203.0.113.7"]), **extra}


def ip_location(name: str, *cidrs: str, trusted: bool = False) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.ipNamedLocation",
        "displayName": name,
        "isTrusted": trusted,
        "ipRanges": [
            {"@odata.type": IPV6 if ":" in cidr else IPV4, "cidrAddress": cidr} for cidr in cidrs
        ],
    }


def test_new_get_set_remove_transport_rule(sim: SimulatedTenant) -> None:
    status, _, created = invoke(
        sim,
        "New-TransportRule",
        {
            "Name": "Block 203.0.113.7",
            "SenderIpRanges": ["203.0.113.7", "198.51.100.0/24"],
            "Comments": "incident 42",
            "Mode": "Enforce",
            "RejectMessageEnhancedStatusCode": "5.7.900",
            "RejectMessageReasonText": "Blocked by incident response",
            "StopRuleProcessing": True,
        },
    )
    assert status == 200
    assert created["@odata.context"].endswith("$metadata#Collection(Exchange.GenericHashTable)")
    [rule] = created["value"]
    assert rule["Name"] == rule["Identity"] == "Block 203.0.113.7"
    assert uuid.UUID(rule["Guid"])
    assert (rule["Priority"], rule["State"], rule["Mode"]) == (0, "Enabled", "Enforce")
    assert rule["SenderIpRanges"] == ["203.0.113.7", "198.51.100.0/24"]
    assert rule["RejectMessageEnhancedStatusCode"] == "5.7.900"
    assert rule["DeleteMessage"] is False
    assert rule["StopRuleProcessing"] is True

    _, _, by_guid = invoke(sim, "Get-TransportRule", {"Identity": rule["Guid"]})
    _, _, by_name = invoke(sim, "Get-TransportRule", {"identity": "BLOCK 203.0.113.7"})
    assert by_guid["value"] == by_name["value"] == [rule]

    status, _, changed = invoke(
        sim,
        "Set-TransportRule",
        {"Identity": rule["Name"], "SenderIpRanges": ["203.0.113.8"], "Mode": "Audit"},
    )
    assert (status, changed["value"]) == (200, [])
    [after] = sim.transport_rules
    assert after["SenderIpRanges"] == ["203.0.113.8"]
    assert after["Mode"] == "Audit"
    assert after["Comments"] == "incident 42"
    assert after["WhenChanged"] > rule["WhenChanged"]

    status, _, removed = invoke(
        sim, "Remove-TransportRule", {"Identity": rule["Guid"], "Confirm": False}
    )
    assert (status, removed["value"]) == (200, [])
    assert sim.transport_rules == []
    assert [name for name, _ in sim.exchange_calls] == [
        "New-TransportRule",
        "Get-TransportRule",
        "Get-TransportRule",
        "Set-TransportRule",
        "Remove-TransportRule",
    ]
    assert sim.exchange_calls[3][1]["SenderIpRanges"] == ["203.0.113.8"]
    path = f"/adminapi/beta/{sim.tenant_id}/InvokeCommand"
    assert sim.requests == [("POST", path)] * 5


def test_rules_are_kept_in_priority_order(sim: SimulatedTenant) -> None:
    for name in ("a", "b", "c"):
        sim.add_transport_rule(block_rule(name))

    invoke(sim, "New-TransportRule", block_rule("first", Priority=0))
    invoke(sim, "Set-TransportRule", {"Identity": "c", "Priority": 1})

    assert [(r["Name"], r["Priority"]) for r in sim.transport_rules] == [
        ("first", 0),
        ("c", 1),
        ("a", 2),
        ("b", 3),
    ]
    status, _, body = invoke(sim, "Set-TransportRule", {"Identity": "a", "Priority": 4})
    assert status == 400
    assert_exchange_error(body, "BadRequest", "0 through 3")


def test_default_domain_names_the_tenant_too(sim: SimulatedTenant) -> None:
    sim.add_transport_rule(block_rule("seeded"))

    status, _, body = invoke(
        sim, "Get-TransportRule", url=invoke_url(sim, "Contoso.onmicrosoft.com")
    )

    assert status == 200
    assert [rule["Name"] for rule in body["value"]] == ["seeded"]


PREFER_ALL = {"Prefer": "odata.maxpagesize=1000"}


def test_a_complete_answer_carries_empty_warnings_and_no_next_link(sim: SimulatedTenant) -> None:
    sim.add_transport_rule(block_rule("rule-000"))
    status, _, answer = invoke(sim, "Get-TransportRule")
    assert status == 200
    assert answer["adminapi.warnings@odata.type"] == "#Collection(String)"
    assert answer["@adminapi.warnings"] == []
    assert "@odata.nextLink" not in answer
    assert [rule["Name"] for rule in answer["value"]] == ["rule-000"]


def test_get_transport_rule_pages_100_rows_unless_the_client_prefers_more(
    sim: SimulatedTenant,
) -> None:
    for index in range(250):
        sim.add_transport_rule(block_rule(f"rule-{index:03d}"))

    _, _, first = invoke(sim, "Get-TransportRule")
    assert len(first["value"]) == 100
    assert first["@odata.nextLink"].startswith(invoke_url(sim) + "?%24skiptoken=")
    assert first["@adminapi.warnings"] == [
        "There are more results available than are currently displayed. To view them, "
        "increase the value for the ResultSize parameter."
    ]

    status, _, whole = invoke(
        sim, "Get-TransportRule", {"ResultSize": "Unlimited"}, headers=PREFER_ALL
    )
    assert status == 200
    assert [rule["Name"] for rule in whole["value"]] == [f"rule-{n:03d}" for n in range(250)]
    assert "@odata.nextLink" not in whole and whole["@adminapi.warnings"] == []

    _, _, small = invoke(sim, "Get-TransportRule", headers={"Prefer": "odata.maxpagesize=7"})
    assert len(small["value"]) == 7 and "@odata.nextLink" in small


def test_result_size_limits_the_answer_and_says_so(sim: SimulatedTenant) -> None:
    for index in range(5):
        sim.add_transport_rule(block_rule(f"rule-{index:03d}"))
    _, _, answer = invoke(sim, "Get-TransportRule", {"ResultSize": 2}, headers=PREFER_ALL)
    assert [rule["Name"] for rule in answer["value"]] == ["rule-000", "rule-001"]
    assert answer["@odata.nextLink"] and len(answer["@adminapi.warnings"]) == 1
    for size in (0, "lots", True):
        status, _, body = invoke(sim, "Get-TransportRule", {"ResultSize": size})
        assert status == 400
        assert_exchange_error(body, "BadRequest", "Unlimited")


def test_a_next_link_cannot_be_replayed(sim: SimulatedTenant) -> None:
    for index in range(150):
        sim.add_transport_rule(block_rule(f"rule-{index:03d}"))
    request = {"CmdletInput": {"CmdletName": "Get-TransportRule", "Parameters": {}}}
    _, _, first = send(invoke_url(sim), "POST", request)

    for body in (request, {"CmdletInput": {"CmdletName": "Get-TransportRule"}}):
        status, _, refused = send(first["@odata.nextLink"], "POST", body, headers=PREFER_ALL)
        assert status == 400
        assert_exchange_error(refused, "BadRequest", "Expired or Invalid pagination request")


def test_the_page_limit_and_next_link_host_can_be_set(sim: SimulatedTenant) -> None:
    for index in range(3):
        sim.add_transport_rule(block_rule(f"rule-{index:03d}"))
    sim.limit_exchange_pages(2)
    sim.point_exchange_next_links_at("https://elsewhere.example/adminapi/beta/x/")
    _, _, answer = invoke(sim, "Get-TransportRule", headers=PREFER_ALL)
    assert len(answer["value"]) == 2
    assert answer["@odata.nextLink"].startswith(
        "https://elsewhere.example/adminapi/beta/x/InvokeCommand?%24skiptoken="
    )


def test_the_headers_clients_send_are_recorded(sim: SimulatedTenant) -> None:
    anchor = "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@contoso.onmicrosoft.com"
    invoke(sim, "Get-TransportRule", headers={**PREFER_ALL, "X-AnchorMailbox": anchor})
    invoke(sim, "Get-TransportRule")
    assert sim.exchange_request_headers == [
        {"Prefer": "odata.maxpagesize=1000", "X-AnchorMailbox": anchor},
        {"Prefer": None, "X-AnchorMailbox": None},
    ]


def test_an_injected_warning_rides_on_the_next_answer_only(sim: SimulatedTenant) -> None:
    sim.add_transport_rule(block_rule("rule"))
    sim.add_exchange_warning("set-transportrule", "The Priority parameter is deprecated.")
    _, _, got = invoke(sim, "Get-TransportRule")
    assert got["@adminapi.warnings"] == []
    _, _, warned = invoke(sim, "Set-TransportRule", {"Identity": "rule", "Comments": "x"})
    assert warned["@adminapi.warnings"] == ["The Priority parameter is deprecated."]
    _, _, again = invoke(sim, "Set-TransportRule", {"Identity": "rule", "Comments": "y"})
    assert again["@adminapi.warnings"] == []


def test_rule_over_8_kb_is_refused_with_the_reason_only_in_details(sim: SimulatedTenant) -> None:
    ranges = [f"10.{index // 256}.{index % 256}.1" for index in range(700)]
    params = block_rule("too big", *ranges)
    assert rule_size({"Mode": "Enforce", **params}) > RULE_SIZE_LIMIT

    status, _, body = invoke(sim, "New-TransportRule", params)

    assert status == 400
    size = rule_size(
        {"Mode": "Enforce", "DeleteMessage": False, "StopRuleProcessing": False, **params}
    )
    reason = assert_exchange_error(body, "BadRequest", f"{size} bytes", str(RULE_SIZE_LIMIT))
    assert "too big" in reason
    assert str(size) not in body["error"]["message"]
    assert sim.transport_rules == []


def test_rule_size_lets_a_caller_fill_a_rule_to_exactly_the_limit(sim: SimulatedTenant) -> None:
    params: dict[str, Any] = {
        **block_rule("exact", *(f"10.0.{index // 250}.{index % 250}" for index in range(600))),
        "Mode": "Enforce",
        "DeleteMessage": True,
        "StopRuleProcessing": True,
    }
    # Each comment character is one byte; the empty value costs its key and quotes already.
    params["Comments"] = "x"
    params["Comments"] = "x" * (RULE_SIZE_LIMIT - rule_size(params) + 1)
    assert rule_size(params) == RULE_SIZE_LIMIT

    assert invoke(sim, "New-TransportRule", params)[0] == 200
    assert rule_size(sim.transport_rules[0]) == RULE_SIZE_LIMIT

    longer = "y" * (len(params["Comments"]) + 1)
    status, _, body = invoke(sim, "Set-TransportRule", {"Identity": "exact", "Comments": longer})
    assert status == 400
    assert_exchange_error(body, "BadRequest", f"{RULE_SIZE_LIMIT + 1} bytes")
    assert sim.transport_rules[0]["Comments"] == params["Comments"]


def test_organization_limit_of_300_rules(sim: SimulatedTenant) -> None:
    for index in range(300):
        sim.add_transport_rule(block_rule(f"rule-{index}"))

    status, _, body = invoke(sim, "New-TransportRule", block_rule("one too many"))

    assert status == 400
    assert_exchange_error(body, "BadRequest", "maximum of 300 transport rules")
    with pytest.raises(ValueError, match="300"):
        sim.add_transport_rule(block_rule("another"))
    assert len(sim.transport_rules) == 300


def test_duplicate_rule_name_is_refused(sim: SimulatedTenant) -> None:
    sim.add_transport_rule(block_rule("Block list"))

    status, _, body = invoke(sim, "New-TransportRule", block_rule("BLOCK LIST"))

    assert status == 400
    assert_exchange_error(body, "BadRequest", "'BLOCK LIST' already exists")
    sim.add_transport_rule(block_rule("other"))
    status, _, body = invoke(sim, "Set-TransportRule", {"Identity": "other", "Name": "block list"})
    assert status == 400
    assert [rule["Name"] for rule in sim.transport_rules] == ["Block list", "other"]


@pytest.mark.parametrize(
    "entry",
    [
        "1.2.3.4; Remove-TransportRule *",
        "1.2.3.4,5.6.7.8",
        " 1.2.3.4",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.9-10.0.0.1",
        "10.0.0.1-2001:db8::1",
        "fe80::1%eth0",
        "",
        "*",
    ],
)
def test_junk_sender_ip_entries_are_refused(sim: SimulatedTenant, entry: str) -> None:
    status, _, body = invoke(sim, "New-TransportRule", block_rule("junk", "203.0.113.1", entry))

    assert status == 400
    assert_exchange_error(body, "BadRequest", f"'{entry}' isn't a valid IP address or range")
    assert sim.transport_rules == []


def test_every_documented_sender_ip_form_is_accepted(sim: SimulatedTenant) -> None:
    forms = [
        "192.168.1.1",
        "192.168.0.1-192.168.0.254",
        "192.168.0.1/25",
        "2001:db8::1",
        "2001:db8::/48",
    ]

    assert invoke(sim, "New-TransportRule", block_rule("forms", *forms))[0] == 200
    assert sim.transport_rules[0]["SenderIpRanges"] == forms


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"Name": "x" * 65}, "65 characters"),
        ({"Name": "ok", "Comments": "c" * 1025}, "1025 characters"),
        ({"Name": "ok", "Mode": "Block"}, "RuleMode"),
        ({"Name": "ok", "RejectMessageEnhancedStatusCode": "5.7.2"}, "5.7.900"),
        ({"Name": "ok", "DeleteMessage": "yes"}, "true or false"),
        ({"Name": "ok", "Priority": 1}, "0 through 0"),
        ({"Name": "ok", "Quarantine": True}, "parameter name 'Quarantine'"),
        ({"SenderIpRanges": ["1.2.3.4"]}, "mandatory parameter 'Name'"),
    ],
)
def test_invalid_parameters_are_400(
    sim: SimulatedTenant, parameters: dict[str, Any], reason: str
) -> None:
    status, _, body = invoke(sim, "New-TransportRule", parameters)

    assert status == 400
    assert_exchange_error(body, "BadRequest", reason)


def test_half_given_rejection_is_completed_with_exchange_defaults(sim: SimulatedTenant) -> None:
    rule = sim.add_transport_rule(block_rule("reject", RejectMessageEnhancedStatusCode="5.7.1"))

    assert rule["RejectMessageReasonText"] == "Delivery not authorized, message refused"
    assert sim.edit_transport_rule("reject", RejectMessageReasonText=None)[
        "RejectMessageReasonText"
    ] == ("Delivery not authorized, message refused")


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "BadRequest", "Invalid Operation"),
        (500, "InternalServerError", "Error executing cmdlet"),
    ],
)
def test_unknown_identity_names_the_exception_only_in_details(
    sim: SimulatedTenant, status: int, code: str, message: str
) -> None:
    if status != 400:
        sim.answer_exchange_not_found_with(status)
    for cmdlet, parameters in (
        ("Get-TransportRule", {"Identity": "nope"}),
        ("Set-TransportRule", {"Identity": "nope", "Comments": "x"}),
        ("Remove-TransportRule", {"Identity": "nope", "Confirm": False}),
    ):
        answered, _, body = invoke(sim, cmdlet, parameters)
        assert answered == status
        assert_exchange_error(body, code, "object 'nope' couldn't be found", message=message)
        assert body["error"]["details"][0]["message"].startswith(f"Ex6F9304|{NOT_FOUND}|")
        assert NOT_FOUND not in json.dumps(body["error"]["innererror"])


def test_not_found_is_answered_with_400_or_500_only(sim: SimulatedTenant) -> None:
    with pytest.raises(ValueError, match="400 or 500"):
        sim.answer_exchange_not_found_with(404)


def test_exchange_requires_the_bearer_token(sim: SimulatedTenant) -> None:
    for token in (None, "wrong-token"):
        status, _, body = invoke(sim, "Get-TransportRule", token=token)
        assert status == 401
        assert_exchange_error(body, "InvalidAuthenticationToken")
    assert sim.exchange_calls == []


def test_wrong_tenant_and_wrong_routes_are_404(sim: SimulatedTenant) -> None:
    status, _, body = invoke(
        sim, "Get-TransportRule", url=invoke_url(sim, "fabrikam.onmicrosoft.com")
    )
    assert status == 404
    assert_exchange_error(body, "NotFound", "fabrikam.onmicrosoft.com")

    status, _, body = send(f"{sim.exchange_base_url}/adminapi/v2.0/x/Mailbox", "GET")
    assert status == 404
    assert_exchange_error(body, "UnknownRoute")
    assert send(invoke_url(sim), "GET")[0] == 404


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"CmdletName": "Get-TransportRule"}',
        b'{"CmdletInput": {"CmdletName": ""}}',
        b'{"CmdletInput": {"CmdletName": "Get-TransportRule", "Parameters": []}}',
    ],
)
def test_malformed_invocations_are_400(sim: SimulatedTenant, body: bytes) -> None:
    request = urllib.request.Request(invoke_url(sim), data=body, method="POST")
    request.add_header("Authorization", "Bearer sim-token")
    with pytest.raises(urllib.error.HTTPError) as refused:
        _OPENER.open(request, timeout=10)

    assert refused.value.code == 400
    assert_exchange_error(json.loads(refused.value.read()), "BadRequest")
    assert sim.exchange_calls == []


def test_unknown_cmdlet_is_a_403_whose_body_is_not_json(sim: SimulatedTenant) -> None:
    request = {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"Identity": "alice"}}}
    status, headers, raw = send_raw(invoke_url(sim), "POST", request)

    assert status == 403
    assert raw and set(raw) == {0}, "a run of NUL bytes, as live tenants sent"
    assert "json" not in (headers.get("Content-Type") or "")
    with pytest.raises(ValueError):
        json.loads(raw)
    assert sim.exchange_calls == [("Get-Mailbox", {"Identity": "alice"})]


def test_before_cmdlet_hook_runs_once_between_read_and_write(sim: SimulatedTenant) -> None:
    sim.add_transport_rule(block_rule("block list", "203.0.113.1"))
    seen: list[SimulatedTenant] = []

    def someone_else_edits(tenant: SimulatedTenant) -> None:
        seen.append(tenant)
        tenant.edit_transport_rule("block list", Comments="edited by someone else")

    sim.before_cmdlet("Set-TransportRule", someone_else_edits)
    _, _, read = invoke(sim, "Get-TransportRule", {"Identity": "block list"})
    invoke(sim, "Set-TransportRule", {"Identity": "block list", "SenderIpRanges": ["203.0.113.2"]})
    invoke(sim, "Set-TransportRule", {"Identity": "block list", "SenderIpRanges": ["203.0.113.3"]})

    assert seen == [sim]
    [rule] = sim.transport_rules
    assert rule["Comments"] == "edited by someone else"
    assert rule["SenderIpRanges"] == ["203.0.113.3"]
    assert rule["WhenChanged"] > read["value"][0]["WhenChanged"]


def test_out_of_band_edits_check_like_set_transport_rule(sim: SimulatedTenant) -> None:
    before = sim.add_transport_rule(block_rule("rule"))

    after = sim.edit_transport_rule("rule", SenderIpRanges=["198.51.100.1"])

    assert after["WhenChanged"] > before["WhenChanged"]
    with pytest.raises(KeyError):
        sim.edit_transport_rule("missing", Comments="x")
    with pytest.raises(ValueError, match="isn't a valid IP"):
        sim.edit_transport_rule("rule", SenderIpRanges=["nonsense"])
    with pytest.raises(ValueError, match="parameter name 'Colour'"):
        sim.edit_transport_rule("rule", Colour="red")
    assert sim.exchange_calls == []


def test_fault_can_target_one_cmdlet(sim: SimulatedTenant) -> None:
    sim.add_fault(
        Fault(path_pattern="InvokeCommand", cmdlet="new-transportrule", status=503, retry_after="2")
    )

    assert invoke(sim, "Get-TransportRule")[0] == 200
    assert send(f"{sim.base_url}/users/nobody", "GET")[0] == 404
    status, headers, body = invoke(sim, "New-TransportRule", block_rule("retry me"))
    assert status == 503
    assert "Retry-After" not in headers, "never seen on the live admin endpoint"
    assert_exchange_error(body, "ServiceUnavailable", "Injected fault")
    assert sim.transport_rules == []

    assert invoke(sim, "New-TransportRule", block_rule("retry me"))[0] == 200
    assert [name for name, _ in sim.exchange_calls] == [
        "Get-TransportRule",
        "New-TransportRule",
        "New-TransportRule",
    ]


def test_path_fault_hits_every_cmdlet(sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(path_pattern="InvokeCommand", status=429, retry_after="1", times=2))

    answers = [invoke(sim, "Get-TransportRule")[:2] for _ in range(3)]

    assert [status for status, _ in answers] == [429, 429, 200]
    assert all("Retry-After" not in headers for _, headers in answers)


def test_create_get_patch_and_delete_a_named_location(sim: SimulatedTenant) -> None:
    status, _, created = send(
        sim.base_url + LOCATIONS, "POST", ip_location("Blocked", "40.113.0.0/24", "2a01:111::/48")
    )

    assert status == 201
    assert created["@odata.context"].endswith("#identity/conditionalAccess/namedLocations/$entity")
    assert created["@odata.type"] == "#microsoft.graph.ipNamedLocation"
    assert uuid.UUID(created["id"])
    assert created["createdDateTime"] == created["modifiedDateTime"]
    assert created["createdDateTime"].endswith("Z")
    assert created["isTrusted"] is False
    assert created["ipRanges"] == ip_location("", "40.113.0.0/24", "2a01:111::/48")["ipRanges"]
    item = f"{sim.base_url}{LOCATIONS}/{created['id']}"
    status, _, fetched = send(item, "GET")
    assert status == 200
    assert {k: v for k, v in fetched.items() if k != "@odata.context"} == {
        k: v for k, v in created.items() if k != "@odata.context"
    }

    patch = {"@odata.type": "#microsoft.graph.ipNamedLocation", "displayName": "Still blocked"}
    patch["ipRanges"] = ip_location("", "40.114.0.0/24")["ipRanges"]
    status, _, body = send(item, "PATCH", patch)
    assert (status, body) == (204, None)
    [stored] = sim.named_locations
    assert stored["displayName"] == "Still blocked"
    assert [r["cidrAddress"] for r in stored["ipRanges"]] == ["40.114.0.0/24"]
    assert stored["modifiedDateTime"] >= stored["createdDateTime"]

    status, _, body = send(item, "PATCH", {"displayName": "no type"})
    assert status == 400
    assert "@odata.type" in assert_graph_error(body, "BadRequest")

    assert send(item, "DELETE")[0] == 204
    assert sim.named_locations == []
    status, _, body = send(item, "GET")
    assert status == 404
    assert_graph_error(body, "ResourceNotFound")


def test_named_locations_list_pages_and_stop_at_195(sim: SimulatedTenant) -> None:
    for index in range(195):
        assert (
            send(sim.base_url + LOCATIONS, "POST", ip_location(f"loc-{index}", "40.113.0.0/24"))[0]
            == 201
        )

    url: str | None = f"{sim.base_url}{LOCATIONS}?$filter=isof('x')&$select=id,displayName"
    names: list[str] = []
    page_sizes: list[int] = []
    while url:
        status, _, page = send(url, "GET")
        assert status == 200
        page_sizes.append(len(page["value"]))
        names.extend(item["displayName"] for item in page["value"])
        url = page.get("@odata.nextLink")
    assert page_sizes == [100, 95]
    assert names == [f"loc-{index}" for index in range(195)]

    status, _, body = send(
        sim.base_url + LOCATIONS, "POST", ip_location("one more", "40.113.0.0/24")
    )
    assert status == 400
    assert "195" in assert_graph_error(body, "BadRequest")


def test_named_location_holds_at_most_2000_ranges(sim: SimulatedTenant) -> None:
    cidrs = [f"100.{index // 256}.{index % 256}.0/24" for index in range(2001)]

    status, _, body = send(sim.base_url + LOCATIONS, "POST", ip_location("big", *cidrs))
    assert status == 400
    assert "2000" in assert_graph_error(body, "BadRequest")

    assert send(sim.base_url + LOCATIONS, "POST", ip_location("big", *cidrs[:2000]))[0] == 201


@pytest.mark.parametrize(
    ("cidr", "complaint"),
    [
        ("10.0.0.0/8", "/9 or longer"),
        ("2001::/8", "/9 or longer"),
        ("203.0.113.7/24", "host bits"),
        ("203.0.113.7", "CIDR notation"),
        ("203.0.113.0/33", "not a valid CIDR"),
        ("banana/24", "not a valid CIDR"),
    ],
)
def test_bad_cidr_ranges_are_refused(sim: SimulatedTenant, cidr: str, complaint: str) -> None:
    status, _, body = send(sim.base_url + LOCATIONS, "POST", ip_location("bad", cidr))

    assert status == 400
    assert complaint in assert_graph_error(body, "BadRequest")
    assert sim.named_locations == []


def test_cidr_must_match_its_range_type(sim: SimulatedTenant) -> None:
    location = ip_location("mismatch", "40.113.0.0/24")
    location["ipRanges"][0]["@odata.type"] = IPV6

    status, _, body = send(sim.base_url + LOCATIONS, "POST", location)

    assert status == 400
    assert "IPv6" in assert_graph_error(body, "BadRequest")


def test_the_smallest_allowed_masks_are_accepted(sim: SimulatedTenant) -> None:
    location = ip_location("wide", "40.0.0.0/9", "2400::/9", "40.113.0.7/32")

    assert send(sim.base_url + LOCATIONS, "POST", location)[0] == 201


def test_named_location_writes_are_throttled() -> None:
    with SimulatedTenant() as throttled:
        url = throttled.base_url + LOCATIONS
        assert send(url, "POST", ip_location("first", "40.113.0.0/24"))[0] == 201

        status, headers, body = send(url, "POST", ip_location("second", "40.114.0.0/24"))

        assert status == 429
        assert headers["Retry-After"] == "1"
        assert_graph_error(body, "TooManyRequests")
        assert send(url, "GET")[0] == 200
        assert [location["displayName"] for location in throttled.named_locations] == ["first"]


def test_throttle_can_be_turned_off(sim: SimulatedTenant) -> None:
    url = sim.base_url + LOCATIONS

    answers = [send(url, "POST", ip_location(f"n{i}", "40.113.0.0/24"))[0] for i in range(3)]

    assert answers == [201, 201, 201]


def test_msgraph_sdk_creates_and_lists_named_locations(sim: SimulatedTenant) -> None:
    async def scenario() -> tuple[str, list[tuple[str, list[str]]]]:
        client, http_client = sdk_client(sim)
        async with http_client:
            created = await client.identity.conditional_access.named_locations.post(
                IpNamedLocation(
                    display_name="Blocked by incident 42",
                    is_trusted=False,
                    ip_ranges=[IPv4CidrRange(cidr_address="40.113.0.0/24")],
                )
            )
            assert isinstance(created, IpNamedLocation) and created.id
            listed = await client.identity.conditional_access.named_locations.get()
        assert listed is not None and listed.value is not None
        return created.id, [
            (
                location.display_name or "",
                [
                    r.cidr_address or ""
                    for r in location.ip_ranges or []
                    if isinstance(r, IPv4CidrRange)
                ],
            )
            for location in listed.value
            if isinstance(location, IpNamedLocation)
        ]

    created_id, listed = asyncio.run(scenario())

    assert listed == [("Blocked by incident 42", ["40.113.0.0/24"])]
    assert [location["id"] for location in sim.named_locations] == [created_id]
    assert sim.requests == [("POST", LOCATIONS), ("GET", LOCATIONS)]


def test_rule_writes_are_logged_with_whether_they_changed_the_rule(sim: SimulatedTenant) -> None:
    assert (
        invoke(sim, "New-TransportRule", block_rule("rule", "203.0.113.7", "198.51.100.9"))[0]
        == 200
    )
    same = {"Identity": "rule", "SenderIpRanges": ["198.51.100.9", "203.0.113.7"]}
    assert invoke(sim, "Set-TransportRule", same)[0] == 200
    more = {"Identity": "rule", "SenderIpRanges": ["203.0.113.7"]}
    assert invoke(sim, "Set-TransportRule", more)[0] == 200
    assert invoke(sim, "Remove-TransportRule", {"Identity": "rule"})[0] == 200
    # Live tenants answer a missing rule with 400, the exception type in the details.
    assert invoke(sim, "Remove-TransportRule", {"Identity": "rule"})[0] == 400

    writes = sim.writes
    assert [(w.kind, w.changed) for w in writes] == [
        ("New-TransportRule", True),
        ("Set-TransportRule", False),  # the same ranges in another order
        ("Set-TransportRule", True),
        ("Remove-TransportRule", True),
    ]
    assert len({w.target for w in writes}) == 1
