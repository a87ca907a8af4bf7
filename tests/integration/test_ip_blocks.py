"""IP blocks end to end: alerts through intake, actions through the Service Bus-triggered
executor (peek-lock, redelivery), the product's transport rules in the simulated Exchange, the
block registry in Azurite, the audit trail, expiry and the sweep."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost
from shared import container
from shared.actions.ip_blocks import (
    COMMENT_MARK,
    RANGE_BUDGET_BYTES,
    exchange_range,
    is_managed,
    shard_name,
)
from shared.adapters.exchange import REJECT_REASON, REJECT_STATUS_CODE
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.models import ActionKind, ActionRequest, Actor, AuditEntry
from shared.ports import BlockState, TransportRule
from shared.simulator import RULE_SIZE_LIMIT, Fault, SimulatedTenant, rule_size
from tests.conftest import PARTNER_NETWORK, settings_for
from tests.trail import oldest_first

pytestmark = pytest.mark.integration

ATTACKER = "185.220.101.47"
OTHER_ATTACKER = "185.220.101.48"
SHARD_1 = shard_name("reject", 1)
SHARD_2 = shard_name("reject", 2)
MARK = f"{COMMENT_MARK}: sender IP blocklist. Edits here are overwritten."
DAY = timedelta(days=1)  # the default playbook blocks attackers for 1440 minutes
JUNK = "185.220.101.9; Remove-TransportRule *"
# A rule the mail team made; the responder must never write it.
FOREIGN_RULE: dict[str, Any] = {
    "Name": "Partner relay - bypass spam filtering",
    "Comments": "Owned by the messaging team.",
    "SenderIpRanges": ["52.96.10.0/24"],
    "Mode": "Enforce",
    "StopRuleProcessing": False,
}


# Wiring ----------------------------------------------------------------------------------------


class UnreliableQueue(InMemoryActionQueue):
    """A queue that loses every scheduled message (the scheduled unblock of a temporary block
    never arrives) and fails the next `failing_sends` sends, as an unreachable Service Bus
    would."""

    def __init__(self, max_delivery_count: int, clock: Callable[[], datetime]) -> None:
        super().__init__(max_delivery_count, clock)
        self.lost: list[ActionRequest] = []
        self.failing_sends = 0

    async def schedule(self, actions: list[ActionRequest], at: datetime) -> None:
        self.lost.extend(actions)

    async def send(
        self, actions: list[ActionRequest], claims: Mapping[str, str] | None = None
    ) -> None:
        if self.failing_sends:
            self.failing_sends -= 1
            raise ConnectionError("Service Bus unreachable")
        await super().send(actions, claims)


@asynccontextmanager
async def wired(
    sim: SimulatedTenant,
    azurite: Azurite,
    clock: DrillClock,
    unreliable: bool = False,
    **overrides: Any,
) -> AsyncIterator[Container]:
    """A container on Azurite and the simulator with a movable clock and no batch window,
    installed as the worker's container meanwhile."""
    settings = settings_for(sim, azurite, IP_BLOCK_BATCH_SECONDS=0, **overrides)
    built = Container(settings, clock)
    if unreliable:
        # The container has no way to be handed a queue; its services are built lazily, so
        # replacing the queue before anything uses it reaches intake, executor and sweep alike.
        built.queue = UnreliableQueue(settings.max_deliveries, clock)
    container.install(built)
    try:
        yield await built.prepare()
    finally:
        container.install(None)
        await built.close()


@pytest.fixture
async def responder(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[Container]:
    async with wired(sim, azurite, clock) as built:
        yield built


# Helpers ---------------------------------------------------------------------------------------


def attack(alert_id: str, *addresses: str) -> dict[str, Any]:
    """A generic alert naming `addresses` as attackers; the default playbook blocks them."""
    return {
        "id": alert_id,
        "title": "Forged SMTP submissions flooding Exchange Online",
        "severity": "high",
        "category": "Impact",
        "entities": [{"kind": "ip", "address": a, "roles": ["attacker"]} for a in addresses],
    }


def public_addresses(count: int) -> list[str]:
    return [f"185.220.{100 + n // 250}.{n % 250 + 1}" for n in range(count)]


def queue_of(services: Container) -> InMemoryActionQueue:
    assert isinstance(services.queue, InMemoryActionQueue)
    return services.queue


async def drain(services: Container) -> int:
    return await LocalHost().pump(queue_of(services))


async def audit(services: Container) -> list[AuditEntry]:
    """The audit trail, oldest first."""
    return [r.entry for r in await oldest_first(services.audit_store)]


async def events(services: Container, kind: str = "block_ip") -> list[tuple[str, str | None]]:
    return [(str(e.event), e.target) for e in await audit(services) if e.kind == kind]


def managed(sim: SimulatedTenant) -> dict[str, list[str]]:
    """The product's transport rules: name -> ranges."""
    rules = {}
    for item in sim.transport_rules:
        rule = TransportRule(
            name=item["Name"],
            ranges=tuple(item["SenderIpRanges"] or ()),
            comments=item["Comments"] or "",
        )
        if is_managed(rule):
            rules[rule.name] = list(rule.ranges)
    return rules


def blocked(sim: SimulatedTenant) -> list[str]:
    """Every range in the product's rules, duplicates kept."""
    return [rng for ranges in managed(sim).values() for rng in ranges]


def writes(sim: SimulatedTenant) -> list[tuple[str, dict[str, Any]]]:
    return [(c, p) for c, p in sim.exchange_calls if c != "Get-TransportRule"]


def rule_named(sim: SimulatedTenant, name: str) -> dict[str, Any]:
    [rule] = [r for r in sim.transport_rules if r["Name"] == name]
    return rule


def engineer_unblock(target: str, request: str) -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.UNBLOCK_IP, target, f"engineer:{request}"),
        kind=ActionKind.UNBLOCK_IP,
        target=target,
        reason=f"change {request}: false positive, partner mail server",
        requested_by=Actor(kind="engineer", name="soc.lead@contoso.onmicrosoft.com"),
    )


# Blocking an attacker --------------------------------------------------------------------------


async def test_an_attacker_address_ends_up_in_exactly_one_rule_and_is_audited(
    responder: Container, sim: SimulatedTenant
) -> None:
    [result] = await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    assert len(result.queued) == 1
    assert await drain(responder) == 1

    assert managed(sim) == {SHARD_1: [ATTACKER]}
    rule = rule_named(sim, SHARD_1)
    assert rule["Mode"] == "Enforce" and rule["StopRuleProcessing"] is True
    assert rule["RejectMessageEnhancedStatusCode"] == REJECT_STATUS_CODE
    assert rule["RejectMessageReasonText"] == REJECT_REASON
    assert await events(responder) == [
        ("action.planned", f"{ATTACKER}/32"),
        ("action.executed", f"{ATTACKER}/32"),
    ]
    executed = (await audit(responder))[-1]
    assert executed.action_id == result.queued[0]
    assert executed.result["before"] == {"blocked": False}
    assert executed.result["after"]["blocked"] is True
    assert executed.result["after"]["rule"] == SHARD_1
    assert any(call.startswith("New-TransportRule") for call in executed.result["calls"])
    entry = await responder.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.BLOCKED
    assert (await responder.chain.verify()).ok


async def test_repeated_alerts_naming_the_same_address_coalesce(
    responder: Container, sim: SimulatedTenant
) -> None:
    [first] = await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    [while_pending] = await responder.intake.handle_payload(attack("mx-2", ATTACKER))
    await drain(responder)
    [while_blocked] = await responder.intake.handle_payload(attack("mx-3", f"{ATTACKER}/32"))
    assert await drain(responder) == 0

    assert len(first.queued) == 1
    assert (while_pending.queued, while_blocked.queued) == ([], [])
    assert len(while_pending.coalesced) == 1 and len(while_blocked.coalesced) == 1
    assert await events(responder) == [
        ("action.planned", f"{ATTACKER}/32"),
        ("action.executed", f"{ATTACKER}/32"),
    ]
    assert blocked(sim) == [ATTACKER]
    assert [c for c, _ in writes(sim)] == ["New-TransportRule"]


async def test_an_ipv6_shorthand_is_blocked_under_its_canonical_form(
    responder: Container, sim: SimulatedTenant
) -> None:
    await responder.intake.handle_payload(attack("mx-1", "2A0B:F4C2:0000::1"))
    await drain(responder)
    assert blocked(sim) == ["2a0b:f4c2::1"]
    assert await events(responder) == [
        ("action.planned", "2a0b:f4c2::1/128"),
        ("action.executed", "2a0b:f4c2::1/128"),
    ]


async def test_three_hundred_addresses_cost_a_handful_of_exchange_calls(
    responder: Container, sim: SimulatedTenant
) -> None:
    attackers = public_addresses(300)
    total = sum(len(a) + 3 for a in attackers)
    assert RANGE_BUDGET_BYTES < total < 2 * RANGE_BUDGET_BYTES - 100, "two shards' worth"
    [result] = await responder.intake.handle_payload(attack("mx-storm", *attackers))
    assert len(result.queued) == 300
    await drain(responder)

    exchange = responder.exchange
    assert exchange is not None and exchange.calls <= 10
    assert len(managed(sim)) == 2
    assert sorted(blocked(sim)) == sorted(attackers)
    audited = await events(responder)
    assert sum(1 for event, _ in audited if event == "action.executed") == 300
    assert not [e for e in audited if e[0] == "action.failed"]


# Guards ----------------------------------------------------------------------------------------


async def test_refused_addresses_never_reach_exchange_and_are_audited_as_refused(
    responder: Container, sim: SimulatedTenant
) -> None:
    partner = str(ipaddress.ip_network(PARTNER_NETWORK)[10 * 256 + 20])  # 52.96.10.20
    refused = ["10.20.30.40", partner, "185.221.0.0/16"]
    [result] = await responder.intake.handle_payload(attack("mx-1", *refused, ATTACKER))
    await drain(responder)

    assert blocked(sim) == [ATTACKER], "the permitted address is blocked, proving writes ran"
    audited = await events(responder)
    refusals = sorted(target or "" for event, target in audited if event == "action.refused")
    assert refusals == sorted(["10.20.30.40/32", f"{partner}/32", "185.221.0.0/16"])
    sent = repr(sim.exchange_calls)
    for network in ("10.20.30.40", partner, "185.221.0.0"):
        assert network not in sent
    assert {d["decision"] for d in result.as_dict()["actions"]} == {"refused", "execute"}


async def test_junk_in_an_address_never_reaches_exchange(
    responder: Container, sim: SimulatedTenant
) -> None:
    [result] = await responder.intake.handle_payload(attack("mx-1", JUNK, ATTACKER))
    await drain(responder)

    assert blocked(sim) == [ATTACKER]
    assert [s.entity for s in result.plan.skipped] == [JUNK]
    assert not any("Remove-TransportRule *" in repr(params) for _, params in sim.exchange_calls)
    assert "Remove-TransportRule" not in [c for c, _ in sim.exchange_calls]
    assert "185.220.101.9" not in blocked(sim), "no part of the junk was taken for an address"


# Other people's rules and concurrent writers ---------------------------------------------------


async def test_the_mail_teams_own_rule_is_never_written(
    responder: Container, sim: SimulatedTenant
) -> None:
    sim.add_transport_rule(FOREIGN_RULE)
    await responder.intake.handle_payload(attack("mx-1", ATTACKER, OTHER_ATTACKER))
    await drain(responder)
    await queue_of(responder).send([engineer_unblock(f"{ATTACKER}/32", "chg-1")])
    await queue_of(responder).send([engineer_unblock(f"{OTHER_ATTACKER}/32", "chg-2")])
    await drain(responder)

    assert managed(sim) == {}, "both blocks were lifted, so the product did write"
    foreign = FOREIGN_RULE["Name"].lower()
    touched = [
        (cmdlet, params)
        for cmdlet, params in writes(sim)
        if str(params.get("Identity", params.get("Name", ""))).lower() == foreign
    ]
    assert touched == []
    assert rule_named(sim, FOREIGN_RULE["Name"])["SenderIpRanges"] == ["52.96.10.0/24"]


async def test_a_rule_named_like_ours_without_our_mark_is_left_alone_and_blocks_still_work(
    responder: Container, sim: SimulatedTenant
) -> None:
    impostor = {
        "Name": SHARD_1,
        "Comments": "Copied from the responder's rule by the mail team; ours now.",
        "SenderIpRanges": ["52.96.10.0/24"],
    }
    sim.add_transport_rule(impostor)
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)

    assert rule_named(sim, SHARD_1)["SenderIpRanges"] == ["52.96.10.0/24"]
    assert not [p for c, p in writes(sim) if c != "New-TransportRule" and p["Identity"] == SHARD_1]
    outcome = (await audit(responder))[-1]
    assert outcome.event == "action.executed", outcome.result.get("error")
    assert blocked(sim) == [ATTACKER]


async def test_a_shard_changed_between_our_read_and_our_write_restarts_the_pass(
    responder: Container, sim: SimulatedTenant
) -> None:
    sim.add_transport_rule({"Name": SHARD_1, "Comments": MARK, "SenderIpRanges": [ATTACKER]})
    theirs = "185.220.102.77"
    gets: list[int] = []

    def edit_before_the_reread(tenant: SimulatedTenant) -> None:
        gets.append(1)
        if len(gets) == 2:  # the first Get is the list, the second the re-read before writing
            tenant.edit_transport_rule(SHARD_1, SenderIpRanges=[ATTACKER, theirs])

    sim.before_cmdlet("Get-TransportRule", edit_before_the_reread, times=2)
    await responder.intake.handle_payload(attack("mx-1", OTHER_ATTACKER))
    await drain(responder)

    assert len(gets) == 2, "the out-of-band edit landed"
    assert sorted(blocked(sim)) == sorted([ATTACKER, OTHER_ATTACKER, theirs])
    sets = [p["SenderIpRanges"] for c, p in writes(sim) if c == "Set-TransportRule"]
    assert len(sets) == 1 and theirs in sets[0], "the stale plan was never written"
    assert await events(responder) == [
        ("action.planned", f"{OTHER_ATTACKER}/32"),
        ("action.executed", f"{OTHER_ATTACKER}/32"),
    ]


@pytest.mark.parametrize("status", [400, 500])
async def test_the_first_block_creates_its_shard_however_exchange_answers_a_missing_one(
    responder: Container, sim: SimulatedTenant, status: int
) -> None:
    """Live tenants answer a missing rule with 400 (sometimes 500), naming
    ManagementObjectNotFoundException only in the error's details."""
    sim.answer_exchange_not_found_with(status)
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    assert await drain(responder) == 1, "one delivery: no redelivery loop"

    assert managed(sim) == {SHARD_1: [ATTACKER]}
    assert [c for c, _ in sim.exchange_calls] == [
        "Get-TransportRule",  # the list
        "Get-TransportRule",  # is shard 001 there? (not found)
        "New-TransportRule",
        "Get-TransportRule",  # the proof
    ]
    assert await events(responder) == [
        ("action.planned", f"{ATTACKER}/32"),
        ("action.executed", f"{ATTACKER}/32"),
    ]


async def test_a_shard_removed_right_before_our_set_restarts_the_pass(
    responder: Container, sim: SimulatedTenant
) -> None:
    """Someone deletes shard 001 right before our Set-TransportRule; Exchange answers
    not-found (400), and the pass starts over from a fresh read instead of failing."""
    sim.add_transport_rule({"Name": SHARD_1, "Comments": MARK, "SenderIpRanges": [ATTACKER]})
    sim.before_cmdlet("Set-TransportRule", lambda tenant: tenant.remove_transport_rule(SHARD_1))
    await responder.intake.handle_payload(attack("mx-1", OTHER_ATTACKER))
    await drain(responder)

    outcome = (await audit(responder))[-1]
    assert outcome.event == "action.executed", outcome.result.get("error")
    assert managed(sim) == {SHARD_1: [OTHER_ATTACKER]}
    assert [c for c, _ in writes(sim)] == ["Set-TransportRule", "New-TransportRule"]


async def test_a_shard_removed_right_before_our_remove_restarts_the_pass(
    responder: Container, sim: SimulatedTenant
) -> None:
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)
    sim.before_cmdlet("Remove-TransportRule", lambda tenant: tenant.remove_transport_rule(SHARD_1))
    await responder.queue.send([engineer_unblock(f"{ATTACKER}/32", "CHG-1")])
    await drain(responder)

    outcome = (await audit(responder))[-1]
    assert (outcome.event, outcome.kind) == ("action.executed", "unblock_ip"), outcome.result
    assert managed(sim) == {}
    assert [c for c, _ in writes(sim)] == ["New-TransportRule", "Remove-TransportRule"]


async def test_exchange_warnings_are_kept_in_the_outcome(
    responder: Container, sim: SimulatedTenant
) -> None:
    sim.add_exchange_warning("New-TransportRule", "The rule will take effect within 30 minutes.")
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)

    executed = (await audit(responder))[-1]
    assert executed.event == "action.executed"
    assert executed.result["after"]["exchange_warnings"] == [
        "New-TransportRule: The rule will take effect within 30 minutes."
    ]


async def test_another_writer_creating_the_same_shard_first_restarts_the_pass(
    responder: Container, sim: SimulatedTenant
) -> None:
    """Another instance of the app flushes at the same moment and creates shard 001 between
    our list and our New-TransportRule."""
    theirs = "185.220.102.77"

    def create_it_first(tenant: SimulatedTenant) -> None:
        tenant.add_transport_rule({"Name": SHARD_1, "Comments": MARK, "SenderIpRanges": [theirs]})

    sim.before_cmdlet("New-TransportRule", create_it_first)
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)

    outcome = (await audit(responder))[-1]
    assert outcome.event == "action.executed", outcome.result.get("error")
    assert sorted(blocked(sim)) == sorted([ATTACKER, theirs])


async def test_a_full_rule_is_not_written_and_new_addresses_get_a_new_shard(
    responder: Container, sim: SimulatedTenant
) -> None:
    params: dict[str, Any] = {
        "Name": SHARD_1,
        "Comments": MARK,
        "SenderIpRanges": [],
        "Mode": "Enforce",
        "RejectMessageEnhancedStatusCode": REJECT_STATUS_CODE,
        "RejectMessageReasonText": REJECT_REASON,
        "DeleteMessage": False,
        "StopRuleProcessing": True,
    }
    for address in public_addresses(1000):
        grown = {**params, "SenderIpRanges": [*params["SenderIpRanges"], address]}
        if rule_size(grown) > RULE_SIZE_LIMIT:
            break
        params = grown
    assert rule_size(params) > RULE_SIZE_LIMIT - 20, "the rule is at Exchange's size limit"
    sim.add_transport_rule(params)
    newcomer = "185.221.7.7"

    await responder.intake.handle_payload(attack("mx-1", newcomer))
    await drain(responder)

    assert managed(sim)[SHARD_2] == [newcomer]
    assert rule_named(sim, SHARD_1)["SenderIpRanges"] == params["SenderIpRanges"]
    assert [(c, p.get("Name")) for c, p in writes(sim)] == [("New-TransportRule", SHARD_2)]
    assert ("action.executed", f"{newcomer}/32") in await events(responder)


# Exchange failing ------------------------------------------------------------------------------


async def test_throttling_and_outages_are_retried_later_and_block_exactly_once(
    responder: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    sim.add_fault(Fault(status=503, cmdlet="Get-TransportRule"))
    sim.add_fault(Fault(status=429, cmdlet="New-TransportRule"))
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    deliveries = await LocalHost().pump_through_time(
        queue_of(responder), clock, until=timedelta(hours=1)
    )

    assert deliveries == 3
    assert blocked(sim) == [ATTACKER]
    assert [c for c, _ in writes(sim)] == ["New-TransportRule", "New-TransportRule"]
    assert await events(responder) == [
        ("action.planned", f"{ATTACKER}/32"),
        ("action.executed", f"{ATTACKER}/32"),
    ]
    assert queue_of(responder).dead_letters == []


async def test_a_permanent_refusal_is_audited_as_failed_and_a_later_alert_blocks_again(
    responder: Container, sim: SimulatedTenant
) -> None:
    sim.add_fault(Fault(status=403, cmdlet="New-TransportRule"))
    [first] = await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    assert await drain(responder) == 1, "not retried"

    assert blocked(sim) == []
    [failure] = [e for e in await audit(responder) if e.event == "action.failed"]
    assert failure.action_id == first.queued[0] and "403" in failure.result["error"]
    entry = await responder.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.FAILED

    [again] = await responder.intake.handle_payload(attack("mx-2", ATTACKER))
    assert len(again.queued) == 1 and again.queued != first.queued
    await drain(responder)
    assert blocked(sim) == [ATTACKER]
    assert [event for event, _ in await events(responder)] == [
        "action.planned",
        "action.failed",
        "action.planned",
        "action.executed",
    ]


# Unblocking ------------------------------------------------------------------------------------


async def test_an_engineers_unblock_removes_the_address_then_the_emptied_shard(
    responder: Container, sim: SimulatedTenant
) -> None:
    await responder.intake.handle_payload(attack("mx-1", ATTACKER, OTHER_ATTACKER))
    await drain(responder)
    assert sorted(blocked(sim)) == [ATTACKER, OTHER_ATTACKER]
    queue = queue_of(responder)

    first = engineer_unblock(f"{ATTACKER}/32", "chg-1")
    await queue.send([first])
    await drain(responder)
    assert managed(sim) == {SHARD_1: [OTHER_ATTACKER]}

    second = engineer_unblock(f"{OTHER_ATTACKER}/32", "chg-2")
    await queue.send([second])
    await drain(responder)
    assert managed(sim) == {}
    assert [c for c, _ in writes(sim)] == [
        "New-TransportRule",
        "Set-TransportRule",
        "Remove-TransportRule",
    ]
    unblocks = [e for e in await audit(responder) if e.kind == "unblock_ip"]
    assert [(str(e.event), e.action_id, e.actor.kind) for e in unblocks] == [
        ("action.executed", first.id, "engineer"),
        ("action.executed", second.id, "engineer"),
    ]
    entry = await responder.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.UNBLOCKED


async def test_an_unblock_of_an_address_nobody_blocked_changes_nothing(
    responder: Container, sim: SimulatedTenant
) -> None:
    await queue_of(responder).send([engineer_unblock(f"{ATTACKER}/32", "chg-1")])
    await drain(responder)
    assert writes(sim) == []
    assert [str(e.event) for e in await audit(responder)] == ["action.already_done"]


async def test_an_unblock_arriving_while_the_block_is_pending_is_not_lost(
    responder: Container, sim: SimulatedTenant
) -> None:
    """The block is queued but not yet executed (say, waiting for a redelivery) when an
    engineer lifts it; the engineer's request must win or at least be carried out."""
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    unblock = engineer_unblock(f"{ATTACKER}/32", "chg-1")
    host = LocalHost()
    await host.functions["execute_action"](_message(unblock))
    await drain(responder)

    assert blocked(sim) == [], "the engineer asked for the address to be unblocked"
    assert unblock.id in [e.action_id for e in await audit(responder)], "the unblock is audited"


# Expiry ----------------------------------------------------------------------------------------


async def test_a_temporary_block_schedules_its_unblock_and_lifts_when_due(
    responder: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    [result] = await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)
    executed = (await audit(responder))[-1]
    expires_at = datetime.fromisoformat(executed.result["after"]["expires_at"])
    assert timedelta(hours=23) < expires_at - clock() <= DAY

    queue = queue_of(responder)
    [(due, message_id)] = queue.scheduled
    assert due == expires_at and message_id not in result.queued

    clock.advance(DAY - timedelta(minutes=5))
    assert await drain(responder) == 0
    assert blocked(sim) == [ATTACKER]

    clock.advance(timedelta(minutes=10))
    assert await drain(responder) == 1
    assert managed(sim) == {}
    [lifted] = [e for e in await audit(responder) if e.kind == "unblock_ip"]
    assert (lifted.event, lifted.action_id) == ("action.executed", message_id)
    assert "expired" in lifted.reason


async def test_the_sweep_lifts_an_expired_block_whose_scheduled_unblock_was_lost(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> None:
    async with wired(sim, azurite, clock, unreliable=True) as responder:
        await responder.intake.handle_payload(attack("mx-1", ATTACKER))
        await drain(responder)
        queue = queue_of(responder)
        assert isinstance(queue, UnreliableQueue) and len(queue.lost) == 1

        clock.advance(DAY + timedelta(minutes=1))
        assert await drain(responder) == 0
        assert blocked(sim) == [ATTACKER], "nothing came due"

        await LocalHost().fire_timer("sweep_ip_blocks")
        assert await drain(responder) == 1
        assert managed(sim) == {}
        [lifted] = [e for e in await audit(responder) if e.kind == "unblock_ip"]
        assert lifted.event == "action.executed"


async def test_a_sweep_that_could_not_queue_its_unblocks_is_made_good_by_the_next(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> None:
    async with wired(sim, azurite, clock, unreliable=True) as responder:
        await responder.intake.handle_payload(attack("mx-1", ATTACKER))
        await drain(responder)
        clock.advance(DAY + timedelta(minutes=1))
        queue = queue_of(responder)
        assert isinstance(queue, UnreliableQueue)

        queue.failing_sends = 1
        with pytest.raises(ConnectionError):
            await LocalHost().fire_timer("sweep_ip_blocks")
        clock.advance(timedelta(minutes=5))
        await LocalHost().fire_timer("sweep_ip_blocks")
        await drain(responder)
        assert blocked(sim) == [], "the expired block is still in force"


async def test_the_sweep_does_not_lift_a_block_before_it_expires(
    responder: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)
    clock.advance(DAY - timedelta(minutes=5))
    await LocalHost().fire_timer("sweep_ip_blocks")
    assert await drain(responder) == 0
    assert blocked(sim) == [ATTACKER]


async def test_the_sweep_retries_an_expiry_unblock_that_failed_when_due(
    responder: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    """Exchange is down for the whole of the scheduled unblock's retries; once it is back,
    the next sweep must still lift the expired block."""
    await responder.intake.handle_payload(attack("mx-1", ATTACKER))
    await drain(responder)
    clock.advance(DAY + timedelta(minutes=1))
    sim.add_fault(Fault(status=503, cmdlet="Get-TransportRule", times=None))
    await LocalHost().pump_through_time(queue_of(responder), clock, until=timedelta(hours=2))
    sim.clear_faults()
    assert [str(e.event) for e in await audit(responder) if e.kind == "unblock_ip"] == [
        "action.failed"
    ]
    assert blocked(sim) == [ATTACKER]

    clock.advance(timedelta(minutes=5))
    await LocalHost().fire_timer("sweep_ip_blocks")
    await drain(responder)
    assert blocked(sim) == [], "the expired block is still in force"


# Dry run ---------------------------------------------------------------------------------------


async def test_dry_run_reads_the_rules_writes_nothing_and_audits_the_call_it_would_make(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> None:
    async with wired(sim, azurite, clock, RESPONDER_DRY_RUN="true") as dry:
        await dry.intake.handle_payload(attack("mx-1", ATTACKER))
        await drain(dry)

        assert sim.transport_rules == []
        assert {c for c, _ in sim.exchange_calls} == {"Get-TransportRule"}
        [plan] = [e for e in await audit(dry) if e.event == "action.dry_run"]
        assert plan.target == f"{ATTACKER}/32"
        assert plan.result["before"] == {"blocked": False}
        assert plan.result["calls"] == [f"New-TransportRule -Name '{SHARD_1}' (1 ranges)"]
        assert queue_of(dry).scheduled == [], "nothing to expire"
        entry = await dry.blocks.get(f"{ATTACKER}/32")
        assert entry is None or entry.state not in BlockState.ACTIVE


async def test_a_dry_run_keeps_exchanges_warnings_in_its_outcome(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> None:
    sim.add_exchange_warning("Get-TransportRule", "The DlpPolicy parameter is deprecated.")
    async with wired(sim, azurite, clock, RESPONDER_DRY_RUN="true") as dry:
        await dry.intake.handle_payload(attack("mx-1", ATTACKER))
        await drain(dry)
        [plan] = [e for e in await audit(dry) if e.event == "action.dry_run"]
    assert plan.result["after"] == {
        "exchange_warnings": ["Get-TransportRule: The DlpPolicy parameter is deprecated."]
    }


# Volume ----------------------------------------------------------------------------------------


async def test_an_alert_naming_thousands_of_addresses_is_handled_without_error(
    responder: Container, sim: SimulatedTenant
) -> None:
    named = public_addresses(2000)
    [result] = await responder.intake.handle_payload(attack("mx-flood", *named))
    planned = [a.target for a in result.plan.actions]
    assert len(planned) + len(result.plan.skipped) == len(named), "every address is accounted for"
    await drain(responder)

    assert sorted(blocked(sim)) == sorted(exchange_range(t) for t in planned)
    exchange = responder.exchange
    assert exchange is not None
    shards = len(managed(sim))
    assert exchange.calls <= 2 * shards + 2, "a read and a write per shard, two listings"
    audited = await events(responder)
    assert sum(1 for e, _ in audited if e == "action.executed") == len(planned)
    assert not [e for e in audited if e[0] == "action.failed"]
    cost = sum(len(exchange_range(t)) + 3 for t in planned)
    assert shards <= math.ceil(cost / (RANGE_BUDGET_BYTES - 20)), "shards are filled up"


def _message(action: ActionRequest) -> Any:
    from azure.functions.servicebus import ServiceBusMessage

    return ServiceBusMessage(
        body=action.model_dump_json().encode(),
        message_id=action.id,
        delivery_count=1,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )


async def test_a_new_alert_during_an_unblock_keeps_the_attacker_blocked(
    responder: Container, sim: SimulatedTenant
) -> None:
    await responder.intake.handle_payload(attack("wave-1", ATTACKER))
    await drain(responder)
    entry = await responder.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.state == BlockState.BLOCKED
    first = entry.generation
    unblock = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.UNBLOCK_IP, ATTACKER, "engineer:42"),
        kind=ActionKind.UNBLOCK_IP,
        target=ATTACKER,
        reason="false positive, says the mail team",
        requested_by=Actor(kind="engineer", name="oncall@contoso.com"),
    )
    assert await responder.blocks.update(entry, BlockState.UNBLOCKING, unblock=unblock)
    # The attack goes on while the unblock is under way: a new generation starts.
    [result] = await responder.intake.handle_payload(attack("wave-2", ATTACKER))
    assert result.queued, "the new alert is not coalesced into the unblock"
    await drain(responder)
    entry = await responder.blocks.get(f"{ATTACKER}/32")
    assert entry is not None and entry.generation == first + 1 and entry.state == BlockState.BLOCKED
    assert ATTACKER in blocked(sim)
