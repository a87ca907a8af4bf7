"""The Exchange admin adapter over real HTTP against the simulated tenant: the transport rule
cmdlets, paging, and the mapping of Exchange errors to transient and permanent failures."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.exchange import CmdletFailed, ExchangeAdmin, RuleNotFound
from shared.errors import ConfigError, NotFoundError, PermanentError, TransientError
from shared.ports import TransportRule
from shared.simulator import Fault, SimulatedTenant

pytestmark = pytest.mark.integration

RULE = "M365 Responder IP block reject 001"
NOT_FOUND = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
ANCHOR = "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@contoso.onmicrosoft.com"
COMMENTS = "Managed by M365 Responder: sender IP blocklist. Edits here are overwritten."


def admin_for(
    sim: SimulatedTenant, token: str | None = None, timeout_s: float = 5.0
) -> ExchangeAdmin:
    credential = StaticTokenCredential(sim.token if token is None else token)
    return ExchangeAdmin(sim.exchange_base_url, sim.default_domain, credential, timeout_s)


@pytest.fixture
async def admin(sim: SimulatedTenant) -> AsyncIterator[ExchangeAdmin]:
    client = admin_for(sim)
    try:
        yield client
    finally:
        await client.close()


def cmdlets(sim: SimulatedTenant) -> list[str]:
    return [cmdlet for cmdlet, _ in sim.exchange_calls]


# The transport rule cmdlets --------------------------------------------------------------------


async def test_a_rule_is_created_listed_changed_and_removed_over_the_wire(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    await admin.create_rule(RULE, ["185.220.101.9", "2a0b:f4c2::/48"], COMMENTS, "Enforce", True)
    [stored] = sim.transport_rules
    assert stored["Name"] == RULE and stored["Comments"] == COMMENTS
    assert stored["SenderIpRanges"] == ["185.220.101.9", "2a0b:f4c2::/48"]
    assert stored["RejectMessageEnhancedStatusCode"] == "5.7.1"
    assert stored["StopRuleProcessing"] is True and stored["DeleteMessage"] is False

    [listed] = await admin.list_rules()
    assert (listed.name, listed.ranges, listed.comments, listed.mode) == (
        RULE,
        ("185.220.101.9", "2a0b:f4c2::/48"),
        COMMENTS,
        "Enforce",
    )
    assert listed.when_changed, "WhenChanged is read, so a change can be told apart"

    await admin.set_ranges(RULE, ["185.220.101.10"], "Audit", reject=True)
    changed = await admin.get_rule(RULE)
    assert changed is not None
    assert (changed.ranges, changed.mode) == (("185.220.101.10",), "Audit")
    assert changed.when_changed != listed.when_changed

    await admin.remove_rule(RULE)
    assert sim.transport_rules == []
    assert await admin.list_rules() == []
    assert cmdlets(sim) == [
        "New-TransportRule",
        "Get-TransportRule",
        "Set-TransportRule",
        "Get-TransportRule",
        "Remove-TransportRule",
        "Get-TransportRule",
    ]


async def test_a_delete_rule_deletes_instead_of_rejecting(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    name = "M365 Responder IP block delete 001"
    await admin.create_rule(name, ["185.220.101.9"], COMMENTS, "Enforce", reject=False)
    [stored] = sim.transport_rules
    assert stored["DeleteMessage"] is True
    assert stored["RejectMessageEnhancedStatusCode"] is None


async def test_listing_asks_for_the_whole_result_in_one_answer(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    names = [f"Mail flow rule {n:03d}" for n in range(250)]
    for n, name in enumerate(names):
        sim.add_transport_rule({"Name": name, "SenderIpRanges": [f"185.220.100.{n + 1}"]})
    rules = await admin.list_rules()
    assert [r.name for r in rules] == names
    assert rules[-1].ranges == ("185.220.100.250",)
    assert sim.exchange_calls == [("Get-TransportRule", {"ResultSize": "Unlimited"})]
    assert sim.exchange_request_headers == [
        {"Prefer": "odata.maxpagesize=1000", "X-AnchorMailbox": ANCHOR}
    ]
    assert admin.calls == 1


async def test_a_truncated_listing_is_a_failed_read_not_a_partial_list(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    for n in range(150):
        sim.add_transport_rule({"Name": f"Rule {n:03d}", "SenderIpRanges": ["185.220.101.9"]})
    sim.limit_exchange_pages(100)
    with pytest.raises(PermanentError) as caught:
        await admin.list_rules()
    assert "Expired or Invalid pagination request" in str(caught.value)
    assert "next page" in str(caught.value)
    assert admin.calls == 2, "the next link was tried once, on the configured endpoint"
    assert any("more results available" in w for w in admin.take_warnings())


async def test_the_token_never_follows_a_next_link_to_another_host(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    for n in range(150):
        sim.add_transport_rule({"Name": f"Rule {n:03d}", "SenderIpRanges": ["185.220.101.9"]})
    sim.limit_exchange_pages(100)
    with SimulatedTenant(token="other-token") as elsewhere:
        sim.point_exchange_next_links_at(
            f"{elsewhere.exchange_base_url}/adminapi/beta/{sim.default_domain}"
        )
        with pytest.raises(PermanentError, match="another endpoint") as caught:
            await admin.list_rules()
        assert elsewhere.requests == [], "nothing, and no token, was sent there"
    assert sim.token not in str(caught.value)
    assert admin.calls == 1


def test_plain_http_is_refused_except_on_loopback() -> None:
    credential = StaticTokenCredential("t")
    with pytest.raises(ConfigError, match="https"):
        ExchangeAdmin("http://outlook.office365.com", "contoso.onmicrosoft.com", credential, 5.0)


@pytest.mark.parametrize("status", [400, 500])
async def test_an_unknown_rule_reads_as_none_whatever_the_status(
    admin: ExchangeAdmin, sim: SimulatedTenant, status: int
) -> None:
    sim.answer_exchange_not_found_with(status)
    assert await admin.get_rule("M365 Responder IP block reject 042") is None
    assert admin.calls == 1, "not retried"


async def test_a_missing_tenant_is_not_taken_for_a_missing_rule(sim: SimulatedTenant) -> None:
    elsewhere = ExchangeAdmin(
        sim.exchange_base_url, "fabrikam.onmicrosoft.com", StaticTokenCredential(sim.token), 5.0
    )
    try:
        with pytest.raises(PermanentError) as caught:
            await elsewhere.get_rule(RULE)
    finally:
        await elsewhere.close()
    assert not isinstance(caught.value, NotFoundError)
    assert caught.value.status == 404


async def test_a_rule_is_read_whatever_the_case_of_its_name(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    sim.add_transport_rule({"Name": RULE, "Comments": COMMENTS, "SenderIpRanges": ["1.1.1.1"]})
    found = await admin.get_rule(RULE.upper())
    assert isinstance(found, TransportRule)
    assert (found.name, found.ranges, found.comments) == (RULE, ("1.1.1.1",), COMMENTS)


# Errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (RULE, f"A transport rule named '{RULE}' already exists"),
        # Rule names may hold the separator Exchange uses in front of the reason.
        ("Ops | partner relay", "A transport rule named 'Ops | partner relay' already exists"),
    ],
)
async def test_a_refused_cmdlet_says_why_not_just_invalid_operation(
    admin: ExchangeAdmin, sim: SimulatedTenant, name: str, reason: str
) -> None:
    sim.add_transport_rule({"Name": name, "SenderIpRanges": ["185.220.101.9"]})
    with pytest.raises(PermanentError) as caught:
        await admin.create_rule(name, ["185.220.101.10"], COMMENTS, "Enforce", True)
    assert caught.value.status == 400
    assert reason in str(caught.value)
    assert "Invalid Operation" not in str(caught.value)
    assert "|" not in str(caught.value).replace(name, ""), "the |type| prefix is cleaned off"
    assert isinstance(caught.value, CmdletFailed)
    assert caught.value.exception_type == "Microsoft.Exchange.Management.Tasks.ValidationException"
    assert caught.value.request_id, "the request id is kept for support cases"


async def test_an_invalid_range_is_refused_with_the_reason(admin: ExchangeAdmin) -> None:
    with pytest.raises(PermanentError) as caught:
        await admin.create_rule(RULE, ["185.220.101.9 "], COMMENTS, "Enforce", True)
    assert caught.value.status == 400
    assert "isn't a valid IP address or range" in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        # Exchange sends no Retry-After (none was seen live), even where a fault names one.
        (Fault(status=429, retry_after="7", cmdlet="Set-TransportRule"), 429),
        (Fault(status=429, cmdlet="Set-TransportRule"), 429),
        (Fault(status=503, cmdlet="Set-TransportRule"), 503),
        (Fault(status=503, retry_after="30", cmdlet="Set-TransportRule"), 503),
        (Fault(status=504, cmdlet="Set-TransportRule"), 504),
    ],
)
async def test_throttling_and_outages_are_transient_without_a_retry_after(
    admin: ExchangeAdmin, sim: SimulatedTenant, fault: Fault, status: int
) -> None:
    sim.add_transport_rule({"Name": RULE, "SenderIpRanges": ["185.220.101.9"]})
    sim.add_fault(fault)
    with pytest.raises(TransientError) as caught:
        await admin.set_ranges(RULE, ["185.220.101.10"], "Enforce", reject=True)
    assert caught.value.status == status
    assert caught.value.retry_after is None
    assert caught.value.request_id
    assert sim.transport_rules[0]["SenderIpRanges"] == ["185.220.101.9"]


async def test_a_throttled_listing_is_transient(admin: ExchangeAdmin, sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(status=429, cmdlet="Get-TransportRule"))
    with pytest.raises(TransientError) as caught:
        await admin.list_rules()
    assert (caught.value.status, caught.value.retry_after) == (429, None)


async def test_an_unknown_cmdlet_answered_with_a_body_that_is_not_json_fails_clearly(
    admin: ExchangeAdmin,
) -> None:
    with pytest.raises(CmdletFailed) as caught:
        await admin.invoke("Get-Mailbox", {})
    assert caught.value.status == 403
    assert "not JSON" in str(caught.value) and "Exchange.ManageAsApp" in str(caught.value)
    assert "\x00" not in str(caught.value)


async def test_warnings_are_logged_and_kept_for_the_outcome(
    admin: ExchangeAdmin, sim: SimulatedTenant, caplog: pytest.LogCaptureFixture
) -> None:
    sim.add_transport_rule({"Name": RULE, "SenderIpRanges": ["185.220.101.9"]})
    sim.add_exchange_warning("Set-TransportRule", "The rule's SenderIpRanges overlap.")
    with caplog.at_level(logging.WARNING, logger="shared.adapters.exchange"):
        await admin.set_ranges(RULE, ["185.220.101.10"], "Enforce", reject=True)
        result = await admin.invoke("Get-TransportRule", {"Identity": RULE})
    assert result.warnings == []
    assert admin.take_warnings() == ["Set-TransportRule: The rule's SenderIpRanges overlap."]
    assert admin.take_warnings() == [], "taken once"
    assert "The rule's SenderIpRanges overlap." in caplog.text


async def test_a_response_slower_than_the_timeout_is_transient(sim: SimulatedTenant) -> None:
    impatient = admin_for(sim, timeout_s=0.2)
    sim.add_fault(Fault(status=0, delay_s=3.0, cmdlet="Get-TransportRule"))
    try:
        with pytest.raises(TransientError) as caught:
            await impatient.list_rules()
    finally:
        await impatient.close()
    assert "Timeout" in str(caught.value)


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_client_errors_are_permanent(
    admin: ExchangeAdmin, sim: SimulatedTenant, status: int
) -> None:
    sim.add_fault(Fault(status=status, cmdlet="New-TransportRule"))
    with pytest.raises(PermanentError) as caught:
        await admin.create_rule(RULE, ["185.220.101.9"], COMMENTS, "Enforce", True)
    assert caught.value.status == status
    assert sim.transport_rules == []


async def test_a_wrong_token_is_a_permanent_401(sim: SimulatedTenant) -> None:
    stranger = admin_for(sim, token="not-the-token")
    try:
        with pytest.raises(PermanentError) as caught:
            await stranger.list_rules()
    finally:
        await stranger.close()
    assert caught.value.status == 401
    assert sim.exchange_calls == [], "an unauthenticated call runs no cmdlet"


@pytest.mark.parametrize("status", [400, 500])
async def test_removing_an_unknown_rule_is_rule_not_found_never_transient(
    admin: ExchangeAdmin, sim: SimulatedTenant, status: int
) -> None:
    sim.answer_exchange_not_found_with(status)
    with pytest.raises(RuleNotFound) as caught:
        await admin.remove_rule("M365 Responder IP block reject 042")
    assert caught.value.status == status
    assert caught.value.exception_type == NOT_FOUND
    assert str(caught.value).startswith("Remove-TransportRule: Exchange answered")
    assert "couldn't be found" in str(caught.value) and "|" not in str(caught.value)


# The call counter ------------------------------------------------------------------------------


async def test_calls_counts_every_request_sent(admin: ExchangeAdmin, sim: SimulatedTenant) -> None:
    assert admin.calls == 0
    await admin.create_rule(RULE, ["185.220.101.9"], COMMENTS, "Enforce", True)
    await admin.get_rule(RULE)
    await admin.set_ranges(RULE, ["185.220.101.10"], "Enforce", reject=True)
    await admin.get_rule("no such rule")
    sim.add_fault(Fault(status=503, cmdlet="Remove-TransportRule"))
    with pytest.raises(TransientError):
        await admin.remove_rule(RULE)
    await admin.remove_rule(RULE)
    assert admin.calls == 6
    assert admin.calls == len(sim.exchange_calls)
