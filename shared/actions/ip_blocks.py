"""IP blocks at the mail edge: the product's own Exchange Online transport rules as a blocklist.

The block registry holds the desired state (which networks are pending, blocked, being
unblocked); `IpBlocklist.flush` brings the transport rules in line with it in one pass, so a
storm of requests costs one read-modify-write per rule shard, not one call per address.

The blocklist is sharded across as many rules as needed: Exchange allows 8 KB per rule and 300
rules per organization, and the shards are filled to a conservative byte budget. Only rules
whose name and comments mark them as the product's are ever read for ranges or written.
Writes are read-modify-write: each shard is re-read right before it is written, and a change by
anyone else restarts the pass; after writing, the rules are read again to prove that every
address is where it should be.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.errors import NotFoundError, PermanentError, TransientError
from shared.models import ActionKind, ActionOutcome, ActionRequest, Actor, OutcomeStatus
from shared.ports import (
    ActionQueue,
    BlockEntry,
    BlockRegistry,
    BlockState,
    NamedLocations,
    TransportRule,
    TransportRules,
)

logger = logging.getLogger(__name__)

RULE_PREFIX = "M365 Responder IP block"
COMMENT_MARK = "Managed by M365 Responder"
# Exchange's 8 KB covers the whole rule; this budget for the range list leaves ample room for
# the name, comments, reject text and serialization overhead.
RANGE_BUDGET_BYTES = 4096
MAX_SHARDS = 250
# Exchange allows 300 transport rules per organization, the mail team's own included.
ORGANIZATION_RULE_LIMIT = 300
MAX_PASSES = 5
LOCATION_PREFIX = "M365 Responder sign-in block"
LOCATION_CAPACITY = 2000
# A named location cannot be empty, and Entra takes public ranges only (so neither the limited
# broadcast address nor a documentation range will do). When nothing is blocked, a location
# keeps one address of the AS112 direct-delegation block (RFC 7534): globally reachable, and
# announced only by anycast DNS sink servers, which answer reverse lookups and never sign in.
LOCATION_PLACEHOLDER = "192.175.48.1/32"


def exchange_range(network: str) -> str:
    """A single address is written without its /32 or /128, as Exchange shows it."""
    address, _, prefix = network.partition("/")
    return address if prefix in ("32", "128") else network


def same_ranges(left: tuple[str, ...] | list[str], right: tuple[str, ...] | list[str]) -> bool:
    """Equal as sets of networks, however Exchange chose to write them back."""
    return {_canonical(r) for r in left} == {_canonical(r) for r in right}


def _canonical(rule_range: str) -> str:
    try:
        return exchange_range(str(ipaddress.ip_network(rule_range, strict=False)))
    except ValueError:
        return rule_range.strip().lower()


def _cost(rule_range: str) -> int:
    return len(rule_range) + 3


def shard_name(mode: str, number: int) -> str:
    return f"{RULE_PREFIX} {mode} {number:03d}"


def is_managed(rule: TransportRule) -> bool:
    return rule.name.startswith(RULE_PREFIX) and rule.comments.startswith(COMMENT_MARK)


def _mode_of(rule: TransportRule) -> str:
    return rule.name.removeprefix(RULE_PREFIX).split()[0]


@dataclass
class ShardChange:
    """One write to one shard: create it, replace its ranges, or remove it (when empty)."""

    name: str
    mode: str
    ranges: list[str]
    read: TransportRule | None

    @property
    def call(self) -> str:
        if self.read is None:
            return f"New-TransportRule -Name '{self.name}' ({len(self.ranges)} ranges)"
        if not self.ranges:
            return f"Remove-TransportRule -Identity '{self.name}'"
        return f"Set-TransportRule -Identity '{self.name}' ({len(self.ranges)} ranges)"


def plan_shards(
    rules: list[TransportRule],
    adds: dict[str, str],
    removes: set[str],
    taken: frozenset[str] = frozenset(),
) -> list[ShardChange]:
    """The writes that put `adds` (Exchange range -> mode) into, and `removes` out of, the
    managed shards `rules`; new shards avoid the names in `taken` (every rule's name, ours or
    not, lower-cased). Pure: reads nothing, writes nothing."""
    shards = {r.name: list(r.ranges) for r in rules}
    by_name = {r.name: r for r in rules}
    present = {rng for ranges in shards.values() for rng in ranges}
    for name in shards:
        shards[name] = [rng for rng in shards[name] if rng not in removes]
    for rule_range, mode in sorted(adds.items()):
        if rule_range in present and rule_range not in removes:
            continue
        name = _shard_with_room(shards, mode, rule_range, taken)
        shards.setdefault(name, []).append(rule_range)
    changes = []
    for name, ranges in sorted(shards.items()):
        read = by_name.get(name)
        if read is not None and tuple(ranges) == read.ranges:
            continue
        mode = _mode_of(read) if read else name.removeprefix(RULE_PREFIX).split()[0]
        changes.append(ShardChange(name, mode, ranges, read))
    return changes


def _shard_with_room(
    shards: dict[str, list[str]], mode: str, rule_range: str, taken: frozenset[str]
) -> str:
    family = sorted(n for n in shards if n.startswith(f"{RULE_PREFIX} {mode} "))
    for name in family:
        if sum(map(_cost, shards[name])) + _cost(rule_range) <= RANGE_BUDGET_BYTES:
            return name
    used = {n.lower() for n in shards} | taken
    if len(used) >= ORGANIZATION_RULE_LIMIT:
        raise PermanentError(
            f"no room for another transport rule: {len(used)} of {ORGANIZATION_RULE_LIMIT} exist"
        )
    number = next(
        (n for n in range(1, MAX_SHARDS + 1) if shard_name(mode, n).lower() not in used),
        MAX_SHARDS + 1,
    )
    if number > MAX_SHARDS:
        raise PermanentError(f"the IP blocklist needs more than {MAX_SHARDS} transport rules")
    return shard_name(mode, number)


class _ShardChanged(Exception):
    """A shard changed between our read and our write."""


def expiry_unblock(block: ActionRequest, retry_at: datetime | None = None) -> ActionRequest:
    """The unblock that ends a temporary block. Its id depends only on the block, so the
    scheduled message and the sweep's late request for the same block coalesce; a retry after
    a failed unblock gets an id of its own (`retry_at`)."""
    origin = f"expiry:{block.id}" + (f":retry:{retry_at.isoformat()}" if retry_at else "")
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.UNBLOCK_IP, block.target, origin),
        kind=ActionKind.UNBLOCK_IP,
        target=block.target,
        reason=f"temporary block {block.id} expired",
        params={"generation": block.params.get("generation")},
        rule=block.rule,
        alert_id=block.alert_id,
        incident_id=block.incident_id,
        requested_by=Actor(),
    )


@dataclass
class Applied:
    """What a flush did for one request: the request (block or unblock) and its outcome."""

    action: ActionRequest
    outcome: ActionOutcome
    expires_at: datetime | None = None
    follow_up: ActionRequest | None = None  # runs at expires_at (default: the unblock)


Settle = Callable[[], Awaitable[None]]
# Audits outcomes, then runs `settle` (the registry moves on), then closes their ledger rows.
Recorder = Callable[[list[Applied], Settle | None], Awaitable[None]]


class IpBlocklist:
    def __init__(
        self,
        rules: TransportRules,
        registry: BlockRegistry,
        rule_mode: str,
        clock: Callable[[], datetime],
        batch_window_s: float = 0.0,
        locations: NamedLocations | None = None,
        settle: timedelta = timedelta(0),
    ) -> None:
        self._rules = rules
        self._locations = locations
        self._registry = registry
        self._rule_mode = rule_mode
        self._clock = clock
        self._batch_window_s = batch_window_s
        self._lock = asyncio.Lock()
        # A rule write that got no answer (a timeout) may still land: until `settle` has
        # passed, a pass only reads (and records what the rules already show), it does not
        # plan a write from a read that the late write has not reached yet. Noted here and in
        # the registry, so that passes of other workers wait too.
        self._settle = settle
        self._unanswered_at: datetime | None = None

    async def plan(self, action: ActionRequest) -> ActionOutcome:
        """Dry run: read the rules and report the write a real run would make."""
        self._rules.take_warnings()
        managed = [r for r in await self._rules.list_rules() if is_managed(r)]
        rule_range = exchange_range(action.target)
        present = any(rule_range in r.ranges for r in managed)
        if action.kind is ActionKind.BLOCK_IP:
            adds = {rule_range: action.params.get("mode", "reject")}
            changes = plan_shards(managed, adds, set())
        else:
            changes = plan_shards(managed, {}, {rule_range})
        warnings = self._rules.take_warnings()
        return ActionOutcome(
            status=OutcomeStatus.DRY_RUN,
            before={"blocked": present},
            after={"exchange_warnings": warnings} if warnings else {},
            calls=[change.call for change in changes],
        )

    async def unblock(self, action: ActionRequest, record: Recorder) -> list[Applied]:
        """Lift a block: mark the network for removal and flush. A block still pending is
        applied first, so that the unblock always has something definite to lift; an expiry
        meant for an earlier generation of the block lifts nothing."""
        applied: list[Applied] = []
        entry = await self._registry.get(action.target)
        if entry is not None and entry.state == BlockState.PENDING:
            applied += await self.flush(record)
            entry = await self._registry.get(action.target)
        generation = action.params.get("generation")
        stale = generation is not None and entry is not None and entry.generation != generation
        if entry is None or stale or entry.state in (BlockState.UNBLOCKED, BlockState.FAILED):
            nothing = ActionOutcome(
                status=OutcomeStatus.ALREADY_DONE,
                before={"blocked": bool(entry and entry.state == BlockState.BLOCKED)},
                error=f"superseded by generation {entry.generation}" if stale and entry else None,
            )
            await record([Applied(action, nothing)], None)
            return [*applied, Applied(action, nothing)]
        if entry.state == BlockState.BLOCKED:
            if not await self._registry.update(entry, BlockState.UNBLOCKING, unblock=action):
                raise TransientError(f"block registry entry {action.target} changed; retrying")
        applied += await self.flush(record)
        if not any(a.action.id == action.id for a in applied) and (
            entry.unblock is not None and entry.unblock.id != action.id
        ):
            # Another unblock request was already lifting this network.
            done = ActionOutcome(status=OutcomeStatus.ALREADY_DONE, after={"blocked": False})
            await record([Applied(action, done)], None)
            applied.append(Applied(action, done))
        return applied

    async def settle(self, action: ActionRequest, outcome: ActionOutcome) -> None:
        """Move the registry on after `action`'s outcome was audited, unless it moved on
        already: an executed block becomes blocked (until the expiry the outcome names), an
        executed unblock unblocked; a failed block returns to failed (a later alert may try
        again), a failed unblock leaves the network blocked."""
        entry = await self._registry.get(action.target)
        if entry is None:
            return
        executed = outcome.status is OutcomeStatus.EXECUTED
        if action.kind is ActionKind.BLOCK_IP:
            if entry.block.id != action.id or entry.state != BlockState.PENDING:
                return
            if executed:
                expires = outcome.after.get("expires_at")
                expires_at = datetime.fromisoformat(expires) if expires else None
                await self._registry.update(entry, BlockState.BLOCKED, expires_at=expires_at)
            elif outcome.status is OutcomeStatus.FAILED:
                await self._registry.update(entry, BlockState.FAILED)
            return
        if entry.unblock is None or entry.unblock.id != action.id:
            return
        if entry.state == BlockState.UNBLOCKING:
            if executed:
                await self._registry.update(entry, BlockState.UNBLOCKED)
            elif outcome.status is OutcomeStatus.FAILED:
                await self._registry.update(entry, BlockState.BLOCKED)

    async def confirm(self, action: ActionRequest) -> Applied | None:
        """Before a request is recorded as failed: read the rules, and if they show what it
        asked for (an earlier attempt's write landed, its response did not), its executed
        outcome, confirmed by that read."""
        entry = await self._registry.get(action.target)
        rule_range = _canonical(exchange_range(action.target))
        present = any(
            _canonical(rng) == rule_range
            for rule in await self._rules.list_rules()
            if is_managed(rule)
            for rng in rule.ranges
        )
        if action.params.get("signin_block"):
            # The sign-in half is part of the request: the rules alone confirm nothing.
            at_signin = await self._in_locations(action.target)
            if at_signin is None or at_signin != (action.kind is ActionKind.BLOCK_IP):
                return None
        note = "confirmed by reading the transport rules after an error"
        if action.kind is ActionKind.BLOCK_IP and present:
            if entry is None or entry.block.id != action.id:
                return None
            ttl = action.params.get("ttl_minutes")
            expires = self._clock() + timedelta(minutes=int(ttl)) if ttl else None
            after = {"blocked": True, "expires_at": expires, "note": note}
            return Applied(action, _executed({"blocked": False}, after, [], []), expires)
        if action.kind is ActionKind.UNBLOCK_IP and not present and entry is not None:
            if entry.unblock is None or entry.unblock.id != action.id:
                return None
            after = {"blocked": False, "note": note}
            return Applied(action, _executed({"blocked": True}, after, [], []))
        return None

    async def flush(self, record: Recorder) -> list[Applied]:
        """Apply every pending block and unblock to the transport rules, in one pass, and
        re-assert every block already in place (a lost update by another worker is repaired
        by the next pass). `record` audits the outcomes before the registry moves on, so a
        failure in between leaves the requests pending and a redelivery applies them again.

        During a storm new addresses keep coming; waiting a moment first lets the requests
        that arrive meanwhile share this pass's writes."""
        await asyncio.sleep(self._batch_window_s)
        async with self._lock:
            # Most deliveries of a storm find their block applied by an earlier pass: one row
            # asked for tells them so, without listing the registry.
            if not await self._registry.any_in(BlockState.PENDING, BlockState.UNBLOCKING):
                return []
            entries = await self._registry.entries(
                BlockState.PENDING, BlockState.UNBLOCKING, BlockState.BLOCKED
            )
            moving = [e for e in entries if e.state != BlockState.BLOCKED]
            if not moving:
                return []
            self._rules.take_warnings()
            kept = [e for e in entries if e.state != BlockState.UNBLOCKING]
            adds = {exchange_range(e.network): e.block.params.get("mode", "reject") for e in kept}
            removes = {
                exchange_range(e.network) for e in moving if e.state == BlockState.UNBLOCKING
            }
            placed, calls = await self._apply(adds, removes)
            signin = [e for e in entries if e.block.params.get("signin_block")]
            calls += await self._apply_locations(
                {e.network for e in signin if e.state != BlockState.UNBLOCKING},
                {e.network for e in signin if e.state == BlockState.UNBLOCKING},
            )
            applied = self._outcomes(moving, placed, calls, self._rules.take_warnings())
            await record(applied, lambda: self._advance(applied, moving))
            return applied

    async def _apply(
        self, adds: dict[str, str], removes: set[str]
    ) -> tuple[dict[str, str], list[str]]:
        for attempt in range(1, MAX_PASSES + 1):
            every = await self._rules.list_rules()
            managed = [r for r in every if is_managed(r)]
            taken = frozenset(r.name.lower() for r in every)
            changes = plan_shards(managed, adds, removes, taken)
            if changes:
                await self._wait_for_settle()
            try:
                for change in changes:
                    await self._write(change)
            except _ShardChanged as changed:
                logger.warning("IP blocklist pass %s restarted: %s", attempt, changed)
                continue
            placed = {
                _canonical(rng): rule.name
                for rule in await self._rules.list_rules()
                if is_managed(rule)
                for rng in rule.ranges
            }
            missing = [rng for rng in adds if _canonical(rng) not in placed]
            lingering = [rng for rng in removes if _canonical(rng) in placed]
            if not missing and not lingering:
                return placed, [change.call for change in changes]
            logger.warning(
                "IP blocklist pass %s lost a race: %s missing, %s still present",
                attempt,
                len(missing),
                len(lingering),
            )
        raise TransientError(f"the IP blocklist kept changing during {MAX_PASSES} passes")

    async def _in_locations(self, network: str) -> bool | None:
        """Whether the product's named locations hold `network`; None when they cannot be
        read (then nothing is confirmed)."""
        if self._locations is None:
            return None
        try:
            locations = await self._locations.list_ip_locations()
        except Exception:
            logger.exception("named locations could not be read to confirm %s", network)
            return None
        return any(
            network in loc.ranges for loc in locations if loc.name.startswith(LOCATION_PREFIX)
        )

    async def _apply_locations(self, adds: set[str], removes: set[str]) -> list[str]:
        """Mirror sign-in blocks into the product's IP named locations, at most one write per
        location (their API takes about one write a second)."""
        if not adds and not removes:
            return []
        if self._locations is None:
            raise PermanentError("sign-in blocks need the Graph named locations adapter")
        owned = sorted(
            (
                loc
                for loc in await self._locations.list_ip_locations()
                if loc.name.startswith(LOCATION_PREFIX)
            ),
            key=lambda loc: loc.name,
        )
        ranges = {loc.id: [r for r in loc.ranges if r not in removes] for loc in owned}
        present = {r for kept in ranges.values() for r in kept}
        fresh = []
        for network in sorted(adds - present):
            room = next((i for i, kept in ranges.items() if len(kept) < LOCATION_CAPACITY), None)
            if room is None:
                fresh.append(network)
            else:
                ranges[room].append(network)
        calls = []
        for loc in owned:
            # Never deleted: a Conditional Access policy references it, and Graph refuses to
            # delete a referenced location.
            wanted = [r for r in ranges[loc.id] if r != LOCATION_PLACEHOLDER]
            wanted = wanted or [LOCATION_PLACEHOLDER]
            if tuple(wanted) == loc.ranges:
                continue
            await self._locations.set_ip_location_ranges(loc.id, wanted)
            calls.append(f"PATCH namedLocations/{loc.id} ({len(wanted)} ranges)")
        for start in range(0, len(fresh), LOCATION_CAPACITY):
            name = f"{LOCATION_PREFIX} {len(owned) + start // LOCATION_CAPACITY + 1:02d}"
            await self._locations.create_ip_location(name, fresh[start : start + LOCATION_CAPACITY])
            calls.append(f"POST namedLocations '{name}'")
            logger.warning("named location %r created: include it in the CA block policy", name)
        return calls

    async def _wait_for_settle(self) -> None:
        """Raise a TransientError (the pass runs again after the rest of the settle time)
        while a rule write that got no answer, by this worker or another, may still land."""
        noted = await self._registry.unanswered_write()
        known = [at for at in (self._unanswered_at, noted) if at is not None]
        if not known:
            return
        latest = max(known)
        left = (latest + self._settle - self._clock()).total_seconds()
        if left > 0:
            raise TransientError(
                f"a transport rule write at {latest.isoformat()} got no answer "
                f"and may still land; the rules are written again in {left:.1f} s",
                retry_after=left,
            )

    @asynccontextmanager
    async def _answered(self) -> AsyncIterator[None]:
        """Note the time of a rule write that got no answer at all (a timeout, a dropped
        connection: no status), which Exchange may still carry out: in this worker, and in
        the registry for the others (if that fails, this worker still waits)."""
        try:
            yield
        except TransientError as exc:
            if exc.status is None:
                self._unanswered_at = self._clock()
                try:
                    await self._registry.note_unanswered_write(self._unanswered_at)
                except Exception:
                    logger.exception("an unanswered rule write could not be noted for others")
            raise

    async def _write(self, change: ShardChange) -> None:
        if change.read is None:
            if await self._rules.get_rule(change.name) is not None:
                raise _ShardChanged(f"{change.name} was created by another writer")
            try:
                async with self._answered():
                    await self._rules.create_rule(
                        change.name,
                        change.ranges,
                        f"{COMMENT_MARK}: sender IP blocklist. Edits here are overwritten.",
                        self._rule_mode,
                        reject=change.mode == "reject",
                    )
            except PermanentError:
                # Another worker may have created the shard since our read: then start over.
                if await self._rules.get_rule(change.name) is not None:
                    raise _ShardChanged(f"{change.name} was created meanwhile") from None
                raise
            return
        current = await self._rules.get_rule(change.name)
        if (
            current is None
            or not same_ranges(current.ranges, change.read.ranges)
            or current.when_changed != change.read.when_changed
        ):
            raise _ShardChanged(f"{change.name} changed since it was read")
        try:
            async with self._answered():
                if change.ranges:
                    await self._rules.set_ranges(
                        change.name, change.ranges, self._rule_mode, reject=change.mode == "reject"
                    )
                else:
                    await self._rules.remove_rule(change.name)
        except NotFoundError:
            # Removed by someone else since the check above: plan again from a fresh read.
            raise _ShardChanged(f"{change.name} was removed meanwhile") from None

    def _outcomes(
        self,
        entries: list[BlockEntry],
        placed: dict[str, str],
        calls: list[str],
        warnings: list[str],
    ) -> list[Applied]:
        now = self._clock()
        applied = []
        for entry in entries:
            if entry.state == BlockState.PENDING:
                ttl = entry.block.params.get("ttl_minutes")
                expires = now + timedelta(minutes=int(ttl)) if ttl else None
                after = {
                    "blocked": True,
                    "rule": placed.get(_canonical(entry.network)),
                    "signin_blocked": bool(entry.block.params.get("signin_block")),
                    "expires_at": expires,
                }
                outcome = _executed({"blocked": False}, after, calls, warnings)
                applied.append(Applied(entry.block, outcome, expires))
            elif entry.unblock is not None:
                outcome = _executed({"blocked": True}, {"blocked": False}, calls, warnings)
                applied.append(Applied(entry.unblock, outcome))
        return applied

    async def _advance(self, applied: list[Applied], entries: list[BlockEntry]) -> None:
        by_network = {e.network: e for e in entries}
        await self._registry.update_all(
            [
                (by_network[item.action.target], BlockState.BLOCKED, item.expires_at)
                if item.action.kind is ActionKind.BLOCK_IP
                else (by_network[item.action.target], BlockState.UNBLOCKED, None)
                for item in applied
            ]
        )


def _executed(
    before: Mapping[str, object],
    after: Mapping[str, object],
    calls: list[str],
    warnings: list[str],
) -> ActionOutcome:
    """An executed outcome; Exchange's warnings about the pass, if any, are kept in `after`."""
    shown = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in after.items()}
    if warnings:
        shown["exchange_warnings"] = list(warnings)
    return ActionOutcome(status=OutcomeStatus.EXECUTED, before=before, after=shown, calls=calls)


class IpBlockSweeper:
    """Finds temporary blocks past their expiry and queues their unblock: the safety net for
    a scheduled unblock message that was lost."""

    def __init__(self, registry: BlockRegistry, queue: ActionQueue) -> None:
        self._registry = registry
        self._queue = queue

    async def sweep(self, now: datetime) -> int:
        """Queue the unblock of every expired block, then mark them for removal so the first
        unblock to run lifts them all in one pass. A block whose earlier unblock failed gets a
        fresh request."""
        expired = [
            entry
            for entry in await self._registry.entries(BlockState.BLOCKED)
            if entry.expires_at is not None and entry.expires_at <= now
        ]
        unblocks = [
            expiry_unblock(entry.block, retry_at=now if entry.unblock else None)
            for entry in expired
        ]
        await self._queue.send(unblocks)
        for entry, unblock in zip(expired, unblocks, strict=True):
            await self._registry.update(entry, BlockState.UNBLOCKING, unblock=unblock)
        return len(unblocks)
