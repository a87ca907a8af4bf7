"""Runs one queued action: skips deliveries of actions that already ended, dispatches to the
executor, audits the outcome and records it in the ledger.

Permanent errors are audited as failed. Anything else propagates so the queue redelivers the
message, except on the last allowed delivery, where the failure is audited instead of vanishing
into the dead-letter queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.actions.accounts import AccountActions
from shared.actions.breakglass import EmergencyAccess
from shared.actions.ip_blocks import Applied, IpBlocklist, expiry_unblock
from shared.audit import AuditChain
from shared.errors import PermanentError, TransientError
from shared.models import (
    ActionKind,
    ActionOutcome,
    ActionRequest,
    Actor,
    AuditEntry,
    AuditEvent,
    Decision,
    OutcomeStatus,
    action_entry,
)
from shared.ports import LEDGER_QUEUED, ActionLedger, ActionQueue, ApprovalState, ApprovalStore

logger = logging.getLogger(__name__)

DRY_RUN_NOTE = "dry run: nothing was written to the tenant"


class RecordingFailed(Exception):
    """Outcomes could not be audited; the message is redelivered, the action not failed."""


class Holds:
    """Where an executor's guard puts an action that waits for an engineer's approval."""

    def __init__(self, store: ApprovalStore, ttl: timedelta, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock

    async def hold(self, action: ActionRequest, reason: str) -> None:
        held = action.model_copy(update={"decision": Decision.NEEDS_APPROVAL, "reason": reason})
        await self._store.hold(held, self._clock() + self._ttl)

    async def approved(self, action: ActionRequest) -> bool:
        """Whether an approved action may run. An approval is queued before it is settled, so
        the message can arrive first: while the approval is still pending the delivery is
        retried; if a rejection won the settle meanwhile, the action does not run."""
        approval = await self._store.get(action.id)
        if approval is not None and approval.state is ApprovalState.PENDING:
            raise TransientError(f"the approval of {action.id} is not settled yet; retried")
        return approval is not None and approval.state is ApprovalState.APPROVED


class ActionRunner:
    def __init__(
        self,
        accounts: AccountActions,
        emergency: EmergencyAccess,
        chain: AuditChain,
        ledger: ActionLedger,
        queue: ActionQueue,
        blocklist: IpBlocklist | None,
        holds: Holds,
        max_deliveries: int,
    ) -> None:
        self._accounts = accounts
        self._emergency = emergency
        self._chain = chain
        self._ledger = ledger
        self._queue = queue
        self._blocklist = blocklist
        self._holds = holds
        self._max_deliveries = max_deliveries

    async def run(self, action: ActionRequest, delivery_count: int) -> ActionOutcome | None:
        """Execute `action` once. None means another delivery or a batch already ended it."""
        entry = await self._ledger.get(action.id)
        approved = (
            entry is not None
            and entry.state == OutcomeStatus.HELD
            and ("approved_by" in action.params)
        )
        if entry is not None and entry.state != LEDGER_QUEUED and not approved:
            logger.info("action %s already ended (%s); delivery ignored", action.id, entry.state)
            return None
        if "approved_by" in action.params and not await self._holds.approved(action):
            logger.warning("action %s was not approved after all; delivery ignored", action.id)
            return None
        try:
            applied = await self._execute(action)
        except RecordingFailed:
            # The action ran but its audit did not land: never report it as failed; the
            # redelivery finds the ledger still queued and records it then.
            raise
        except Exception as exc:
            permanent = isinstance(exc, PermanentError)
            if not permanent and delivery_count < self._max_deliveries:
                logger.warning(
                    "action %s attempt %s failed (%s); redelivery follows",
                    action.id,
                    delivery_count,
                    type(exc).__name__,
                )
                raise
            note = "not retried" if permanent else f"gave up after {delivery_count} deliveries"
            applied = await self._failed(action, exc, note)
            await self._record(applied)
        return next((a.outcome for a in applied if a.action.id == action.id), None)

    async def _execute(self, action: ActionRequest) -> list[Applied]:
        """Run the executor and audit what it did (IP passes audit before the registry moves)."""
        if action.kind.targets_breakglass:
            applied = [await self._emergency_run(action)]
            await self._record(applied)
            return applied
        if not action.kind.targets_ip:
            outcome = await self._accounts.run(action)
            if outcome.status is OutcomeStatus.HELD:
                await self._holds.hold(action, outcome.error or "waits for approval")
            applied = [Applied(action, outcome)]
            await self._record(applied)
            return applied
        blocklist = self._require_blocklist()
        if action.dry_run:
            applied = [Applied(action, await blocklist.plan(action))]
            await self._record(applied)
            return applied
        if action.kind is ActionKind.UNBLOCK_IP:
            return await blocklist.unblock(action, self._record)
        applied = await blocklist.flush(self._record)
        if not any(a.action.id == action.id for a in applied):
            logger.info("action %s was applied by another pass", action.id)
        return applied

    async def _emergency_run(self, action: ActionRequest) -> Applied:
        if action.kind is ActionKind.ACTIVATE_BREAKGLASS:
            return await self._emergency.activate(action)
        return await self._emergency.deactivate(action)

    async def rehearse(self, action: ActionRequest) -> ActionOutcome:
        """What `action` would do now: the state its executor reads, the calls it would make
        and the guards' verdicts. Runs the executor in dry-run mode: reads only, records
        nothing."""
        trial = action.model_copy(update={"dry_run": True})
        if trial.kind.targets_breakglass:
            return (await self._emergency_run(trial)).outcome
        if trial.kind.targets_ip:
            return await self._require_blocklist().plan(trial)
        return await self._accounts.run(trial)

    def _require_blocklist(self) -> IpBlocklist:
        if self._blocklist is None:
            raise PermanentError("IP blocks need the EXCHANGE_TENANT setting")
        return self._blocklist

    async def _failed(self, action: ActionRequest, exc: Exception, note: str) -> list[Applied]:
        if action.kind.targets_ip and self._blocklist is not None and not action.dry_run:
            await self._blocklist.abandon(action)
        request_id = exc.request_id if isinstance(exc, TransientError | PermanentError) else None
        outcome = ActionOutcome(
            status=OutcomeStatus.FAILED,
            error=f"{type(exc).__name__}: {exc} ({note})",
            request_ids=[request_id] if request_id else [],
        )
        return [Applied(action, outcome)]

    async def _record(self, applied: list[Applied]) -> None:
        """Audit every outcome (one batch), close their ledger entries, schedule the expiry of
        temporary blocks. Any failure here is a `RecordingFailed`."""
        try:
            records = await self._chain.append_all(
                [outcome_entry(a.action, a.outcome) for a in applied]
            )
            # Follow-ups before the ledger: once an action is finished, a redelivery is
            # ignored, so a failed schedule must leave it queued. Their ids are deterministic.
            for item in applied:
                if item.expires_at is not None:
                    follow_up = item.follow_up or expiry_unblock(item.action)
                    await self._queue.schedule([follow_up], item.expires_at)
            for item, record in zip(applied, records, strict=True):
                await self._ledger.finish(item.action, item.outcome.status, record.seq)
        except Exception as exc:
            raise RecordingFailed(f"recording {len(applied)} outcomes failed") from exc

    async def reject_message(self, message_id: str, problems: int) -> None:
        """A queue message that is no valid action: audited as failed, never retried."""
        logger.error("message %s is not a valid action request; rejected", message_id)
        await self._chain.append(
            AuditEntry(
                event=AuditEvent.ACTION_FAILED,
                actor=Actor(),
                action_id=message_id,
                reason="malformed action message",
                result={"status": "failed", "error": f"{problems} validation errors"},
            )
        )


def outcome_entry(action: ActionRequest, outcome: ActionOutcome) -> AuditEntry:
    result = outcome.model_dump(mode="json", exclude_defaults=True)
    if outcome.status is OutcomeStatus.DRY_RUN:
        result["note"] = DRY_RUN_NOTE
    return action_entry(action, AuditEvent.for_outcome(outcome.status), result)
