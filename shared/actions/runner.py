"""Runs one queued action: skips deliveries of actions that already ended, dispatches to the
executor, audits the outcome and records it in the ledger.

Transient errors propagate so the queue redelivers the message, except on the last allowed
delivery, where the failure is audited instead of vanishing into the dead-letter queue.
"""

from __future__ import annotations

import logging

from shared.actions.accounts import EXECUTORS
from shared.audit import AuditChain
from shared.errors import PermanentError, TransientError
from shared.models import (
    ActionOutcome,
    ActionRequest,
    Actor,
    AuditEntry,
    AuditEvent,
    OutcomeStatus,
    action_entry,
)
from shared.policy import Guards
from shared.ports import LEDGER_QUEUED, ActionLedger, Directory

logger = logging.getLogger(__name__)


class ActionRunner:
    def __init__(
        self,
        directory: Directory,
        chain: AuditChain,
        ledger: ActionLedger,
        guards: Guards,
        max_deliveries: int,
    ) -> None:
        self._directory = directory
        self._chain = chain
        self._ledger = ledger
        self._guards = guards
        self._max_deliveries = max_deliveries

    async def run(self, action: ActionRequest, delivery_count: int) -> ActionOutcome | None:
        """Execute `action` once. None means the delivery was a duplicate of a finished action."""
        entry = await self._ledger.get(action.id)
        if entry is not None and entry.state != LEDGER_QUEUED:
            logger.info("action %s already ended (%s); delivery ignored", action.id, entry.state)
            return None
        try:
            outcome = await EXECUTORS[action.kind](self._directory, self._guards, action)
        except TransientError as exc:
            if delivery_count < self._max_deliveries:
                logger.warning(
                    "action %s attempt %s failed transiently (%s); redelivery follows",
                    action.id,
                    delivery_count,
                    exc.status,
                )
                raise
            outcome = _failed(exc, f"gave up after {delivery_count} deliveries")
        except PermanentError as exc:
            outcome = _failed(exc, "not retried")
        record = await self._chain.append(outcome_entry(action, outcome))
        await self._ledger.finish(action.id, outcome.status, record.seq)
        return outcome

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


def _failed(exc: TransientError | PermanentError, note: str) -> ActionOutcome:
    return ActionOutcome(
        status=OutcomeStatus.FAILED,
        error=f"{exc} ({note})",
        request_ids=[exc.request_id] if exc.request_id else [],
    )


def outcome_entry(action: ActionRequest, outcome: ActionOutcome) -> AuditEntry:
    result = outcome.model_dump(mode="json", exclude_defaults=True)
    return action_entry(action, AuditEvent.for_outcome(outcome.status), result)
