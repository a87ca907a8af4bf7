"""Alert intake: normalize a payload, plan actions with the policy, audit every decision and
queue what may run. Used by the webhook, the poller and the CLI alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.audit import AuditChain
from shared.ingest import normalize
from shared.models import (
    ActionKind,
    ActionRequest,
    Alert,
    AuditEntry,
    AuditEvent,
    Decision,
    OutcomeStatus,
    action_entry,
)
from shared.policy import Plan, Policy
from shared.ports import (
    ActionLedger,
    ActionQueue,
    AlertCheckpoint,
    ApprovalStore,
    BlockRegistry,
    DisableBudget,
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


QUEUED_DECISIONS = frozenset({Decision.EXECUTE, Decision.DRY_RUN})
DECISION_EVENTS = {
    Decision.REFUSED: AuditEvent.ACTION_REFUSED,
    Decision.NEEDS_APPROVAL: AuditEvent.ACTION_HELD,
}


def decision_entry(action: ActionRequest) -> AuditEntry:
    event = DECISION_EVENTS.get(action.decision, AuditEvent.ACTION_PLANNED)
    return action_entry(action, event, {"decision": str(action.decision)})


@dataclass(frozen=True)
class BlastRadius:
    """The budget of automatic account disables per rolling window, and how long an action
    held beyond it waits for an engineer."""

    budget: DisableBudget
    approvals: ApprovalStore
    disables: int
    window: timedelta
    approval_ttl: timedelta
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
        chain: AuditChain,
        ledger: ActionLedger,
        checkpoint: AlertCheckpoint,
        queue: ActionQueue,
        blocks: BlockRegistry,
        blast_radius: BlastRadius,
    ) -> None:
        self._policy = policy
        self._blocks = blocks
        self._blast_radius = blast_radius
        self._chain = chain
        self._ledger = ledger
        self._checkpoint = checkpoint
        self._queue = queue

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
        blocked, coalesce into the earlier request."""
        result = Submitted()
        fresh: list[ActionRequest] = []
        reserved: list[ActionRequest] = []
        for decided in actions:
            planned = await self._blast_radius.check(decided)
            action = await self._reserve(planned)
            if action is None:
                result.actions.append(planned)
                result.coalesced.append(planned.id)
                continue
            result.actions.append(action)
            if action is not planned:
                reserved.append(action)
            if await self._ledger.claim(action):
                fresh.append(action)
            else:
                result.coalesced.append(action.id)
        try:
            await self._commit(fresh)
        except BaseException:
            # Nothing is lost: release the claims so a retry plans them again.
            for action in fresh:
                await self._ledger.release(action.id)
            for action in reserved:
                await self._blocks.release(action)
            raise
        result.queued = [a.id for a in fresh if a.decision in QUEUED_DECISIONS]
        return result

    async def _reserve(self, action: ActionRequest) -> ActionRequest | None:
        """IP blocks go through the block registry: a network already pending or blocked
        coalesces, a new one gets its generation's id."""
        if action.kind is not ActionKind.BLOCK_IP or action.decision is not Decision.EXECUTE:
            return action
        return await self._blocks.reserve(action)

    async def _commit(self, actions: list[ActionRequest]) -> None:
        if not actions:
            return
        records = await self._chain.append_all([decision_entry(a) for a in actions])
        await self._queue.send([a for a in actions if a.decision in QUEUED_DECISIONS])
        held_until = self._blast_radius.clock() + self._blast_radius.approval_ttl
        for action, record in zip(actions, records, strict=True):
            if action.decision is Decision.REFUSED:
                await self._ledger.finish(action, OutcomeStatus.REFUSED, record.seq)
            elif action.decision is Decision.NEEDS_APPROVAL:
                await self._blast_radius.approvals.hold(action, held_until)
