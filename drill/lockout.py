"""Drill `lockout`: a Conditional Access change blocks every administrator's sign-in. The
responder activates the emergency access accounts (automatic activations need no approval in
this tenant), the activation expires and is undone; then a wave of alerts names 30 accounts,
among them an emergency account and a Global Administrator. The blast-radius budget holds,
the protected accounts are refused, and everything is in the audit trail.

Identities are fictitious (contoso.onmicrosoft.com)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from drill.context import DrillContext, Scenario
from shared.models import AuditEvent, OutcomeStatus
from shared.ports import GLOBAL_ADMINISTRATOR
from shared.simulator import SimulatedTenant, SimUser

DOMAIN = "contoso.onmicrosoft.com"
TTL = timedelta(minutes=240)
BUDGET = 10
WAVE = 30


def _user(number: int, name: str, enabled: bool = True) -> SimUser:
    return SimUser(
        id=f"4c0ffee0-0000-4000-8000-{number:012d}",
        user_principal_name=f"{name}@{DOMAIN}",
        display_name=name.replace(".", " ").replace("-", " ").title(),
        account_enabled=enabled,
    )


EMERGENCY = (_user(1, "bg-emergency-01", enabled=False), _user(2, "bg-emergency-02", False))
ADMINS = (_user(11, "alex.wilber"), _user(12, "diego.siciliani"), _user(13, "lidia.holloway"))
STAFF = tuple(_user(100 + n, f"staff.member{n:02d}") for n in range(WAVE - 2))
# The wave names the emergency account and one Global Administrator among the staff.
WAVE_TARGETS = (EMERGENCY[0], ADMINS[0], *STAFF)


def _generic(alert_id: str, title: str, category: str, users: list[SimUser]) -> dict[str, Any]:
    return {
        "source": "generic",
        "id": alert_id,
        "title": title,
        "severity": "high",
        "category": category,
        "provider": "drill",
        "entities": [
            {
                "kind": "user",
                "user_id": u.id,
                "upn": u.user_principal_name,
                "roles": ["compromised"],
                "verdict": "malicious",
            }
            for u in users
        ],
    }


class Lockout(Scenario):
    name = "lockout"
    description = (
        "A Conditional Access change locks every admin out; emergency access opens by itself "
        "and closes when its time is up; then a wave of alerts tries to disable 30 accounts, "
        "among them an emergency account and a Global Administrator."
    )

    def settings(self) -> dict[str, Any]:
        return {
            "BREAKGLASS_ACCOUNTS": ",".join(u.id for u in EMERGENCY),
            "BREAKGLASS_RESTING_STATE": "disabled",
            "BREAKGLASS_TTL_MINUTES": str(int(TTL.total_seconds() // 60)),
            "BREAKGLASS_APPROVAL": "human",
            "AUTO_DISABLE_BUDGET": str(BUDGET),
            "MIN_ENABLED_GLOBAL_ADMINS": "2",
        }

    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        for user in (*EMERGENCY, *ADMINS, *STAFF):
            sim.add_user(user)
        for user in (*EMERGENCY, *ADMINS):
            sim.assign_role(user.id, GLOBAL_ADMINISTRATOR)
        # An administrator already excluded the first emergency account from MFA: that
        # exclusion is theirs and must survive the activation's undo.
        self.mfa = sim.add_ca_policy(
            "Require MFA for administrators",
            include_roles=(GLOBAL_ADMINISTRATOR,),
            include_users=(),
            exclude_users=(EMERGENCY[0].id,),
        )
        self.legacy = sim.add_ca_policy("Block legacy authentication")
        self.report_only = sim.add_ca_policy(
            "Sign-in risk (report-only)", state="enabledForReportingButNotEnforced"
        )

    async def drive(self, ctx: DrillContext) -> None:
        ctx.mark("tenant", "an administrator enables a policy that blocks every admin sign-in")
        self.lockout = ctx.sim.add_ca_policy(
            "Block admin portals (misconfigured)", include_roles=(GLOBAL_ADMINISTRATOR,)
        )
        started = time.perf_counter()
        await ctx.post_alert(
            _generic(
                "lockout-1",
                "Conditional Access change blocks every administrator sign-in",
                "AdminLockout",
                [],
            ),
            "webhook ingest_alert receives an admin lockout alert",
        )
        await ctx.drain()
        ctx.metrics["emergency_access_open_ms"] = round((time.perf_counter() - started) * 1000, 1)
        self.opened = self._exclusions(ctx)
        self.enabled_while_open = [ctx.sim.user(u.id).account_enabled for u in EMERGENCY]
        ctx.mark("clock", f"{int(TTL.total_seconds() // 3600)} hours pass")
        ctx.clock.advance(TTL + timedelta(minutes=1))
        await ctx.drain()
        ctx.mark("alert", f"a wave of alerts names {WAVE} accounts")
        for start in range(0, WAVE, 10):
            batch = list(WAVE_TARGETS[start : start + 10])
            await ctx.post_alert(
                _generic(f"wave-{start}", "Mass credential compromise", "CredentialAccess", batch)
            )
        await ctx.drain()

    def _exclusions(self, ctx: DrillContext) -> dict[str, list[str]]:
        return {p["id"]: p["conditions"]["users"]["excludeUsers"] for p in ctx.sim.ca_policies()}

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        sim = ctx.sim
        emergency = [u.id for u in EMERGENCY]
        enforced = [self.mfa, self.legacy, self.lockout]
        closed = self._exclusions(ctx)
        records = [r async for r in ctx.services.audit_store.newest_first()]
        events = Counter(str(r.entry.event) for r in records)
        by_kind = Counter(
            (r.entry.kind, r.entry.result.get("status") or str(r.entry.event)) for r in records
        )
        refusals = {
            r.entry.target: r.entry.reason + " " + str(r.entry.result.get("error", ""))
            for r in records
            if r.entry.event in (AuditEvent.ACTION_REFUSED, AuditEvent.ACTION_HELD)
        }
        disabled_staff = [u for u in STAFF if not sim.user(u.id).account_enabled]
        pending = await ctx.services.approvals.pending()
        ctx.metrics.update(
            {
                "staff_disabled": len(disabled_staff),
                "held_for_approval": len(pending),
                "audit_events": dict(events),
            }
        )
        return {
            "emergency accounts enabled while open": all(self.enabled_while_open),
            "emergency accounts excluded from every enforced policy while open": all(
                set(emergency) <= set(self.opened[p]) for p in enforced
            ),
            "report-only policy left alone": self.opened[self.report_only] == [],
            "activation audited": by_kind[("activate_breakglass", OutcomeStatus.EXECUTED)] == 1,
            "deactivation after the TTL audited": by_kind[
                ("deactivate_breakglass", OutcomeStatus.EXECUTED)
            ]
            == 1,
            "emergency accounts back at rest (disabled)": not any(
                sim.user(u).account_enabled for u in emergency
            ),
            "only the added exclusions removed": closed[self.mfa] == [EMERGENCY[0].id]
            and closed[self.legacy] == []
            and closed[self.lockout] == [],
            "emergency account refused": "protected identity" in refusals.get(emergency[0], ""),
            "global administrator refused": sim.user(ADMINS[0].id).account_enabled
            and "privileged" in refusals.get(ADMINS[0].id, ""),
            "budget held": len(disabled_staff) <= BUDGET
            and len(disabled_staff) + len(pending) == len(STAFF),
            "every hold audited": events[str(AuditEvent.ACTION_HELD)] == len(pending),
        }
