"""Alert intake: normalize a payload, plan actions with the policy, audit every decision and
queue what may run. Used by the webhook, the poller and the CLI alike."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.concurrency import ahead
from shared.ingest import normalize
from shared.models import ActionKind, ActionRequest, Alert, Decision
from shared.outbox import QUEUED_DECISIONS, Outbox
from shared.policy import Plan, Policy
from shared.ports import (
    ACTIVE_BLOCK_STATES,
    ActionLedger,
    AlertCheckpoint,
    BlockEntry,
    BlockRegistry,
    BlockState,
    DisableBudget,
    LedgerEntry,
)

logger = logging.getLogger(__name__)


@dataclass
class Submitted:
    """Requests as submitted (IP blocks carry their generation's id), and what became of them."""

    actions: list[ActionRequest] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    coalesced: list[str] = field(default_factory=list)


@dataclass
class IntakeResult:
    """A plan plus what intake did with it: actions queued now, and those coalesced into an
    identical earlier request (same deterministic id)."""

    plan: Plan
    duplicate_alert: bool = False
    queued: list[str] = field(default_factory=list)
    coalesced: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **plan_as_dict(self.plan),
            "duplicate_alert": self.duplicate_alert,
            "queued": self.queued,
            "coalesced": self.coalesced,
        }


def plan_as_dict(plan: Plan) -> dict[str, Any]:
    return {
        "alert": plan.alert.model_dump(mode="json", exclude={"extra"}),
        "actions": [
            {
                "id": a.id,
                "kind": str(a.kind),
                "target": a.target,
                "params": a.params,
                "decision": str(a.decision),
                "reason": a.reason,
            }
            for a in plan.actions
        ],
        "skipped": [vars(s) for s in plan.skipped],
    }


@dataclass(frozen=True)
class BlastRadius:
    """The budget of automatic account disables per rolling window."""

    budget: DisableBudget
    disables: int
    window: timedelta
    clock: Callable[[], datetime]

    def applies(self, action: ActionRequest) -> bool:
        """Whether `action` spends from the budget: an automatic disable about to run."""
        automatic = action.requested_by.kind == "app"
        return (
            automatic
            and action.kind is ActionKind.DISABLE_ACCOUNT
            and action.decision is Decision.EXECUTE
        )

    async def spent(self) -> set[str]:
        """The accounts disabled in the window, read as far as the budget."""
        return await self.budget.spent(self.clock() - self.window, self.disables)

    async def check(self, action: ActionRequest, tally: _Tally) -> ActionRequest:
        """`action` as it may go on: an automatic disable beyond the budget waits for an
        engineer's approval. `tally` is the submission's view of the window, read once (beside
        the alerts' handled checks) and joined by each account it lets through; an account
        counts once."""
        if not self.applies(action):
            return action
        if tally.spent is None:
            tally.spent = await (tally.counted or self.spent())
        if len(tally.spent) < self.disables:
            await self.budget.spend(action.target, self.clock())
            tally.spent.add(action.target)
            return action
        minutes = int(self.window.total_seconds() // 60)
        reason = (
            f"blast-radius budget of {self.disables} automatic disables per {minutes} minutes "
            f"is used up; waits for an engineer's approval ({action.reason})"
        )
        return action.model_copy(update={"decision": Decision.NEEDS_APPROVAL, "reason": reason})


class AlertIntake:
    def __init__(
        self,
        policy: Policy,
        outbox: Outbox,
        ledger: ActionLedger,
        checkpoint: AlertCheckpoint,
        blocks: BlockRegistry,
        blast_radius: BlastRadius,
    ) -> None:
        self._policy = policy
        self._outbox = outbox
        self._ledger = ledger
        self._blocks = blocks
        self._blast_radius = blast_radius
        self._checkpoint = checkpoint
        self._handed = _HandedOn()

    async def handle_payload(self, payload: object) -> list[IntakeResult]:
        """Normalize any supported alert shape (raises InvalidInput) and handle its alerts."""
        return await self.handle_many(normalize(payload))

    async def handle(self, alert: Alert) -> IntakeResult:
        """Plan, audit and queue the actions for one alert version, once."""
        [result] = await self.handle_many([alert])
        return result

    async def handle_many(self, alerts: list[Alert]) -> list[IntakeResult]:
        """Plan, audit and queue the actions of a batch of alerts (a list page, a webhook body
        with many alerts), each alert version once, as one submission: the handled checks go
        together (`AlertCheckpoint.handled_among`), each network's registry row is read once,
        and the decisions of the whole batch are audited in one append and sent in one send.
        The alerts are marked handled only once their actions are on the queue, beside the
        claims' sent mark; any failure propagates, so the sender retries (a batch not marked
        handled is handled again; claims queued but not noted sent are noted by their
        delivery, or sent again by the reconciler)."""
        plans = [self._policy.plan(alert) for alert in alerts]
        if any(self._blast_radius.applies(a) for plan in plans for a in plan.actions):
            # The budget is counted beside the handled checks, not after them.
            async with ahead(self._blast_radius.spent()) as counted:
                return await self._handle_plans(alerts, plans, _Tally(counted))
        return await self._handle_plans(alerts, plans, _Tally())

    async def _handle_plans(
        self, alerts: list[Alert], plans: list[Plan], tally: _Tally
    ) -> list[IntakeResult]:
        handled = await self._checkpoint.handled_among([(a.key, a.version) for a in alerts])
        results = [IntakeResult(plan, duplicate_alert=True) for plan in plans]
        todo: dict[tuple[str, str], int] = {}
        for index, (alert, done) in enumerate(zip(alerts, handled, strict=True)):
            if not done:
                todo.setdefault((alert.key, alert.version), index)
        # The handled marks go with the claims' sent marks, once the actions are queued.
        submitted = await self._submit_all(
            [plans[i].actions for i in todo.values()], handled=list(todo), tally=tally
        )
        for index, part in zip(todo.values(), submitted, strict=True):
            plans[index].actions[:] = part.actions
            results[index] = IntakeResult(
                plans[index], queued=part.queued, coalesced=part.coalesced
            )
        for index in todo.values():
            if plans[index].skipped:
                logger.info(
                    "alert %s: %s entities skipped", alerts[index].key, len(plans[index].skipped)
                )
        return results

    async def submit(self, actions: list[ActionRequest]) -> Submitted:
        """Claim, audit and queue decided action requests, from an alert or an engineer.

        Requests whose id was claimed before, and blocks of networks already pending or
        blocked, coalesce into the earlier request; when that one never reached the queue it
        is sent now. Any failure propagates (the sender retries): the claims stay, and the
        next delivery or the reconciler sends them."""
        [result] = await self._submit_all([actions])
        return result

    async def _submit_all(
        self,
        groups: list[list[ActionRequest]],
        handled: list[tuple[str, str]] | None = None,
        tally: _Tally | None = None,
    ) -> list[Submitted]:
        """`submit` for several groups of requests (one per alert) at once: every group is
        claimed, then all decisions are audited and handed on together, all within the
        outbox's time limit; the alert versions `handled` are marked handled with the claims'
        sent marks (`Outbox.commit`). An
        earlier claim still leased by its claimer (its commit may be under way) coalesces:
        that claimer, or the reconciler once the lease ends, sends it."""
        # The first executable block naming each network (the one that may reserve it).
        blocks: dict[str, ActionRequest] = {}
        for actions in groups:
            for a in actions:
                if a.kind is ActionKind.BLOCK_IP and a.decision is Decision.EXECUTE:
                    blocks.setdefault(a.target, a)
        async with self._outbox.time_limit():
            batch = _Batch(await self._outbox.claim_seq())
            # Every network's registry row is read up front, not one by one, and every
            # network neither pending nor blocked is reserved together (a storm's first
            # batches name dozens of new networks each).
            batch.registry = await self._blocks.get_many(blocks)
            batch.reserved = await self._blocks.reserve_many(
                [
                    block
                    for network, block in blocks.items()
                    if not _active(batch.registry[network])
                ],
                batch.registry,
            )
            tally = tally or _Tally()
            parts = [await self._decide_group(actions, batch, tally) for actions in groups]
            # Every claim of the submission in one write (one transaction per 100).
            wanted = [action for part in parts for action in part.wanted]
            claimed = await self._outbox.claim_all(wanted, batch.claim_seq)
            for part in parts:
                await self._settle_claims(part, claimed, batch)
            handed = await self._outbox.commit(
                batch.fresh, batch.unsent, handled or (), batch.etags
            )
            self._handed.note(handed)
        requests = {a.id: a for a in batch.fresh}
        requests.update({e.action_id: e.request for e in batch.unsent if e.request is not None})
        for part in parts:
            ids = [*part.fresh_ids, *part.unsent_ids]
            part.result.queued = [
                i for i in ids if i in handed and requests[i].decision in QUEUED_DECISIONS
            ]
            part.result.coalesced += [i for i in ids if i not in handed]
        return [part.result for part in parts]

    async def _decide_group(
        self, actions: list[ActionRequest], batch: _Batch, tally: _Tally
    ) -> _Group:
        """One group's requests through the blast radius and the block registry: the claims
        it wants made (claimed together with the rest of the submission's afterwards)."""
        group = _Group()
        result = group.result
        for decided in actions:
            planned = await self._blast_radius.check(decided, tally)
            action, earlier = await self._reserve(planned, batch)
            if action is None:
                # The network is pending or blocked: this request joins that generation.
                result.actions.append(planned)
                result.coalesced.append(planned.id)
                if earlier is not None and earlier.state == BlockState.PENDING:
                    await self._resume(earlier.block, batch, group)
                continue
            result.actions.append(action)
            if action.id in batch.ids or action.id in batch.wanted:
                result.coalesced.append(action.id)  # the same request twice in one batch
            else:
                group.wanted.append(action)
                batch.wanted.add(action.id)
        return group

    async def _settle_claims(self, group: _Group, claimed: dict[str, str], batch: _Batch) -> None:
        """What became of the claims a group wanted: claimed now, an earlier claim that never
        reached the queue (sent now), or an earlier request it coalesces into."""
        for action in group.wanted:
            if action.id in claimed:
                batch.add_fresh(action, claimed[action.id])
                group.fresh_ids.append(action.id)
            elif await self._unsent(action.id, batch):
                group.unsent_ids.append(action.id)
            else:
                group.result.coalesced.append(action.id)

    async def _resume(self, block: ActionRequest, batch: _Batch, group: _Group) -> None:
        """A pending block whose claim is missing (a crash between reserving and claiming)
        is claimed now; one whose claim never reached the queue is sent."""
        if block.id in batch.ids or block.id in batch.wanted or block.id in self._handed:
            return
        entry = await self._ledger.get(block.id)
        if entry is None:
            etag = await self._outbox.claim(block, batch.claim_seq)
            if etag is not None:
                batch.add_fresh(block, etag)
                group.fresh_ids.append(block.id)
        elif entry.open and not entry.sent and entry.request is not None:
            batch.add_unsent(entry)
            group.unsent_ids.append(block.id)

    async def _unsent(self, action_id: str, batch: _Batch) -> bool:
        """Collect the earlier claim of `action_id` if it never reached the queue."""
        if action_id in self._handed:
            return False
        entry = await self._ledger.get(action_id)
        if entry is None or not entry.open or entry.sent or entry.request is None:
            return False
        batch.add_unsent(entry)
        return True

    async def _reserve(
        self, action: ActionRequest, batch: _Batch
    ) -> tuple[ActionRequest | None, BlockEntry | None]:
        """IP blocks go through the block registry: a network already pending or blocked
        coalesces (None, with its registry entry), a new one gets its generation's id (from
        the batch's reservation up front). A network met earlier in the batch coalesces, an
        active one on the batch's read that finds it so (in a storm most networks named
        are)."""
        if action.kind is not ActionKind.BLOCK_IP or action.decision is not Decision.EXECUTE:
            return action, None
        if action.target in batch.networks:
            return None, None  # its block was claimed or looked at in this batch already
        batch.networks.add(action.target)
        earlier = batch.registry[action.target]  # read up front with the batch's others
        if _active(earlier):
            return None, earlier
        reserved = batch.reserved[action.target]  # reserved up front with the batch's others
        if reserved is None:  # another intake reserved it meanwhile
            return None, await self._blocks.get(action.target)
        return reserved, None


class _HandedOn:
    """The action ids this worker's intake handed on lately. A claim handed on has reached
    the queue for good, so a later submission naming it (a storm names a pending block in
    batch after batch until it runs) need not read its ledger row to learn that. Bounded in
    number and age: past those the row is read, as for a claim another worker handed on."""

    LIMIT = 16_384
    AGE_S = 600.0

    def __init__(self) -> None:
        self._at: OrderedDict[str, float] = OrderedDict()

    def note(self, action_ids: Iterable[str]) -> None:
        now = time.monotonic()
        for action_id in action_ids:
            self._at[action_id] = now
            self._at.move_to_end(action_id)
        while len(self._at) > self.LIMIT:
            self._at.popitem(last=False)

    def __contains__(self, action_id: object) -> bool:
        at = self._at.get(action_id) if isinstance(action_id, str) else None
        return at is not None and time.monotonic() - at < self.AGE_S


def _active(entry: BlockEntry | None) -> bool:
    return entry is not None and entry.state in ACTIVE_BLOCK_STATES


@dataclass
class _Tally:
    """A submission's view of the budget: the accounts spent on in the window (`counted`,
    when the read was started ahead), then `spent` once read, joined by each account the
    submission lets through."""

    counted: Awaitable[set[str]] | None = None
    spent: set[str] | None = None


@dataclass
class _Group:
    """One group's part of a submission: its result so far, the claims it wants made, and
    the ids it hands on (claimed now first, then earlier claims that never reached the
    queue)."""

    result: Submitted = field(default_factory=Submitted)
    wanted: list[ActionRequest] = field(default_factory=list)
    fresh_ids: list[str] = field(default_factory=list)
    unsent_ids: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    """What one submission claimed so far: fresh claims (with their ETags), earlier claims
    never sent, the ids of both, the networks it has looked at, their registry rows as read
    up front, and what reserving those neither pending nor blocked gave (the request with its
    generation's id, or None where another intake reserved it first)."""

    claim_seq: int
    fresh: list[ActionRequest] = field(default_factory=list)
    etags: dict[str, str] = field(default_factory=dict)
    unsent: list[LedgerEntry] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    wanted: set[str] = field(default_factory=set)  # ids whose claim is still to be made
    networks: set[str] = field(default_factory=set)
    registry: dict[str, BlockEntry | None] = field(default_factory=dict)
    reserved: dict[str, ActionRequest | None] = field(default_factory=dict)

    def add_fresh(self, action: ActionRequest, etag: str) -> None:
        self.fresh.append(action)
        self.etags[action.id] = etag
        self.ids.add(action.id)

    def add_unsent(self, entry: LedgerEntry) -> None:
        self.unsent.append(entry)
        self.ids.add(entry.action_id)
