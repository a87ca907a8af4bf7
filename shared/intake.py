"""Alert intake: normalize a payload, plan actions with the policy, audit every decision and
queue what may run. Used by the webhook, the poller and the CLI alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.ingest import normalize
from shared.models import ActionKind, ActionRequest, Alert, Decision
from shared.outbox import QUEUED_DECISIONS, Outbox
from shared.policy import Plan, Policy
from shared.ports import (
    ActionLedger,
    AlertCheckpoint,
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

    async def check(self, action: ActionRequest) -> ActionRequest:
        automatic = action.requested_by.kind == "app"
        if not (automatic and action.kind is ActionKind.DISABLE_ACCOUNT):
            return action
        if action.decision is not Decision.EXECUTE:
            return action
        now = self.clock()
        if await self.budget.spent(now - self.window) < self.disables:
            await self.budget.spend(action.target, now)
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

    async def handle_payload(self, payload: object) -> list[IntakeResult]:
        """Normalize any supported alert shape (raises InvalidInput) and handle each alert."""
        return [await self.handle(alert) for alert in normalize(payload)]

    async def handle(self, alert: Alert) -> IntakeResult:
        """Plan, audit and queue the actions for one alert version, once."""
        plan = self._policy.plan(alert)
        if await self._checkpoint.is_handled(alert.key, alert.version):
            return IntakeResult(plan, duplicate_alert=True)
        submitted = await self.submit(plan.actions)
        plan.actions[:] = submitted.actions
        await self._checkpoint.mark_handled(alert.key, alert.version)
        if plan.skipped:
            logger.info("alert %s: %s entities skipped", alert.key, len(plan.skipped))
        return IntakeResult(plan, queued=submitted.queued, coalesced=submitted.coalesced)

    async def submit(self, actions: list[ActionRequest]) -> Submitted:
        """Claim, audit and queue decided action requests, from an alert or an engineer.

        Requests whose id was claimed before, and blocks of networks already pending or
        blocked, coalesce into the earlier request; when that one never reached the queue it
        is sent now. Any failure propagates (the sender retries): the claims stay, and the
        next delivery or the reconciler sends them."""
        result = Submitted()
        fresh: list[ActionRequest] = []
        unsent: list[LedgerEntry] = []
        claim_seq = await self._outbox.claim_seq()
        for decided in actions:
            planned = await self._blast_radius.check(decided)
            action = await self._reserve(planned)
            if action is None:
                # The network is pending or blocked: this request joins that generation.
                result.actions.append(planned)
                result.coalesced.append(planned.id)
                earlier = await self._blocks.get(planned.target)
                if earlier is not None and earlier.state == BlockState.PENDING:
                    await self._resume(earlier.block, claim_seq, fresh, unsent)
                continue
            result.actions.append(action)
            if await self._outbox.claim(action, claim_seq):
                fresh.append(action)
            elif not await self._unsent(action.id, unsent):
                result.coalesced.append(action.id)
        await self._outbox.commit(fresh, unsent)
        handed_on = [*fresh, *(e.request for e in unsent if e.request is not None)]
        result.queued = [a.id for a in handed_on if a.decision in QUEUED_DECISIONS]
        return result

    async def _resume(
        self,
        block: ActionRequest,
        claim_seq: int,
        fresh: list[ActionRequest],
        unsent: list[LedgerEntry],
    ) -> None:
        """A pending block whose claim is missing (a crash between reserving and claiming)
        is claimed now; one whose claim never reached the queue is sent."""
        entry = await self._ledger.get(block.id)
        if entry is None:
            if await self._outbox.claim(block, claim_seq):
                fresh.append(block)
        elif entry.open and not entry.sent and entry.request is not None:
            if all(e.action_id != block.id for e in unsent):
                unsent.append(entry)

    async def _unsent(self, action_id: str, unsent: list[LedgerEntry]) -> bool:
        """Collect the earlier claim of `action_id` if it never reached the queue."""
        entry = await self._ledger.get(action_id)
        if entry is None or not entry.open or entry.sent or entry.request is None:
            return False
        if all(e.action_id != action_id for e in unsent):
            unsent.append(entry)
        return True

    async def _reserve(self, action: ActionRequest) -> ActionRequest | None:
        """IP blocks go through the block registry: a network already pending or blocked
        coalesces, a new one gets its generation's id."""
        if action.kind is not ActionKind.BLOCK_IP or action.decision is not Decision.EXECUTE:
            return action
        return await self._blocks.reserve(action)
