"""The emergency access health check: audits an internal alert whenever an emergency account
is missing, in an unexpected state, or not excluded from an enforced Conditional Access
policy, so the problem is known before the night the accounts are needed."""

from __future__ import annotations

import logging

from shared.actions.breakglass import EmergencyAccess, Finding
from shared.audit import AuditChain
from shared.models import Actor, AlertSource, AuditEntry, AuditEvent, Severity

logger = logging.getLogger(__name__)

HEALTH_TITLE = "Emergency access accounts are not ready"


class EmergencyMonitor:
    def __init__(self, access: EmergencyAccess, chain: AuditChain) -> None:
        self._access = access
        self._chain = chain

    async def check(self) -> list[Finding]:
        findings = await self._access.health()
        if not findings:
            logger.info("emergency access health check: all accounts ready")
            return findings
        for finding in findings:
            logger.error("emergency account %s: %s", finding.account, finding.problem)
        await self._chain.append(
            AuditEntry(
                event=AuditEvent.ALERT_RAISED,
                actor=Actor(),
                alert_id=f"{AlertSource.RESPONDER}:breakglass-health",
                reason=HEALTH_TITLE,
                result={
                    "severity": str(Severity.HIGH),
                    "category": "EmergencyAccessHealth",
                    "findings": [vars(f) for f in findings],
                },
            )
        )
        return findings
