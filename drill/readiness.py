"""Drill `readiness`: the readiness check against a simulated tenant where the installer
forgot two grants (the sign-out permission and the Conditional Access write that emergency
access needs) and the Exchange role, and set no NOTIFICATION_URL. `check_readiness` runs as the
daily timer would: each missing piece is a failed line with its fix, and the failure is audited
as an internal alert. On Azurite the insert-only probe of the audit table fails too, honestly:
Azurite enforces no roles.

Identities are fictitious (contoso.onmicrosoft.com)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drill.context import DrillContext, Scenario
from shared.models import AuditEvent
from shared.ports import GLOBAL_ADMINISTRATOR
from shared.readiness import ReadinessReport
from shared.simulator import SimulatedTenant, SimUser

DOMAIN = "contoso.onmicrosoft.com"
FORGOTTEN = ("User.RevokeSessions.All", "Policy.ReadWrite.ConditionalAccess")
EMERGENCY = tuple(
    SimUser(
        id=f"5bad0000-0000-4000-8000-{n:012d}",
        user_principal_name=f"bg-emergency-0{n}@{DOMAIN}",
        display_name=f"Emergency Access 0{n}",
    )
    for n in (1, 2)
)


class ReadinessDrill(Scenario):
    name = "readiness"
    description = (
        "The readiness check against a tenant where two grants and the Exchange role were "
        "forgotten: each missing piece fails with its fix, and the daily timer audits it."
    )

    def __init__(self) -> None:
        self.report: ReadinessReport | None = None

    def settings(self) -> dict[str, Any]:
        return {"BREAKGLASS_ACCOUNTS": ",".join(u.id for u in EMERGENCY)}

    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        for user in EMERGENCY:
            sim.add_user(user)
            sim.assign_role(user.id, GLOBAL_ADMINISTRATOR)
        sim.add_ca_policy("Require MFA for everyone", exclude_users=[u.id for u in EMERGENCY])
        sim.set_exchange_roles([])

    def grants(self, deployed: frozenset[str]) -> frozenset[str]:
        return deployed - set(FORGOTTEN)

    async def drive(self, ctx: DrillContext) -> None:
        ctx.mark("timer", "check_readiness fires (READINESS_SCHEDULE)")
        await ctx.host.fire_timer("check_readiness")
        self.report = await ctx.services.readiness.run()
        for line in self.report.lines():
            if not line.startswith("PASS"):
                ctx.mark("readiness", line.strip())

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        report = self.report
        assert report is not None
        failed = {c.name: c for c in report.failures}
        records = [r async for r in ctx.services.audit_store.newest_first()]
        raised = [r for r in records if r.entry.event is AuditEvent.ALERT_RAISED]
        expected = {f"Graph permission {p}" for p in FORGOTTEN} | {"Exchange role Transport Rules"}
        # Azurite enforces no roles: the insert-only probe is honestly reported as failing.
        # The emergency accounts are to be watched, but the drill has no public webhook URL.
        expected |= {"audit table insert-only", "change notification subscriptions"}
        exchange_role = failed.get("Exchange role Transport Rules")
        names = [f"Graph permission {p}" for p in FORGOTTEN]
        fixes = [failed[name].fix for name in names if name in failed]
        return {
            "each forgotten grant fails with the grant command as its fix": len(fixes)
            == len(FORGOTTEN)
            and all("grant-graph-permissions.sh --with-breakglass" in fix for fix in fixes),
            "exactly the forgotten pieces fail": set(failed) == expected,
            "the Exchange role fix names the role": exchange_role is not None
            and "New-ManagementRoleAssignment" in exchange_role.fix,
            "the granted permissions pass": any(
                c.passed and c.name == "Graph permission User.Read.All" for c in report.checks
            ),
            "emergency access passes": any(
                c.passed and c.name == "emergency access" for c in report.checks
            ),
            "the timer audited the failure as alert.raised": len(raised) == 1
            and raised[0].entry.reason == "The responder is not ready",
            "nothing was written to the tenant": all(
                method == "GET" for method, path in ctx.sim.requests if "/adminapi/" not in path
            )
            and all(cmdlet.startswith("Get-") for cmdlet, _ in ctx.sim.exchange_calls),
        }
