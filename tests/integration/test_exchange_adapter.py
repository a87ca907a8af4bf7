"""The Exchange admin adapter over real HTTP against the simulated tenant: the transport rule
cmdlets, paging, and the mapping of Exchange errors to transient and permanent failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.exchange import ExchangeAdmin
from shared.errors import PermanentError, TransientError
from shared.ports import TransportRule
from shared.simulator import Fault, SimulatedTenant

pytestmark = pytest.mark.integration

RULE = "M365 Responder IP block reject 001"
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


async def test_listing_follows_the_pages_past_the_first_hundred_rules(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    names = [f"Mail flow rule {n:03d}" for n in range(250)]
    for n, name in enumerate(names):
        sim.add_transport_rule({"Name": name, "SenderIpRanges": [f"185.220.100.{n + 1}"]})
    rules = await admin.list_rules()
    assert [r.name for r in rules] == names
    assert rules[-1].ranges == ("185.220.100.250",)
    assert cmdlets(sim) == ["Get-TransportRule"] * 3, "three pages of at most 100"
    assert admin.calls == 3, "every page is a request of its own"


async def test_an_unknown_rule_reads_as_none(admin: ExchangeAdmin) -> None:
    assert await admin.get_rule("M365 Responder IP block reject 042") is None


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
    assert caught.value.request_id, "the request id is kept for support cases"


async def test_an_invalid_range_is_refused_with_the_reason(admin: ExchangeAdmin) -> None:
    with pytest.raises(PermanentError) as caught:
        await admin.create_rule(RULE, ["185.220.101.9 "], COMMENTS, "Enforce", True)
    assert caught.value.status == 400
    assert "isn't a valid IP address or range" in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        (Fault(status=429, retry_after="7", cmdlet="Set-TransportRule"), 429, 7.0),
        (Fault(status=429, retry_after="2.5", cmdlet="Set-TransportRule"), 429, 2.5),
        (Fault(status=503, cmdlet="Set-TransportRule"), 503, None),
        (Fault(status=503, retry_after="30", cmdlet="Set-TransportRule"), 503, 30.0),
        (Fault(status=504, cmdlet="Set-TransportRule"), 504, None),
    ],
)
async def test_throttling_and_outages_are_transient(
    admin: ExchangeAdmin,
    sim: SimulatedTenant,
    fault: Fault,
    status: int,
    retry_after: float | None,
) -> None:
    sim.add_transport_rule({"Name": RULE, "SenderIpRanges": ["185.220.101.9"]})
    sim.add_fault(fault)
    with pytest.raises(TransientError) as caught:
        await admin.set_ranges(RULE, ["185.220.101.10"], "Enforce", reject=True)
    assert caught.value.status == status
    assert caught.value.retry_after == retry_after
    assert caught.value.request_id
    assert sim.transport_rules[0]["SenderIpRanges"] == ["185.220.101.9"]


async def test_a_throttled_second_page_is_transient(
    admin: ExchangeAdmin, sim: SimulatedTenant
) -> None:
    for n in range(150):
        sim.add_transport_rule({"Name": f"Rule {n:03d}", "SenderIpRanges": ["185.220.101.9"]})
    await admin.list_rules()
    sim.add_fault(Fault(status=0, cmdlet="Get-TransportRule"))  # the first page passes
    sim.add_fault(Fault(status=429, retry_after="3", cmdlet="Get-TransportRule"))
    with pytest.raises(TransientError) as caught:
        await admin.list_rules()
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)


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


async def test_removing_an_unknown_rule_is_a_permanent_404(admin: ExchangeAdmin) -> None:
    with pytest.raises(PermanentError) as caught:
        await admin.remove_rule("M365 Responder IP block reject 042")
    assert caught.value.status == 404
    assert "couldn't be found" in str(caught.value)


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
