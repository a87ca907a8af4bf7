"""The intake's outbox: an action is claimed in the ledger with its request before anything
else happens, then its decision is audited and it is handed on (queued, held for approval, or
closed as refused), and only then marked sent. A claim that never got that far — the worker
died, storage or Service Bus failed in between — is finished later from the ledger row, by
the next delivery of the same alert or by the reconciler, under the same message id (Service
Bus duplicate detection and the executor's ledger make a second send harmless).

Each decision is audited once, however slow a committer is:
- A fresh claim carries its own lease, written in the insert that creates it (no extra round
  trip): until it expires nobody else commits the claim.
- The claimer's claims and commit run under a hard time limit (`COMMIT_LIMIT`) that ends
  well before that lease: a commit that stalls (its audit append waiting out a storage
  outage) is abandoned, and a request it already sent is carried out by the Table service
  within its server timeout or not at all, still inside the lease (docs/runbook.md).
- Committers of an earlier, unsent claim (a sender's retry, the reconciler) take it only once
  its own lease has expired, and then take a lease on it and read it again, under the same
  time limit, so two of them at once audit it once too. A commit that did not finish leaves
  its leases to expire; only a finished one gives them back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from shared.audit import AuditChain
from shared.concurrency import gather_bounded
from shared.errors import TransientError
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

# How long a committer holds a claim (its own fresh claims, or an unsent one it took over); one
# that died or stalled holding it is waited out.
CLAIM_LEASE = timedelta(minutes=2)
# The longest the Table service carries out a request it received: its server timeout for
# inserts, updates and deletes (queries stop after 5 s and return a continuation).
SERVER_TIMEOUT = timedelta(seconds=30)
# Slack for a request's way to the service and for two workers' clocks.
LEASE_MARGIN = timedelta(seconds=30)
# How long claiming and committing may take before they are abandoned: whatever they sent
# has been carried out, or never will be, before their lease ends.
COMMIT_LIMIT = CLAIM_LEASE - SERVER_TIMEOUT - LEASE_MARGIN
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

    @asynccontextmanager
    async def time_limit(self) -> AsyncIterator[None]:
        """Claims and their commit run inside this: past `COMMIT_LIMIT` they are abandoned
        (cancelled) and a TransientError is raised, so the sender retries. Entered before the
        first claim is made, so it ends before any of their leases."""
        limit = asyncio.timeout(COMMIT_LIMIT.total_seconds())
        try:
            async with limit:
                yield
        except TimeoutError as exc:
            if not limit.expired():
                raise
            raise TransientError(
                f"claims not committed within {COMMIT_LIMIT.total_seconds():g} s: abandoned; "
                "they are committed once their lease has expired"
            ) from exc

    async def claim(self, action: ActionRequest, claim_seq: int) -> str | None:
        """Claim `action`, leased to this claimer until `CLAIM_LEASE` from now; call it inside
        `time_limit`, with the commit. The claim's ETag, None when it was claimed before."""
        now = self.clock()
        return await self._ledger.claim(action, now, claim_seq, now + CLAIM_LEASE)

    async def claim_all(self, actions: list[ActionRequest], claim_seq: int) -> dict[str, str]:
        """`claim` for several actions in as few writes as the ledger allows; the ids claimed
        now, with their ETags."""
        if not actions:
            return {}
        now = self.clock()
        return await self._ledger.claim_all(actions, now, claim_seq, now + CLAIM_LEASE)

    async def commit(
        self,
        fresh: list[ActionRequest],
        unsent: list[LedgerEntry],
        handled: Sequence[tuple[str, str]] = (),
        claims: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Audit the decisions of the claims made just now (`fresh`, with their ETags in
        `claims`) and of earlier claims that never reached the queue (`unsent`, audited only
        if their record is missing), then hand every one of them on; the ids handed on. An
        unsent claim whose own lease is live, that another committer holds, or that was
        handed on since it was read, is left alone. Each message carries its claim's ETag.

        `handled`, the alert versions (key, version) of the submission, are marked handled
        once everything is on the queue, in the same write as the claims' sent marks (with
        nothing to commit, at once): the handled mark costs no round trip of its own. A failed
        write fails the commit, and the sender retries."""
        if not fresh and not unsent:
            if handled:
                await self._ledger.mark_sent(handled=handled)
            return set()
        holder = uuid.uuid4().hex
        taken: list[LedgerEntry] = []
        async with self.time_limit():
            await self._take(unsent, holder, taken)
            await self._commit(fresh, taken, handled, claims or {})
        await gather_bounded(self._leases.release(_lease(e.action_id), holder) for e in taken)
        return {a.id for a in fresh} | {e.action_id for e in taken}

    async def _take(self, unsent: list[LedgerEntry], holder: str, taken: list[LedgerEntry]) -> None:
        """Collect into `taken` the unsent claims this committer may hand on: their own lease
        expired, leased now to `holder`, and still unsent when read again under that lease."""
        for entry in unsent:
            if entry.leased(self.clock()):
                continue
            if not await self._leases.acquire(_lease(entry.action_id), holder, CLAIM_LEASE):
                continue
            current = await self._ledger.get(entry.action_id)
            if (
                current is not None
                and current.open
                and not current.sent
                and not current.leased(self.clock())
            ):
                taken.append(current)
            else:
                await self._leases.release(_lease(entry.action_id), holder)

    async def _commit(
        self,
        fresh: list[ActionRequest],
        unsent: list[LedgerEntry],
        handled: Sequence[tuple[str, str]],
        claims: Mapping[str, str],
    ) -> None:
        if not fresh and not unsent:
            if handled:
                await self._ledger.mark_sent(handled=handled)
            return
        earlier = [e.request for e in unsent if e.request is not None]
        audited = await self._audited(unsent)
        missing = [a for a in earlier if a.id not in audited]
        records = await self._chain.append_all([decision_entry(a) for a in [*fresh, *missing]])
        seqs = {a.id: r.seq for a, r in zip([*fresh, *missing], records, strict=True)}
        seqs.update(audited)
        actions = [*fresh, *earlier]
        queued = [a for a in actions if a.decision in QUEUED_DECISIONS]
        etags = {**claims, **{e.action_id: e.etag for e in unsent if e.etag}}
        await self._queue.send(queued, etags)
        held_until = self.clock() + self._approval_ttl
        closing = [a for a in actions if a.decision not in QUEUED_DECISIONS]
        await gather_bounded(self._close(a, seqs[a.id], held_until) for a in closing)
        await self._ledger.mark_sent(*(a.id for a in queued), handled=handled)
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
        targets = {e.action_id: e.target for e in unsent}
        found = await self._chain.find(set(targets), DECISION_RECORDS, after, targets)
        return {action_id: record.seq for action_id, record in found.items()}


def _lease(action_id: str) -> str:
    return f"outbox-{action_id}"
