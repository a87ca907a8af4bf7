"""The change notifications' dead-letter queue, drained on a timer: every notification the
queue gave up on (its processing failed on each delivery) is processed again or, once that
has failed for the give-up time since it was enqueued, recorded as `notification.dropped` in
the audit trail with what it named. None is left without a trace.

A notification is processed again here, not sent back to the queue: its message id is the
notification's key, which Service Bus duplicate detection would drop within its window.
Processing a late notification is safe: the processor compares the object with its last
snapshot, and a notification processed before is a duplicate (its claim)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from shared.audit import AuditChain
from shared.models import Actor, AuditEntry, AuditEvent
from shared.ports import DeadLetter
from shared.watch.changes import ChangeProcessor
from shared.watch.ports import ChangeNotice, NotificationQueue
from shared.watch.subscriptions import SubscriptionManager

logger = logging.getLogger(__name__)

DEAD_LETTER_BATCH = 100


@dataclass
class NotificationDrainReport:
    dead_letters: int = 0
    processed: int = 0
    dropped: int = 0
    kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class NotificationDeadLetters:
    def __init__(
        self,
        queue: NotificationQueue,
        changes: ChangeProcessor,
        subscriptions: SubscriptionManager,
        chain: AuditChain,
        give_up_after: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._queue = queue
        self._changes = changes
        self._subscriptions = subscriptions
        self._chain = chain
        self._give_up_after = give_up_after
        self._clock = clock

    async def drain(self) -> NotificationDrainReport:
        report = NotificationDrainReport()

        async def handle(letter: DeadLetter) -> bool:
            return await self._handle(letter, report)

        report.dead_letters = await self._queue.drain_dead_letters(handle, DEAD_LETTER_BATCH)
        return report

    async def _handle(self, letter: DeadLetter, report: NotificationDrainReport) -> bool:
        """True when the letter was processed or recorded; False keeps it for the next run
        (the audit trail itself is unreachable, so nothing could be recorded)."""
        try:
            notice = ChangeNotice.model_validate_json(letter.body)
        except ValidationError as exc:
            await self._dropped(
                letter, None, f"not a change notification ({exc.error_count()} errors)"
            )
            report.dropped += 1
            return True
        try:
            if notice.lifecycle_event:
                await self._subscriptions.on_lifecycle(notice)
            else:
                await self._changes.process(notice)
        except Exception as exc:
            since = letter.enqueued_at or self._clock()
            if self._clock() - since < self._give_up_after:
                logger.warning("dead-lettered notification %s failed again: %s", notice.id, exc)
                report.kept += 1
                return False
            await self._dropped(letter, notice, f"{type(exc).__name__}: {exc}")
            report.dropped += 1
            return True
        logger.warning("dead-lettered notification %s processed", notice.id)
        report.processed += 1
        return True

    async def _dropped(self, letter: DeadLetter, notice: ChangeNotice | None, error: str) -> None:
        named = (
            {
                "purpose": str(notice.purpose),
                "resource": notice.resource,
                "change_type": notice.change_type,
                "lifecycle_event": notice.lifecycle_event,
                "object_id": notice.object_id,
            }
            if notice is not None
            else {}
        )
        enqueued = letter.enqueued_at.isoformat() if letter.enqueued_at else None
        await self._chain.append(
            AuditEntry(
                event=AuditEvent.NOTIFICATION_DROPPED,
                actor=Actor(),
                target=notice.object_id if notice is not None else None,
                reason=f"dead-lettered change notification {letter.message_id} given up",
                result={
                    **named,
                    "error": error,
                    "dead_letter_reason": letter.reason,
                    "enqueued_at": enqueued,
                },
            )
        )
