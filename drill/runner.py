"""Runs a drill scenario: simulated tenant + Azurite up, alerts in through the real function
handlers, actions through the in-memory queue into the Service Bus-triggered executor, then the
timeline, the checks and the audit chain verification."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drill.azurite import Azurite
from drill.context import DrillClock, DrillContext, Mark, Scenario
from drill.host import LocalHost
from drill.notices import deliver_notices, notice_settings, prepare_notices
from shared import container
from shared.audit import VerifyReport
from shared.config import Settings
from shared.models import ActionKind, AuditEvent, AuditRecord, utcnow
from shared.permissions import EXCHANGE_AUDIENCE, GRAPH_AUDIENCE, features_of, manifest
from shared.policy import Playbook
from shared.simulator import SimulatedTenant

CONTAINED = {AuditEvent.ACTION_EXECUTED, AuditEvent.ACTION_ALREADY_DONE}
REVERTS = {str(ActionKind.ENABLE_ACCOUNT), str(ActionKind.UNBLOCK_IP)}
TIMELINE_ROWS = 40
DRILL_API_CLIENT_ID = "7d0b3c52-1f6e-4a8d-9b2c-5e4f3a2b1c0d"


@dataclass
class DrillReport:
    scenario: str
    started: datetime
    marks: list[Mark]
    records: list[AuditRecord]
    verification: VerifyReport
    checks: dict[str, bool]
    graph_calls: int
    deliveries: int
    dead_letters: int
    elapsed_ms: float
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    # What the people on call were told: one line per notice or comment.
    notices: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.verification.ok
            and all(self.checks.values())
            and not self.problems
            and self.dead_letters == 0
        )

    def _ms(self, at: datetime) -> float:
        return round((at - self.started).total_seconds() * 1000, 1)

    @property
    def time_to_contain_ms(self) -> float | None:
        """From the first alert to the last containment action executed (reverts excluded)."""
        done = [
            r.entry.at
            for r in self.records
            if r.entry.event in CONTAINED and r.entry.kind not in REVERTS
        ]
        return self._ms(max(done)) if done else None

    def summary(self) -> dict[str, Any]:
        def count(event: AuditEvent) -> int:
            return sum(1 for r in self.records if r.entry.event is event)

        return {
            "scenario": self.scenario,
            "ok": self.ok,
            "time_to_contain_ms": self.time_to_contain_ms,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "actions_executed": count(AuditEvent.ACTION_EXECUTED),
            "actions_already_done": count(AuditEvent.ACTION_ALREADY_DONE),
            "actions_refused": count(AuditEvent.ACTION_REFUSED),
            "actions_failed": count(AuditEvent.ACTION_FAILED),
            "audit_records": len(self.records),
            "audit_verified": self.verification.ok,
            "audit_head_seq": self.verification.head_seq,
            "graph_calls": self.graph_calls,
            "queue_messages": self.deliveries,
            "dead_letters": self.dead_letters,
            **self.metrics,
            "checks": self.checks,
            "problems": self.problems,
        }

    def timeline(self, whole: bool = False) -> list[str]:
        rows = [(m.at, m.stage, m.text) for m in self.marks]
        for record in self.records:
            entry = record.entry
            stage = str(entry.event).removeprefix("action.")
            detail = entry.result.get("error") or entry.reason
            rows.append((entry.at, stage, f"#{record.seq} {entry.kind} {entry.target} - {detail}"))
        rows.sort(key=lambda row: row[0])
        lines = [f"{self._ms(at):>9.1f} ms  {stage:<13} {text}" for at, stage, text in rows]
        if whole or len(lines) <= TIMELINE_ROWS:
            return lines
        # A storm has thousands of records: keep the start and the end, count the middle.
        half = TIMELINE_ROWS // 2
        skipped = len(lines) - 2 * half
        return [*lines[:half], f"{'':>12}  ... {skipped} more records ...", *lines[-half:]]


def drill_settings(sim: SimulatedTenant, azurite: Azurite, scenario: Scenario) -> Settings:
    # Tables of its own, so a drill against a long-running Azurite starts a fresh chain.
    run = secrets.token_hex(5)
    values: dict[str, Any] = {
        "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
        "RESPONDER_AUDIT_TABLE": f"DrillAudit{run}",
        "RESPONDER_STATE_TABLE": f"DrillState{run}",
        "GRAPH_BASE_URL": sim.base_url,
        "RESPONDER_CREDENTIAL": "simulator",
        "SIMULATOR_TOKEN": sim.token,
        "RESPONDER_QUEUE": "memory",
        "RESPONDER_WEBHOOK_SECRET": secrets.token_urlsafe(32),
        "GRAPH_RETRY_DELAY_SECONDS": 0.5,
        "EXCHANGE_BASE_URL": sim.exchange_base_url,
        "EXCHANGE_TENANT": sim.default_domain,
        # The API's registration: a v2.0 client id, the tenant's issuer and signing keys.
        "AUTH_AUDIENCE": DRILL_API_CLIENT_ID,
        "AUTH_ISSUER": sim.issuer,
        "AUTH_JWKS_URL": sim.jwks_url,
        **notice_settings(sim),
    }
    return Settings.model_validate({**values, **scenario.settings()})


def deployment_grants(settings: Settings) -> frozenset[str]:
    """What infra/grant-graph-permissions.sh grants for the features these settings use."""
    features = features_of(settings, Playbook.load(settings.playbook_path))
    return manifest().grants(features, GRAPH_AUDIENCE) | manifest().grants(
        features, EXCHANGE_AUDIENCE
    )


async def run_scenario(scenario: Scenario) -> DrillReport:
    with SimulatedTenant() as sim, Azurite(persistent=scenario.persistent_storage) as azurite:
        scenario.prepare(sim, utcnow())
        prepare_notices(sim)
        settings = drill_settings(sim, azurite, scenario)
        # The drill's identity holds exactly what the deployment would grant it (less what a
        # scenario leaves out on purpose).
        sim.set_grants(scenario.grants(deployment_grants(settings)))
        clock = DrillClock()
        # A retry scheduled a minute ahead on the drill's clock finds the mailbox a minute on.
        sim.set_mailbox_clock(clock)
        services = container.Container(settings, clock)
        container.install(services)
        try:
            await services.prepare()
            secret = services.settings.webhook_secret
            assert secret is not None
            ctx = DrillContext(
                sim, services, LocalHost(), clock, secret.get_secret_value(), azurite=azurite
            )
            return await _run(scenario, ctx)
        finally:
            container.install(None)
            await services.close()


async def _run(scenario: Scenario, ctx: DrillContext) -> DrillReport:
    # The notice dispatcher starts where the trail is now, as a new deployment does.
    await ctx.services.notice_dispatcher.run()
    started, clock = utcnow(), time.perf_counter()
    await scenario.drive(ctx)
    elapsed = (time.perf_counter() - clock) * 1000
    checks = await scenario.checks(ctx)
    graph_calls = len(ctx.sim.requests)  # containment's calls, not the notices'
    # Notices come after the audit record and never hold containment up: they are sent once
    # the scenario is over, and their failures (notify.failed) land after its records.
    notices = await deliver_notices(ctx)
    verification = await ctx.services.chain.verify()
    records = [record async for record in ctx.services.audit_store.newest_first()]
    records.reverse()
    return DrillReport(
        scenario=scenario.name,
        started=started,
        marks=ctx.marks,
        records=records,
        verification=verification,
        checks=checks,
        graph_calls=graph_calls,
        deliveries=ctx.queue.sent,
        dead_letters=len(ctx.queue.dead_letters),
        elapsed_ms=elapsed,
        problems=ctx.problems,
        metrics=ctx.metrics,
        notices=notices,
    )
