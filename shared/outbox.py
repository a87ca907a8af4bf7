"""The intake's outbox: an action is claimed in the ledger with its request before anything
else happens, then its decision is audited and it is handed on (queued, held for approval, or
closed as refused), and only then marked sent. A claim that never got that far — the worker
died, storage or Service Bus failed in between — is finished later from the ledger row, by
the next delivery of the same alert or by the reconciler, under the same message id (Service
Bus duplicate detection and the executor's ledger make a second send harmless). Two of those
may find the same unsent claim at once (a sender's retry and the reconciler): each takes a
lease on the claim and reads it again first, so its decision is audited once."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.audit import AuditChain
from shared.concurrency import gather_bounded
from shared.models import (
    ActionRequest,
    AuditEntry,
    AuditEvent,
    Decision,
    OutcomeStatus,
    action_entry,
)
from shared.ports import ActionLedger, ActionQueue, ApprovalStore, Leases, LedgerEntry

logger = logging.getLogger(__name__)

# How long a committer holds an unsent claim; one that died holding it is waited out.
RESEND_LEASE_TTL = timedelta(minutes=2)
QUEUED_DECISIONS = frozenset({Decision.EXECUTE, Decision.DRY_RUN})
DECISION_EVENTS = {
    Decision.REFUSED: AuditEvent.ACTION_REFUSED,
    Decision.NEEDS_APPROVAL: AuditEvent.ACTION_HELD,
}
DECISION_RECORDS = frozenset(
    str(e) for e in (AuditEvent.ACTION_PLANNED, AuditEvent.ACTION_REFUSED, AuditEvent.ACTION_HELD)
)


def decision_entry(action: ActionRequest) -> AuditEntry:
    event = DECISION_EVENTS.get(action.decision, AuditEvent.ACTION_PLANNED)
    return action_entry(action, event, {"decision": str(action.decision)})


class Outbox:
    def __init__(
        self,
        chain: AuditChain,
        ledger: ActionLedger,
        queue: ActionQueue,
        approvals: ApprovalStore,
        approval_ttl: timedelta,
        clock: Callable[[], datetime],
        leases: Leases,
    ) -> None:
        self._chain = chain
        self._ledger = ledger
        self._queue = queue
        self._approvals = approvals
        self._approval_ttl = approval_ttl
        self.clock = clock
        self._leases = leases

    async def claim_seq(self) -> int:
        """Where the audit trail stands before claims are made (the decision records of the
        claims come after it)."""
        return await self._chain.head_seq()

    async def claim(self, action: ActionRequest, claim_seq: int) -> bool:
        return await self._ledger.claim(action, self.clock(), claim_seq)

    async def commit(self, fresh: list[ActionRequest], unsent: list[LedgerEntry]) -> None:
        """Audit the decisions of the claims made just now (`fresh`) and of earlier claims
        that never reached the queue (`unsent`, audited only if their record is missing),
        then hand every one of them on. An unsent claim another committer holds, or that
        was handed on since it was read, is left alone."""
        if not fresh and not unsent:
            return
        holder = uuid.uuid4().hex
        taken = await self._take(unsent, holder)
        try:
            await self._commit(fresh, taken)
        finally:
            await gather_bounded(self._leases.release(_lease(e.action_id), holder) for e in taken)

    async def _take(self, unsent: list[LedgerEntry], holder: str) -> list[LedgerEntry]:
        """The unsent claims this committer may hand on: leased, and still unsent when read
        again under the lease."""
        taken: list[LedgerEntry] = []
        for entry in unsent:
            if not await self._leases.acquire(_lease(entry.action_id), holder, RESEND_LEASE_TTL):
                continue
            current = await self._ledger.get(entry.action_id)
            if current is not None and current.open and not current.sent:
                taken.append(current)
            else:
                await self._leases.release(_lease(entry.action_id), holder)
        return taken

    async def _commit(self, fresh: list[ActionRequest], unsent: list[LedgerEntry]) -> None:
        if not fresh and not unsent:
            return
        earlier = [e.request for e in unsent if e.request is not None]
        audited = await self._audited(unsent)
        missing = [a for a in earlier if a.id not in audited]
        records = await self._chain.append_all([decision_entry(a) for a in [*fresh, *missing]])
        seqs = {a.id: r.seq for a, r in zip([*fresh, *missing], records, strict=True)}
        seqs.update(audited)
        actions = [*fresh, *earlier]
        await self._queue.send([a for a in actions if a.decision in QUEUED_DECISIONS])
        held_until = self.clock() + self._approval_ttl
        closing = [a for a in actions if a.decision not in QUEUED_DECISIONS]
        await gather_bounded(self._close(a, seqs[a.id], held_until) for a in closing)
        await self._ledger.mark_sent(*(a.id for a in actions if a.decision in QUEUED_DECISIONS))
        if earlier:
            logger.warning("%s claimed actions that never reached the queue sent now", len(earlier))

    async def _close(self, action: ActionRequest, seq: int, held_until: datetime) -> None:
        """Close a refused claim, hold one that needs approval (queued ones are marked sent
        together, in one transaction)."""
        if action.decision is Decision.REFUSED:
            await self._ledger.finish(action, OutcomeStatus.REFUSED, seq)
        else:
            if await self._approvals.get(action.id) is None:
                await self._approvals.hold(action, held_until)
            await self._ledger.finish(action, OutcomeStatus.HELD, seq)

    async def _audited(self, unsent: list[LedgerEntry]) -> dict[str, int]:
        """The decision records the unsent claims already have: action id -> seq."""
        if not unsent:
            return {}
        after = min(e.claim_seq for e in unsent)
        found = await self._chain.find({e.action_id for e in unsent}, DECISION_RECORDS, after)
        return {action_id: record.seq for action_id, record in found.items()}


def _lease(action_id: str) -> str:
    return f"outbox-{action_id}"
