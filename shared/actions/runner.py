"""Runs one queued action: skips deliveries of actions that already ended, finishes one whose
outcome an earlier delivery audited before it died, dispatches to the executor, audits the
outcome once and records it in the ledger.

Permanent errors are audited as failed, after the tenant is re-read. Infrastructure errors put
the action back on the queue with backoff (Retry-After when given) until the give-up time has
passed; only then is the failure recorded.

A first delivery of an account action that carries its claim's ETag does not read the ledger:
the claim is as the outbox sent it unless someone wrote to it since, and the run's first
ledger write (its intent, or the recording mark of an outcome without a write) is made only
on that ETag. When it is refused (`ClaimChanged`, nothing written to the tenant yet) the row
is read and the delivery runs as any other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.actions.accounts import AccountActions
from shared.actions.breakglass import EmergencyAccess, expiry_deactivation
from shared.actions.ip_blocks import Applied, IpBlocklist, Settle, expiry_unblock
from shared.audit import AuditChain
from shared.concurrency import gather_bounded
from shared.errors import PermanentError, TransientError
from shared.models import (
    ActionKind,
    ActionOutcome,
    ActionRequest,
    Actor,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Decision,
    OutcomeStatus,
    action_entry,
)
from shared.ports import (
    LEDGER_QUEUED,
    ActionLedger,
    ActionQueue,
    ApprovalState,
    ApprovalStore,
    ClaimChanged,
    LedgerEntry,
)

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


OUTCOME_RECORDS = frozenset(str(AuditEvent.for_outcome(status)) for status in OutcomeStatus)


def _runs_as_claimed(action: ActionRequest) -> bool:
    """Whether a delivery of `action` carrying its claim's ETag may run from the claim as
    sent: a first delivery of an account action. Retries, approved runs of held actions, IP
    blocks (a pass records other actions too) and emergency access read the row."""
    return (
        action.retry == 0
        and "approved_by" not in action.params
        and not action.kind.targets_ip
        and not action.kind.targets_breakglass
    )


def _as_claimed(action: ActionRequest, etag: str) -> LedgerEntry:
    """The claim of `action` as the outbox made and sent it."""
    return LedgerEntry(
        action_id=action.id,
        state=LEDGER_QUEUED,
        kind=str(action.kind),
        target=action.target,
        request=action,
        sent=True,
        etag=etag,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """When an action that met an infrastructure error runs again, and when it is given up:
    by the time since it was first put back on the queue, never by a count of deliveries."""

    give_up_after: timedelta
    base_delay_s: float
    max_delay_s: float

    def delay(self, retry: int, exc: BaseException) -> timedelta:
        """`Retry-After` when the service sent one (a little later, so that the workers
        woken by one throttling answer do not all return at once); otherwise exponential
        backoff with jitter."""
        retry_after = _retry_after(exc)
        if retry_after is not None:
            return timedelta(seconds=max(retry_after, 0.0) * random.uniform(1.0, 1.1))
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** min(retry, 30))
        return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


def _retry_after(exc: BaseException | None) -> float | None:
    """The `Retry-After` of the throttling behind `exc`, however deeply it is wrapped."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return exc.retry_after
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


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
        retry: RetryPolicy,
        clock: Callable[[], datetime],
    ) -> None:
        self._accounts = accounts
        self._emergency = emergency
        self._chain = chain
        self._ledger = ledger
        self._queue = queue
        self._blocklist = blocklist
        self._holds = holds
        self._retry = retry
        self._clock = clock

    async def run(
        self, action: ActionRequest, claim_etag: str | None = None
    ) -> ActionOutcome | None:
        """Execute `action` once; `claim_etag`, the ETag of its claim the message carries.
        None means another delivery or a batch already ended it, or it was put back on the
        queue to run later.

        Infrastructure errors (storage, the queue, throttling, anything not permanent) put
        the action back on the queue with backoff; once it has been retried for the give-up
        time, its failure is recorded. If even that cannot be recorded, the error propagates
        and the message ends in the dead-letter queue, which the reconciler drains."""
        etag = claim_etag if claim_etag and _runs_as_claimed(action) else None
        try:
            if etag is not None:
                try:
                    return await self._attempt(action, _as_claimed(action, etag), etag)
                except ClaimChanged:
                    logger.info("action %s: its claim changed since it was sent", action.id)
            return await self._attempt(action, await self._ledger.get(action.id))
        except Exception as exc:
            if etag is not None:
                await self._note_sent(action)
            return await self._later(action, exc)

    async def _note_sent(self, action: ActionRequest) -> None:
        """A delivery that did not read its claim does not know whether the outbox noted it
        sent: noted now, before its retry is scheduled, so that the reconciler does not send
        a second copy beside that retry. Best effort: the retry reads the row and notes it."""
        try:
            await self._ledger.mark_sent(action.id)
        except Exception as exc:
            logger.warning("action %s could not be noted sent (%s)", action.id, exc)

    async def _attempt(
        self, action: ActionRequest, entry: LedgerEntry | None, claim_etag: str | None = None
    ) -> ActionOutcome | None:
        """Run `action` from its ledger row `entry`; with `claim_etag`, `entry` is the claim
        as sent, and the run's first ledger write is conditional on it."""
        if entry is not None and entry.ended(action):
            logger.info("action %s already ended (%s); delivery ignored", action.id, entry.state)
            return None
        if entry is not None and entry.open and not entry.sent:
            # The claim reached the queue, whatever its outbox could not note (the worker
            # died or storage failed after the send): noted now, so that neither the
            # reconciler nor a later delivery of the alert sends it again while this
            # delivery, or a retry it schedules, is still running it. A second copy past the
            # queue's duplicate window would run side by side with that retry, and both would
            # record an outcome.
            await self._ledger.mark_sent(action.id)
        recovered = await self._recover(action, entry)
        if recovered is not None:
            return recovered
        if "approved_by" in action.params and not await self._holds.approved(action):
            logger.warning("action %s was not approved after all; delivery ignored", action.id)
            return None
        try:
            applied = await self._execute(action, entry, claim_etag)
        except PermanentError as exc:
            applied = await self._failed(action, exc, "not retried")
            await self._record(applied)
        return next((a.outcome for a in applied if a.action.id == action.id), None)

    async def _later(self, action: ActionRequest, exc: Exception) -> ActionOutcome | None:
        now = self._clock()
        since = action.retrying_since or now
        if now - since >= self._retry.give_up_after:
            minutes = int((now - since).total_seconds() // 60)
            applied = await self._failed(action, exc, f"gave up after {minutes} minutes")
            await self._record(applied)
            return next((a.outcome for a in applied if a.action.id == action.id), None)
        delay = self._retry.delay(action.retry, exc)
        await self._queue.schedule([action.retried(now)], now + delay)
        logger.warning(
            "action %s attempt %s failed (%s); runs again in %.1f s",
            action.id,
            action.retry + 1,
            type(exc.__cause__ or exc).__name__,
            delay.total_seconds(),
        )
        return None

    async def give_up(self, action: ActionRequest, reason: str) -> ActionOutcome | None:
        """Record the end of an action the queue gave up on (the reconciler, for a dead
        letter past its give-up time): executed if the tenant shows it, failed otherwise.
        None when it had ended already."""
        entry = await self._ledger.get(action.id, sent_mark=False)
        if _closed(entry, action):
            return None
        recovered = await self._recover(action, entry)
        if recovered is not None:
            return recovered
        applied = await self._failed(action, RuntimeError(reason), "dead-lettered")
        await self._record(applied)
        return applied[0].outcome

    async def _recover(
        self, action: ActionRequest, entry: LedgerEntry | None
    ) -> ActionOutcome | None:
        """If an earlier delivery began recording this action (its ledger row has a recording
        mark), look for the outcome it may have audited before it died without closing the
        row, and finish what it left undone instead of running the action again. Recording
        looks once more right before its append: a delivery whose lock ran out may still be
        running beside this one."""
        if entry is None or not entry.record_from:
            return None
        found = await self._chain.find(
            {action.id},
            OUTCOME_RECORDS,
            entry.record_from,
            {action.id: action.target},
            accept=lambda record: _own_outcome(action, record),
        )
        record = found.get(action.id)
        if record is None:
            return None
        outcome = ActionOutcome.model_validate(record.entry.result)
        logger.warning("action %s: outcome found in audit record %s", action.id, record.seq)
        try:
            await self._complete([_recorded(action, outcome)], {action.id: record.seq}, None)
        except Exception as exc:
            raise RecordingFailed(f"closing {action.id} failed") from exc
        return outcome

    async def _execute(
        self, action: ActionRequest, entry: LedgerEntry | None, claim_etag: str | None = None
    ) -> list[Applied]:
        """Run the executor and audit what it did (IP passes audit before the registry moves).
        `entry` is the action's ledger row as this delivery read it (or, with `claim_etag`,
        as it was claimed): a delivery has its action to itself (peek-lock), so it stands for
        the row when the outcome is recorded; a pass over the blocklist records other actions
        too, and reads theirs."""
        known = {action.id: entry}
        if action.kind.targets_breakglass:
            applied = [await self._emergency_run(action)]
            await self._record(applied, known=known)
            return applied
        if not action.kind.targets_ip:
            # The recording mark goes into the ledger with the intent the executor writes
            # before its write (an earlier mark is kept: it is the lower bound).
            earlier = entry.intent if entry else None
            record_from = (entry.record_from if entry else 0) or await self._chain.head_seq()
            outcome = await self._accounts.run(action, earlier, record_from, claim_etag)
            # Executed without an earlier intent: this run wrote its intent, and the mark.
            marked = outcome.status is OutcomeStatus.EXECUTED and earlier is None
            if claim_etag is not None and not marked:
                # A run from the claim as sent that wrote no intent: its recording mark goes
                # in on the claim's ETag before anything else is written (an approval hold
                # from a copy of a message whose action has ended must not reopen it).
                await self._ledger.recording(action, record_from, claim_etag)
                marked = True
            if outcome.status is OutcomeStatus.HELD:
                await self._holds.hold(action, outcome.error or "waits for approval")
            applied = [Applied(action, outcome)]
            await self._record(
                applied, known=known, marked={action.id} if marked else set(), head=record_from
            )
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
        """The outcome of an action about to be recorded as failed, after re-reading the
        tenant: if it shows the write this action intended, the action is recorded as
        executed (confirmed), not failed."""
        confirmed = await self._confirm(action)
        if confirmed is not None:
            return [confirmed]
        request_id = exc.request_id if isinstance(exc, TransientError | PermanentError) else None
        outcome = ActionOutcome(
            status=OutcomeStatus.FAILED,
            error=f"{type(exc).__name__}: {exc} ({note})",
            request_ids=[request_id] if request_id else [],
        )
        return [Applied(action, outcome)]

    async def _confirm(self, action: ActionRequest) -> Applied | None:
        if action.dry_run or action.kind.targets_breakglass:
            return None
        try:
            if action.kind.targets_ip:
                return await self._require_blocklist().confirm(action)
            outcome = await self._accounts.confirm(action)
        except Exception as exc:
            logger.warning("action %s: the tenant could not be re-read (%s)", action.id, exc)
            return None
        return Applied(action, outcome) if outcome is not None else None

    async def _record(
        self,
        applied: list[Applied],
        settle: Settle | None = None,
        known: dict[str, LedgerEntry | None] | None = None,
        marked: set[str] | None = None,
        head: int | None = None,
    ) -> None:
        """Audit every outcome (one batch) that is not audited yet, schedule the expiry of
        temporary blocks, let `settle` move the registry on, close the ledger rows.

        Exactly one outcome record per action: an action whose ledger row is closed already
        is skipped, and one whose row says an earlier attempt began recording is looked up
        in the trail before anything is appended. Before the append each row gets its
        recording mark, unless this delivery wrote it already (`marked`, with the intent;
        `head`, the audit head taken before that). Any failure here is a `RecordingFailed`."""
        try:
            entries = await gather_bounded(self._entry(a.action.id, known) for a in applied)
            live = [a for a, e in zip(applied, entries, strict=True) if not _closed(e, a.action)]
            begun = {e.action_id: e.record_from for e in entries if e and e.record_from}
            found = {}
            if begun:
                runs = {a.action.id: a.action for a in live}
                ids = runs.keys() & begun.keys()
                if ids:
                    targets = {i: runs[i].target for i in ids}
                    after = min(begun[i] for i in ids)
                    found = await self._chain.find(
                        ids,
                        OUTCOME_RECORDS,
                        after,
                        targets,
                        accept=lambda r: _own_outcome(runs[r.entry.action_id or ""], r),
                    )
            fresh = [a for a in live if a.action.id not in found]
            if head is None:
                head = await self._chain.head_seq()
            skip = begun.keys() | (marked or set())
            unmarked = [a for a in fresh if a.action.id not in skip]
            await self._ledger.recording_all([a.action for a in unmarked], head)
            records = await self._chain.append_all(
                [outcome_entry(a.action, a.outcome) for a in fresh]
            )
            seqs = {action_id: record.seq for action_id, record in found.items()}
            seqs.update({a.action.id: r.seq for a, r in zip(fresh, records, strict=True)})
            await self._complete(live, seqs, settle)
        except Exception as exc:
            raise RecordingFailed(f"recording {len(applied)} outcomes failed") from exc

    async def _entry(
        self, action_id: str, known: dict[str, LedgerEntry | None] | None
    ) -> LedgerEntry | None:
        if known is not None and action_id in known:
            return known[action_id]
        # Recording needs the row's state and marks, not whether the claim was noted sent.
        return await self._ledger.get(action_id, sent_mark=False)

    async def _complete(
        self, applied: list[Applied], seqs: dict[str, int], settle: Settle | None
    ) -> None:
        """After the audit: follow-ups, the registry, then the ledger. Follow-ups before the
        ledger: once an action is closed a redelivery is ignored, so a failed schedule must
        leave it open. Their ids are deterministic."""
        for item in applied:
            if item.expires_at is not None:
                follow_up = item.follow_up or expiry_unblock(item.action)
                await self._queue.schedule([follow_up], item.expires_at)
        if settle is not None:
            await settle()
        elif self._blocklist is not None:
            for item in applied:
                if item.action.kind.targets_ip and not item.action.dry_run:
                    await self._blocklist.settle(item.action, item.outcome)
        await self._ledger.finish_all(
            [(item.action, item.outcome.status, seqs[item.action.id]) for item in applied]
        )

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


def _own_outcome(action: ActionRequest, record: AuditRecord) -> bool:
    """Whether an outcome record found under `action`'s id is this run's. The approved run of
    a held action shares its id with the held record, which may lie after the recording mark
    (marks come from the clock, less a few seconds of slack); an approved run is never held.
    Applied while the trail is searched, not to the record found: within one second a held
    record in a higher lane has the higher position than the run's outcome appended after it."""
    return not ("approved_by" in action.params and record.entry.event == AuditEvent.ACTION_HELD)


def _closed(entry: LedgerEntry | None, action: ActionRequest) -> bool:
    return entry is not None and entry.ended(action)


def _recorded(action: ActionRequest, outcome: ActionOutcome) -> Applied:
    """What an audited outcome implies still to do (its expiry's follow-up)."""
    expires = outcome.after.get("expires_at")
    if outcome.status is not OutcomeStatus.EXECUTED or not expires:
        return Applied(action, outcome)
    expires_at = datetime.fromisoformat(str(expires))
    if action.kind is ActionKind.ACTIVATE_BREAKGLASS:
        return Applied(action, outcome, expires_at, expiry_deactivation(action, expires_at))
    return Applied(action, outcome, expires_at)


def outcome_entry(action: ActionRequest, outcome: ActionOutcome) -> AuditEntry:
    result = outcome.model_dump(mode="json", exclude_defaults=True)
    if outcome.status is OutcomeStatus.DRY_RUN:
        result["note"] = DRY_RUN_NOTE
    return action_entry(action, AuditEvent.for_outcome(outcome.status), result)
