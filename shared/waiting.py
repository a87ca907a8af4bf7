"""The approvers' view of held actions: each action waiting for a decision with what an
approver needs to decide it: the alert and rule behind it, the target and the names it was
recorded under, the reason it waits, the guards' verdicts from its audit record, and when the
approval window closes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.approvals import Approvals
from shared.ports import ActionLedger, Approval, AuditStore


class WaitingApprovals:
    def __init__(
        self,
        approvals: Approvals,
        ledger: ActionLedger,
        store: AuditStore,
        clock: Callable[[], datetime],
    ) -> None:
        self._approvals = approvals
        self._ledger = ledger
        self._store = store
        self._clock = clock

    async def listing(self) -> list[dict[str, Any]]:
        """Every pending approval, the soonest to expire first, as JSON-ready objects."""
        now = self._clock()
        return [
            await self._described(approval, now) for approval in await self._approvals.pending()
        ]

    async def _described(self, approval: Approval, now: datetime) -> dict[str, Any]:
        action = approval.action
        entry = await self._ledger.get(action.id)
        held_seq = entry.audit_seq if entry is not None else None
        record = await self._store.get(held_seq) if held_seq else None
        # The held record tells what the guards said; it is the trail's own account of the hold
        # only if it is about this action.
        held = record if record is not None and record.entry.action_id == action.id else None
        guards = held.entry.result.get("guards") if held is not None else None
        names = {key: action.params.get(key) for key in ("target_upn", "target_name")}
        before = held.entry.result.get("before") if held is not None else None
        if isinstance(before, dict):
            names["target_upn"] = names["target_upn"] or before.get("userPrincipalName")
            names["target_name"] = names["target_name"] or before.get("displayName")
        return {
            "action_id": action.id,
            "kind": str(action.kind),
            "target": action.target,
            "target_upn": _text(names["target_upn"]),
            "target_name": _text(names["target_name"]),
            # Why it was asked for (the request's reason, as the hold's record keeps it) and
            # why it waits (what the guard said when it held it).
            "reason": held.entry.reason if held is not None else action.reason,
            "held_because": action.reason,
            "rule": action.rule or "",
            "alert_id": action.alert_id or "",
            "incident_id": action.incident_id or "",
            "requested_by": action.requested_by.name,
            "requested_by_kind": action.requested_by.kind,
            "requested_at": action.requested_at.isoformat(),
            "expires_at": approval.expires_at.isoformat(),
            "expired": approval.expires_at <= now,
            "held_seq": held.seq if held is not None else None,
            "guards": [_guard(g) for g in guards if isinstance(g, dict)]
            if isinstance(guards, list)
            else [],
        }


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _guard(verdict: dict[str, Any]) -> dict[str, Any]:
    return {
        "guard": _text(verdict.get("guard")),
        "passed": verdict.get("passed") is True,
        "detail": _text(verdict.get("detail")),
    }
