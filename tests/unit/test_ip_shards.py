"""Shard planning for the IP blocklist, pure: which transport rules a set of adds and removes
creates, rewrites or removes, and which rules count as the product's own."""

from __future__ import annotations

import math

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.actions.ip_blocks import (
    COMMENT_MARK,
    MAX_SHARDS,
    ORGANIZATION_RULE_LIMIT,
    RANGE_BUDGET_BYTES,
    RULE_PREFIX,
    ShardChange,
    exchange_range,
    is_managed,
    plan_shards,
    same_ranges,
    shard_name,
)
from shared.errors import PermanentError
from shared.ports import TransportRule

MARK = f"{COMMENT_MARK}: sender IP blocklist. Edits here are overwritten."


def cost(ranges: list[str] | tuple[str, ...]) -> int:
    """What a list of ranges counts against the budget: the text plus quotes and separator."""
    return sum(len(r) + 3 for r in ranges)


def shard(mode: str, number: int, ranges: list[str]) -> TransportRule:
    return TransportRule(name=shard_name(mode, number), ranges=tuple(ranges), comments=MARK)


def exactly(total_cost: int, second: int = 220) -> list[str]:
    """Distinct public addresses in 185.`second`.0.0/16 whose costs add up to exactly
    `total_cost`: 15-character ones (cost 18) and as many 14-character ones (cost 17) as
    needed to hit the total."""
    count = math.ceil(total_cost / 18)
    shorter = count * 18 - total_cost
    wide = [f"185.{second}.{100 + n // 150}.{100 + n % 150}" for n in range(count - shorter)]
    narrow = [f"185.{second}.{100 + n // 90}.{10 + n % 90}" for n in range(shorter)]
    ranges = wide + narrow
    assert len(set(ranges)) == len(ranges) and cost(ranges) == total_cost
    return ranges


def applied(rules: list[TransportRule], changes: list[ShardChange]) -> dict[str, list[str]]:
    """The shards after the planned writes, by name."""
    shards = {r.name: list(r.ranges) for r in rules}
    for change in changes:
        if change.ranges:
            shards[change.name] = list(change.ranges)
        else:
            del shards[change.name]
    return shards


# exchange_range ------------------------------------------------------------------------------


def test_a_single_address_is_written_without_its_host_prefix() -> None:
    assert exchange_range("185.220.101.47/32") == "185.220.101.47"
    assert exchange_range("2a0b:f4c2::1/128") == "2a0b:f4c2::1"


def test_networks_keep_their_prefix() -> None:
    assert exchange_range("185.220.101.0/24") == "185.220.101.0/24"
    assert exchange_range("185.220.101.46/31") == "185.220.101.46/31"
    assert exchange_range("2a0b:f4c2::/48") == "2a0b:f4c2::/48"
    assert exchange_range("2a0b:f4c2::/127") == "2a0b:f4c2::/127"


# plan_shards: adds ---------------------------------------------------------------------------


def test_new_addresses_go_into_one_new_shard() -> None:
    changes = plan_shards([], {"185.220.101.9": "reject", "185.220.101.10": "reject"}, set())
    assert len(changes) == 1
    [change] = changes
    assert change.name == f"{RULE_PREFIX} reject 001"
    assert change.mode == "reject" and change.read is None
    assert sorted(change.ranges) == ["185.220.101.10", "185.220.101.9"]
    assert change.call.startswith("New-TransportRule")


def test_an_existing_shard_is_filled_to_the_budget_then_a_second_one_is_created() -> None:
    first, second = "185.222.102.1", "185.222.102.2"
    kept = exactly(RANGE_BUDGET_BYTES - cost([first]))
    full_enough = shard("reject", 1, kept)
    changes = plan_shards([full_enough], {first: "reject", second: "reject"}, set())
    by_name = {c.name: c for c in changes}
    assert set(by_name) == {shard_name("reject", 1), shard_name("reject", 2)}
    grown = by_name[shard_name("reject", 1)]
    assert grown.ranges == [*kept, first]
    assert cost(grown.ranges) == RANGE_BUDGET_BYTES
    assert grown.read == full_enough and grown.call.startswith("Set-TransportRule")
    created = by_name[shard_name("reject", 2)]
    assert created.ranges == [second] and created.read is None


def test_a_shard_over_the_budget_is_left_alone() -> None:
    over = shard("reject", 1, exactly(RANGE_BUDGET_BYTES + 100))
    changes = plan_shards([over], {"185.222.103.1": "reject"}, set())
    assert [(c.name, c.ranges, c.read) for c in changes] == [
        (shard_name("reject", 2), ["185.222.103.1"], None)
    ]


def test_addresses_already_present_are_not_added_twice() -> None:
    rules = [
        shard("reject", 1, ["185.220.101.9", "185.220.101.10"]),
        shard("delete", 1, ["185.220.101.11"]),
    ]
    adds = {"185.220.101.9": "reject", "185.220.101.11": "reject", "185.220.101.10": "delete"}
    assert plan_shards(rules, adds, set()) == []


def test_block_modes_go_to_separate_shard_families() -> None:
    changes = plan_shards([], {"185.220.101.9": "reject", "185.220.101.10": "delete"}, set())
    assert sorted((c.name, c.mode, tuple(c.ranges)) for c in changes) == [
        (f"{RULE_PREFIX} delete 001", "delete", ("185.220.101.10",)),
        (f"{RULE_PREFIX} reject 001", "reject", ("185.220.101.9",)),
    ]


def test_a_new_shard_takes_the_lowest_free_number_of_its_family() -> None:
    full = RANGE_BUDGET_BYTES
    rules = [
        shard("reject", 1, exactly(full)),
        shard("reject", 3, exactly(full, second=221)),
        shard("delete", 2, ["185.222.109.1"]),
    ]
    changes = plan_shards(rules, {"185.222.110.1": "reject", "185.222.110.2": "delete"}, set())
    assert sorted((c.name, c.read is None, tuple(c.ranges)) for c in changes) == [
        (shard_name("delete", 2), False, ("185.222.109.1", "185.222.110.2")),
        (shard_name("reject", 2), True, ("185.222.110.1",)),
    ]


# plan_shards: removes ------------------------------------------------------------------------


def test_removes_drop_addresses_and_an_emptied_shard_is_removed() -> None:
    rules = [
        shard("reject", 1, ["185.220.101.9", "185.220.101.10"]),
        shard("reject", 2, ["185.220.101.11"]),
    ]
    changes = plan_shards(rules, {}, {"185.220.101.9", "185.220.101.11", "185.220.101.99"})
    by_name = {c.name: c for c in changes}
    assert by_name[shard_name("reject", 1)].ranges == ["185.220.101.10"]
    assert by_name[shard_name("reject", 1)].call.startswith("Set-TransportRule")
    removed = by_name[shard_name("reject", 2)]
    assert removed.ranges == [] and removed.read == rules[1]
    assert removed.call.startswith("Remove-TransportRule")
    assert len(changes) == 2


def test_removing_an_address_nobody_blocked_writes_nothing() -> None:
    rules = [shard("reject", 1, ["185.220.101.9"])]
    assert plan_shards(rules, {}, {"185.220.101.10"}) == []


# is_managed ----------------------------------------------------------------------------------


def test_a_rule_is_ours_only_with_our_name_and_our_comment_mark() -> None:
    ours = shard("reject", 1, ["185.220.101.9"])
    assert is_managed(ours)
    named_like_ours = TransportRule(ours.name, ours.ranges, comments="Owned by the mail team.")
    assert not is_managed(named_like_ours)
    unmarked = TransportRule(ours.name, ours.ranges, comments="")
    assert not is_managed(unmarked)
    marked_elsewhere = TransportRule("Partner relay", ours.ranges, comments=MARK)
    assert not is_managed(marked_elsewhere)


# the property ---------------------------------------------------------------------------------

# Ranges of realistic shapes and lengths, so that a few hundred of them overflow a shard.
RANGE = st.one_of(
    st.integers(0, 2**18 - 1).map(lambda n: f"185.{220 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"),
    st.integers(0, 1023).map(lambda n: f"185.{220 + (n >> 8)}.{n & 255}.0/24"),
    st.integers(0, 2**32 - 1).map(
        lambda n: f"2a0b:f4c2:9a3e:1b7c:5d2f:8e41:{n >> 16:x}:{n & 0xFFFF:x}"
    ),
    st.integers(1, 0xFFFF).map(lambda n: f"2a0b:f4c2:{n:x}::/48"),
)
MODE_NAMES = ("reject", "delete")
MODE = st.sampled_from(MODE_NAMES)
# What happens to a range: already blocked and kept, already blocked and removed, requested again
# while blocked, newly requested, or removed although nobody blocked it.
FATE = st.sampled_from(["kept", "removed", "again", "added", "stray-remove"])


@st.composite
def blocklists(
    draw: st.DrawFn,
) -> tuple[list[TransportRule], dict[str, str], set[str]]:
    size = draw(st.integers(0, 450))
    universe = draw(st.lists(RANGE, unique=True, min_size=size, max_size=size))
    numbers = {
        mode: draw(st.lists(st.integers(1, 9), unique=True, max_size=4)) for mode in MODE_NAMES
    }
    existing: dict[tuple[str, int], list[str]] = {
        (mode, n): [] for mode, nums in numbers.items() for n in nums
    }
    adds: dict[str, str] = {}
    removes: set[str] = set()
    for rng in universe:
        fate = draw(FATE)
        if fate in ("kept", "removed", "again") and existing:
            key = draw(st.sampled_from(sorted(existing)))
            if cost([*existing[key], rng]) > RANGE_BUDGET_BYTES:
                continue
            existing[key].append(rng)
            if fate == "removed":
                removes.add(rng)
            elif fate == "again":
                adds[rng] = draw(MODE)
        elif fate == "stray-remove":
            removes.add(rng)
        elif fate == "added":
            adds[rng] = draw(MODE)
    # An empty rule cannot exist in Exchange (SenderIpRanges is its only condition).
    rules = [shard(mode, n, ranges) for (mode, n), ranges in existing.items() if ranges]
    return rules, adds, removes


@settings(max_examples=100, deadline=None)
@given(blocklists())
def test_planned_writes_yield_exactly_the_wanted_blocklist(
    case: tuple[list[TransportRule], dict[str, str], set[str]],
) -> None:
    rules, adds, removes = case
    before = {rng for rule in rules for rng in rule.ranges}
    changes = plan_shards(rules, adds, removes)
    after = applied(rules, changes)
    placed = [rng for ranges in after.values() for rng in ranges]
    event(f"shards after: {min(len(after), 4)}+")
    event(f"writes: {min(len(changes), 4)}+")

    assert set(placed) == (before | set(adds)) - removes
    assert len(placed) == len(set(placed)), "a range sits in more than one shard"
    for name, ranges in after.items():
        assert ranges, f"{name} is left empty"
        assert cost(ranges) <= RANGE_BUDGET_BYTES, f"{name} is over the budget"
    old = {rule.name: rule for rule in rules}
    for change in changes:
        assert change.read == old.get(change.name), "a write must carry what it read"
        assert change.read is None or tuple(change.ranges) != change.read.ranges, "no-op write"
        assert change.name.startswith(f"{RULE_PREFIX} {change.mode} ")
    for rng, mode in adds.items():
        if rng not in before:
            [home] = [name for name, ranges in after.items() if rng in ranges]
            assert home.startswith(f"{RULE_PREFIX} {mode} "), f"{rng} landed outside {mode}"


# same_ranges: comparing what was written with what Exchange shows -----------------------------


def test_ranges_are_the_same_however_exchange_writes_them_back() -> None:
    written = ["185.220.101.9", "2a0b:f4c2::1", "185.220.101.0/24", "2a0b:f4c2:2::/48"]
    shown = ["2A0B:F4C2:2::/48", "185.220.101.9/32", "185.220.101.0/24", "2a0b:f4c2:0::1/128"]
    assert same_ranges(written, shown)
    assert same_ranges(tuple(shown), tuple(written))
    # a network written with its host bits set is the network itself
    assert same_ranges(["185.220.101.9/24"], ["185.220.101.0/24"])


def test_ranges_that_differ_are_not_the_same() -> None:
    assert not same_ranges(["185.220.101.9"], ["185.220.101.10"])
    assert not same_ranges(["185.220.101.9"], ["185.220.101.9", "185.220.101.10"])
    assert not same_ranges(["185.220.101.0/24"], ["185.220.101.0/25"])
    assert not same_ranges(["185.220.101.9"], [])


def test_text_that_is_no_address_is_compared_without_case_or_surrounding_space() -> None:
    assert same_ranges([" Mail-Edge "], ["mail-edge"])
    assert not same_ranges(["mail-edge"], ["mail-edge-2"])


# shard names and modes ------------------------------------------------------------------------


def test_shards_are_numbered_with_three_digits() -> None:
    assert shard_name("reject", 7) == "M365 Responder IP block reject 007"
    assert shard_name("delete", 120) == "M365 Responder IP block delete 120"


def test_a_rewritten_shard_keeps_the_mode_its_name_gives() -> None:
    rules = [shard("delete", 4, ["185.220.101.9"]), shard("reject", 2, ["185.220.101.10"])]
    changes = plan_shards(rules, {"185.220.101.11": "delete"}, {"185.220.101.10"})
    assert sorted((c.name, c.mode, c.read is not None) for c in changes) == [
        (shard_name("delete", 4), "delete", True),
        (shard_name("reject", 2), "reject", True),
    ]


# new shards next to other rules -----------------------------------------------------------------


def test_a_new_shard_never_takes_the_name_of_a_rule_that_is_not_ours() -> None:
    # The mail team made a rule with our name (any case) and no comment mark: it is not ours,
    # so it is not in `rules`, and the new shard goes around it.
    taken = frozenset({shard_name("reject", 1).lower(), "partner relay"})
    [change] = plan_shards([], {"185.220.101.9": "reject"}, set(), taken)
    assert change.name == shard_name("reject", 2) and change.read is None


def test_the_organization_limit_of_transport_rules_is_kept() -> None:
    others = frozenset(f"mail team rule {n}" for n in range(ORGANIZATION_RULE_LIMIT - 1))
    [change] = plan_shards([], {"185.220.101.9": "reject"}, set(), others)
    assert change.name == shard_name("reject", 1)
    full = others | {"one more"}
    with pytest.raises(PermanentError, match=f"300 of {ORGANIZATION_RULE_LIMIT} exist"):
        plan_shards([], {"185.220.101.9": "reject"}, set(), full)


def test_the_limit_counts_our_own_shards_too() -> None:
    ours = [shard("reject", 1, exactly(RANGE_BUDGET_BYTES))]
    others = frozenset(f"mail team rule {n}" for n in range(ORGANIZATION_RULE_LIMIT - 1))
    with pytest.raises(PermanentError, match="no room for another transport rule"):
        plan_shards(ours, {"185.222.110.1": "reject"}, set(), others)


def test_no_more_shards_of_one_mode_than_the_blocklist_allows() -> None:
    almost = frozenset(shard_name("reject", n).lower() for n in range(1, MAX_SHARDS))
    [change] = plan_shards([], {"185.220.101.9": "reject"}, set(), almost)
    assert change.name == shard_name("reject", MAX_SHARDS)
    every = almost | {shard_name("reject", MAX_SHARDS).lower()}
    with pytest.raises(PermanentError, match=f"more than {MAX_SHARDS} transport rules"):
        plan_shards([], {"185.220.101.9": "reject"}, set(), every)
    # the other mode still has room
    [other] = plan_shards([], {"185.220.101.9": "delete"}, set(), every)
    assert other.name == shard_name("delete", 1)
