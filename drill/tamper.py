"""Drill `tamper`: an attacker with a foothold in the directory adds an account to a privileged
group and tampers with an emergency access account, then replays and forges notifications.
The responder notices through Graph change notifications delivered over HTTP to its webhook;
the audit must show the detection and the playbook's response (the new member's disable held
for approval; nothing done to the emergency account). Identities are fictitious."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from drill.compromised import BREAK_GLASS, BYSTANDER, _user
from drill.context import DrillContext, Scenario
from drill.serve import LocalApi, loopback_socket
from shared.adapters.notification_queue import InMemoryNotificationQueue
from shared.models import AuditEvent, AuditRecord, utcnow
from shared.simulator import SimulatedTenant

TIER0_GROUP = "3e8f1a2b-6c4d-4e5f-9a0b-7c1d2e3f4a5b"
INTRUDER = _user("9a7b5c3d-1e2f-4a6b-8c0d-2e4f6a8b0c1d", "svc-backup-sync")
WEBHOOK_KEY = "drill-function-key"


def _events(records: list[AuditRecord], event: AuditEvent) -> list[AuditRecord]:
    return [r for r in records if r.entry.event is event]


class Tamper(Scenario):
    name = "tamper"
    description = (
        "An attacker adds an account to a privileged group and tampers with an emergency "
        "access account; change notifications reach the webhook, forged and replayed ones too."
    )

    def __init__(self) -> None:
        self._socket = loopback_socket()
        self._tenant_id = ""

    def settings(self) -> dict[str, Any]:
        port = self._socket.getsockname()[1]
        base = f"http://127.0.0.1:{port}/api/notifications"
        return {
            "BREAKGLASS_ACCOUNTS": BREAK_GLASS.id,
            "RESPONDER_PROTECTED_IDENTITIES": BREAK_GLASS.id,
            "WATCHED_GROUPS": TIER0_GROUP,
            "NOTIFICATION_URL": f"{base}?code={WEBHOOK_KEY}",
            "LIFECYCLE_NOTIFICATION_URL": f"{base}/lifecycle?code={WEBHOOK_KEY}",
            "NOTIFICATION_TENANT_ID": self._tenant_id,
        }

    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        self._tenant_id = sim.tenant_id
        for user in (BREAK_GLASS, BYSTANDER, INTRUDER):
            sim.add_user(user)
        sim.add_group(TIER0_GROUP, "Tier 0 administrators")
        sim.add_group_member(TIER0_GROUP, BYSTANDER.id)

    async def drive(self, ctx: DrillContext) -> None:
        async with LocalApi(ctx.services.settings).serving(self._socket):
            await self._play(ctx)

    async def _play(self, ctx: DrillContext) -> None:
        ctx.mark("watch", "timer renew_subscriptions fires (validation handshake over HTTP)")
        await ctx.host.fire_timer("renew_subscriptions")
        ctx.metrics["subscriptions"] = len(ctx.sim.subscriptions)
        ctx.mark("attack", f"{INTRUDER.user_principal_name} added to Tier 0 administrators")
        ctx.sim.add_group_member(TIER0_GROUP, INTRUDER.id)
        ctx.mark("attack", f"{BREAK_GLASS.user_principal_name} renamed and disabled")
        ctx.sim.change_user(BREAK_GLASS.id, display_name="Backup Operator", account_enabled=False)
        changed_at = utcnow()
        deliveries = await asyncio.to_thread(ctx.sim.wait_for_deliveries)
        await self._process(ctx)
        ctx.metrics["detection_ms"] = await self._detection_ms(ctx, changed_at)
        ctx.mark("attack", "the attacker replays a notification and forges another")
        genuine = deliveries[-1]
        ctx.sim.post_notifications(genuine.url, genuine.body)
        forged = {"value": [{**genuine.body["value"][0], "clientState": "guessed"}]}
        ctx.sim.post_notifications(genuine.url, forged)
        deliveries = await asyncio.to_thread(ctx.sim.wait_for_deliveries)
        ctx.metrics["webhook_answers"] = [d.status for d in deliveries]
        await self._process(ctx)
        await ctx.drain()

    async def _process(self, ctx: DrillContext) -> None:
        queue = ctx.services.notification_queue
        assert isinstance(queue, InMemoryNotificationQueue)
        await ctx.host.pump(queue, "process_notification")

    async def _detection_ms(self, ctx: DrillContext, changed_at: datetime) -> float | None:
        records = [r async for r in ctx.services.audit_store.newest_first()]
        raised = [r.entry.at for r in _events(records, AuditEvent.ALERT_RAISED)]
        return round((max(raised) - changed_at).total_seconds() * 1000, 1) if raised else None

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        records = [r async for r in ctx.services.audit_store.newest_first()]
        raised = {
            r.entry.result.get("category"): r.entry
            for r in _events(records, AuditEvent.ALERT_RAISED)
        }
        held = [(r.entry.kind, r.entry.target) for r in _events(records, AuditEvent.ACTION_HELD)]
        on_break_glass = [
            r
            for r in records
            if r.entry.target == BREAK_GLASS.id and r.entry.event is not AuditEvent.ALERT_RAISED
        ]
        guard = ctx.sim.user(BREAK_GLASS.id)
        tampering = raised.get("EmergencyAccessTampering")
        return {
            "subscriptions created for the group and the emergency account": (
                ctx.metrics.get("subscriptions") == 2
            ),
            "new privileged group member detected": (
                "PrivilegedGroupMemberAdded" in raised
                and raised["PrivilegedGroupMemberAdded"].target == INTRUDER.id
            ),
            "intruder's disable held for approval": held == [("disable_account", INTRUDER.id)],
            "emergency account tampering detected (high)": (
                tampering is not None
                and tampering.result["severity"] == "high"
                and "accountEnabled" in tampering.result["changes"]
            ),
            "nothing acted on the emergency account": not on_break_glass and guard.revocations == 0,
            "replayed notification raised nothing new": len(raised) == 2
            and len(_events(records, AuditEvent.ALERT_RAISED)) == 2,
            "forged notification refused and audited": (
                ctx.metrics.get("webhook_answers", [])[-1:] == [403]
                and len(_events(records, AuditEvent.NOTIFICATION_REJECTED)) == 1
            ),
            "bystander member untouched": ctx.sim.user(BYSTANDER.id).account_enabled,
        }
