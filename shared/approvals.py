"""Approvals: an engineer approves or rejects an action a guard held, with four eyes (never
the requester) and an expiry. Approval, rejection and expiry are audited; an approved action
goes to the queue like any other."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from shared.audit import AuditChain
from shared.errors import ResponderError
from shared.models import (
    ActionRequest,
    Actor,
    AuditEvent,
    Decision,
    OutcomeStatus,
    action_entry,
)
from shared.ports import ActionLedger, ActionQueue, Approval, ApprovalState, ApprovalStore


class ApprovalError(ResponderError):
    """An approval or rejection that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Approvals:
    def __init__(
        self,
        store: ApprovalStore,
        chain: AuditChain,
        ledger: ActionLedger,
        queue: ActionQueue,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._chain = chain
        self._ledger = ledger
        self._queue = queue
        self._clock = clock

    async def approve(self, action_id: str, approver: Actor, note: str) -> ActionRequest:
        approval = await self._pending(action_id, approver)
        action = approval.action.model_copy(
            update={
                "decision": Decision.EXECUTE,
                "params": {**approval.action.params, "approved_by": approver.name},
            }
        )
        # Queued before it is settled: if sending fails nothing has changed and the engineer
        # can approve again; if a second approver wins the race, the queue drops the repeated
        # message id and the executor's ledger runs the action once.
        await self._queue.send([action])
        if not await self._store.settle(approval, ApprovalState.APPROVED, approver.name):
            raise ApprovalError(409, "the action was decided by someone else meanwhile")
        entry = action_entry(action, AuditEvent.ACTION_APPROVED, {"approved_by": approver.name})
        await self._chain.append(entry.model_copy(update={"actor": approver, "reason": note}))
        return action

    async def reject(self, action_id: str, approver: Actor, note: str) -> ActionRequest:
        approval = await self._pending(action_id, approver)
        if not await self._store.settle(approval, ApprovalState.REJECTED, approver.name):
            raise ApprovalError(409, "the action was decided by someone else meanwhile")
        entry = action_entry(
            approval.action, AuditEvent.ACTION_REJECTED, {"rejected_by": approver.name}
        )
        record = await self._chain.append(
            entry.model_copy(update={"actor": approver, "reason": note})
        )
        await self._ledger.finish(approval.action, OutcomeStatus.REJECTED, record.seq)
        return approval.action

    async def _pending(self, action_id: str, approver: Actor) -> Approval:
        if approver.kind != "engineer":
            raise ApprovalError(403, "only an engineer can approve or reject")
        approval = await self._store.get(action_id)
        if approval is None:
            raise ApprovalError(404, "no action waits for approval under this id")
        if approval.state is not ApprovalState.PENDING:
            raise ApprovalError(409, f"the action was already {approval.state}")
        if approval.action.requested_by.same_identity(approver):
            raise ApprovalError(403, "the requester cannot approve or reject their own request")
        if approval.expires_at <= self._clock():
            await self._expire(approval)
            raise ApprovalError(410, "the approval window has passed; the action expired")
        return approval

    async def pending(self) -> list[Approval]:
        """Actions waiting for a decision, oldest expiry first."""
        return sorted(await self._store.pending(), key=lambda a: a.expires_at)

    async def expire_due(self) -> int:
        """Expire (and audit) every pending approval past its window; how many expired."""
        now = self._clock()
        expired = 0
        for approval in await self._store.pending():
            if approval.expires_at <= now:
                expired += await self._expire(approval)
        return expired

    async def _expire(self, approval: Approval) -> bool:
        if not await self._store.settle(approval, ApprovalState.EXPIRED, "expiry"):
            return False
        entry = action_entry(
            approval.action, AuditEvent.ACTION_EXPIRED, {"expired_at": str(approval.expires_at)}
        )
        record = await self._chain.append(entry.model_copy(update={"actor": Actor()}))
        await self._ledger.finish(approval.action, OutcomeStatus.EXPIRED, record.seq)
        return True
