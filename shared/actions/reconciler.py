"""The action reconciler: what no single delivery can guarantee, checked on a timer.

- Claims that never reached the queue (the worker died or storage failed between the claim and
  the send) are sent, under the same message id, once their claimer's lease has expired.
- Blocks still pending in the registry with no claim, an unsent one, or a closed one (the
  registry never moved on) are claimed and sent, or settled.
- Unblocks left `unblocking` in the registry for `stuck_after` are settled when their outcome
  is recorded; otherwise their message was lost (or its worker died for good): an
  `alert.raised` record, and the unblock is sent once more, already past its give-up time, so
  it runs or is recorded as failed (the network then stays blocked). The registry row is
  rewritten unchanged, so the next re-send waits another `stuck_after`.
- Every dead-lettered action is re-driven while its give-up time has not passed, and recorded
  (failed, or executed if the tenant shows it) once it has; a dead letter of an action that has
  ended already is dropped.
- An action still open long after it was claimed raises an `alert.raised` record, once, and is
  sent once more to end it.

Each step is a method a drill can call on its own; `run` does them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from shared.actions.ip_blocks import IpBlocklist
from shared.actions.runner import ActionRunner
from shared.audit import AuditChain
from shared.models import ActionOutcome, ActionRequest, Actor, AuditEntry, AuditEvent
from shared.outbox import Outbox
from shared.ports import ActionLedger, ActionQueue, BlockRegistry, BlockState, DeadLetter

logger = logging.getLogger(__name__)

DEAD_LETTER_BATCH = 100


@dataclass(frozen=True)
class ReconcileLimits:
    resend_after: timedelta  # an unsent claim this old, its lease expired, is sent
    give_up_after: timedelta  # a dead letter retried this long is recorded, not re-driven
    stuck_after: timedelta  # an action open this long after its claim raises an alert


@dataclass
class ReconcileReport:
    resent: int = 0
    blocks_settled: int = 0
    dead_letters: int = 0
    redriven: int = 0
    given_up: int = 0
    alerts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ActionReconciler:
    def __init__(
        self,
        outbox: Outbox,
        ledger: ActionLedger,
        registry: BlockRegistry,
        queue: ActionQueue,
        runner: ActionRunner,
        blocklist: IpBlocklist | None,
        chain: AuditChain,
        limits: ReconcileLimits,
        clock: Callable[[], datetime],
    ) -> None:
        self._outbox = outbox
        self._ledger = ledger
        self._registry = registry
        self._queue = queue
        self._runner = runner
        self._blocklist = blocklist
        self._chain = chain
        self._limits = limits
        self._clock = clock

    async def run(self) -> ReconcileReport:
        """Every step, each attempted even when an earlier one failed; the first failure is
        raised at the end (the timer's run is then logged as failed)."""
        report = ReconcileReport()
        failures: list[Exception] = []
        for step in (
            self.resend_unsent,
            self.settle_pending_blocks,
            self.finish_unblocking,
            self.drain_dead_letters,
            self.raise_stuck,
        ):
            try:
                await step(report)
            except Exception as exc:
                logger.exception("reconciler step %s failed", step.__name__)
                failures.append(exc)
        if failures:
            raise failures[0]
        return report

    async def resend_unsent(self, report: ReconcileReport) -> None:
        stale = await self._ledger.unsent(self._clock() - self._limits.resend_after)
        if stale:
            report.resent += len(await self._outbox.commit([], stale))

    async def settle_pending_blocks(self, report: ReconcileReport) -> None:
        """Blocks pending in the registry for longer than the resend time."""
        cutoff = self._clock() - self._limits.resend_after
        for entry in await self._registry.entries(BlockState.PENDING):
            block = entry.block
            if block.requested_at > cutoff:
                continue
            row = await self._ledger.get(block.id)
            if row is None:
                async with self._outbox.time_limit():
                    seq = await self._outbox.claim_seq()
                    etag = await self._outbox.claim(block, seq)
                    if etag is not None:
                        claims = {block.id: etag}
                        report.resent += len(await self._outbox.commit([block], [], claims=claims))
            elif row.open and not row.sent:
                report.resent += len(await self._outbox.commit([], [row]))
            elif row.ended(block) and await self._settle_recorded(block, row.audit_seq):
                # The outcome is audited and the ledger closed; the registry never moved on.
                report.blocks_settled += 1

    async def finish_unblocking(self, report: ReconcileReport) -> None:
        """Unblocks left `unblocking` in the registry for longer than the stuck time."""
        cutoff = self._clock() - self._limits.stuck_after
        for entry in await self._registry.entries(BlockState.UNBLOCKING):
            unblock = entry.unblock
            if unblock is None or entry.changed_at is None or entry.changed_at > cutoff:
                continue
            row = await self._ledger.get(unblock.id)
            if row is not None and row.ended(unblock):
                if await self._settle_recorded(unblock, row.audit_seq):
                    report.blocks_settled += 1
                continue
            if row is not None and row.open and row.claimed_at is not None:
                # A claimed unblock (an engineer's): the outbox sends it, `raise_stuck` alerts.
                if not row.sent:
                    report.resent += len(await self._outbox.commit([], [row]))
                continue
            if not await self._registry.update(entry, BlockState.UNBLOCKING):
                continue  # it moved on meanwhile
            await self._chain.append(
                AuditEntry(
                    event=AuditEvent.ALERT_RAISED,
                    actor=Actor(),
                    action_id=unblock.id,
                    kind=str(unblock.kind),
                    target=unblock.target,
                    reason=(
                        f"network {entry.network} has been unblocking since "
                        f"{entry.changed_at.isoformat()}; its unblock is sent once more"
                    ),
                    result={"state": str(entry.state), "generation": entry.generation},
                )
            )
            await self._queue.send([unblock.retried(entry.changed_at)])
            report.alerts += 1
            report.resent += 1

    async def _settle_recorded(self, action: ActionRequest, audit_seq: int | None) -> bool:
        """Move the registry on from `action`'s recorded outcome (the ledger is closed, the
        registry never moved)."""
        if not audit_seq or self._blocklist is None:
            return False
        record = await self._chain.record(audit_seq)
        if record is None:
            return False
        outcome = ActionOutcome.model_validate(record.entry.result)
        await self._blocklist.settle(action, outcome)
        return True

    async def drain_dead_letters(self, report: ReconcileReport) -> None:
        async def handle(letter: DeadLetter) -> bool:
            return await self._dead_letter(letter, report)

        report.dead_letters += await self._queue.drain_dead_letters(handle, DEAD_LETTER_BATCH)

    async def _dead_letter(self, letter: DeadLetter, report: ReconcileReport) -> bool:
        """Re-drive or record one dead-lettered action; False leaves it dead-lettered (the
        storage it needs is still down), for the next run."""
        try:
            action = ActionRequest.model_validate_json(letter.body)
        except ValidationError as exc:
            await self._runner.reject_message(letter.message_id, exc.error_count())
            return True
        now = self._clock()
        entry = await self._ledger.get(action.id)
        if entry is not None and entry.ended(action):
            return True
        claimed_at = entry.claimed_at if entry is not None else None
        since = action.retrying_since or claimed_at or letter.enqueued_at or now
        if now - since < self._limits.give_up_after:
            await self._queue.send([action.retried(since)])
            report.redriven += 1
            logger.warning("dead-lettered action %s re-driven", action.id)
            return True
        await self._runner.give_up(action, f"dead-lettered: {letter.reason or 'no reason'}")
        report.given_up += 1
        return True

    async def raise_stuck(self, report: ReconcileReport) -> None:
        now = self._clock()
        for entry in await self._ledger.stuck(now - self._limits.stuck_after):
            claimed = entry.claimed_at.isoformat() if entry.claimed_at else "unknown"
            await self._chain.append(
                AuditEntry(
                    event=AuditEvent.ALERT_RAISED,
                    actor=Actor(),
                    action_id=entry.action_id,
                    kind=entry.kind,
                    target=entry.target,
                    reason=(
                        f"action claimed at {claimed} has not ended after "
                        f"{int(self._limits.stuck_after.total_seconds() // 60)} minutes"
                    ),
                    result={"state": entry.state, "sent": entry.sent},
                )
            )
            await self._ledger.mark_alerted(entry.action_id)
            report.alerts += 1
            if entry.request is not None and entry.claimed_at is not None:
                # Sent once more, already past its give-up time: it runs, or is recorded.
                await self._queue.send([entry.request.retried(entry.claimed_at)])
