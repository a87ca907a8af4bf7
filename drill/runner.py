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
from drill.host import LocalHost
from drill.scenarios import Scenario
from functions.http import KEY_HEADER
from shared import container
from shared.adapters.queue import InMemoryActionQueue
from shared.audit import VerifyReport
from shared.config import Settings
from shared.models import AuditEvent, AuditRecord, utcnow
from shared.simulator import SimulatedTenant

CONTAINED = {AuditEvent.ACTION_EXECUTED, AuditEvent.ACTION_ALREADY_DONE}


@dataclass
class Mark:
    at: datetime
    stage: str
    text: str


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

    @property
    def ok(self) -> bool:
        return self.verification.ok and all(self.checks.values()) and not self.problems

    def _ms(self, at: datetime) -> float:
        return round((at - self.started).total_seconds() * 1000, 1)

    @property
    def time_to_contain_ms(self) -> float | None:
        done = [r.entry.at for r in self.records if r.entry.event in CONTAINED]
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
            "queue_deliveries": self.deliveries,
            "dead_letters": self.dead_letters,
            "checks": self.checks,
            "problems": self.problems,
        }

    def timeline(self) -> list[str]:
        rows = [(m.at, m.stage, m.text) for m in self.marks]
        for record in self.records:
            entry = record.entry
            stage = str(entry.event).removeprefix("action.")
            detail = entry.result.get("error") or entry.reason
            rows.append((entry.at, stage, f"#{record.seq} {entry.kind} {entry.target} - {detail}"))
        rows.sort(key=lambda row: row[0])
        return [f"{self._ms(at):>9.1f} ms  {stage:<13} {text}" for at, stage, text in rows]


def drill_settings(sim: SimulatedTenant, azurite: Azurite, scenario: Scenario) -> Settings:
    # Tables of its own, so a drill against a long-running Azurite starts a fresh chain.
    run = secrets.token_hex(5)
    return Settings.model_validate(
        {
            "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
            "RESPONDER_AUDIT_TABLE": f"DrillAudit{run}",
            "RESPONDER_STATE_TABLE": f"DrillState{run}",
            "GRAPH_BASE_URL": sim.base_url,
            "RESPONDER_CREDENTIAL": "simulator",
            "SIMULATOR_TOKEN": sim.token,
            "RESPONDER_QUEUE": "memory",
            "RESPONDER_PROTECTED_IDENTITIES": ",".join(scenario.protected),
            "RESPONDER_WEBHOOK_SECRET": secrets.token_urlsafe(32),
            "GRAPH_RETRY_DELAY_SECONDS": 0.5,
        }
    )


async def run_scenario(scenario: Scenario) -> DrillReport:
    with SimulatedTenant() as sim, Azurite() as azurite:
        for user in scenario.users:
            sim.add_user(user)
        for alert in scenario.polled_alerts(utcnow()):
            sim.add_alert(alert)
        services = container.Container(drill_settings(sim, azurite, scenario))
        container.install(services)
        try:
            return await _run(scenario, sim, services)
        finally:
            container.install(None)
            await services.close()


async def _run(
    scenario: Scenario, sim: SimulatedTenant, services: container.Container
) -> DrillReport:
    await services.prepare()
    queue = services.queue
    assert isinstance(queue, InMemoryActionQueue)
    secret = services.settings.webhook_secret
    assert secret is not None
    host = LocalHost()
    marks: list[Mark] = []
    problems: list[str] = []
    started, clock = utcnow(), time.perf_counter()

    marks.append(Mark(utcnow(), "alert", "timer poll_alerts fires (Graph security/alerts_v2)"))
    await host.fire_timer("poll_alerts")
    for payload in scenario.webhook_payloads:
        marks.append(Mark(utcnow(), "alert", "webhook ingest_alert receives a Sentinel incident"))
        response = await host.post_json(
            "ingest_alert", "alerts", payload, {KEY_HEADER: secret.get_secret_value()}
        )
        if response.status_code != 202:
            problems.append(f"webhook answered {response.status_code}: {response.get_body()!r}")
    deliveries = await host.pump(queue)
    elapsed = (time.perf_counter() - clock) * 1000

    verification = await services.chain.verify()
    records = [record async for record in services.audit_store.newest_first()]
    records.reverse()
    return DrillReport(
        scenario=scenario.name,
        started=started,
        marks=marks,
        records=records,
        verification=verification,
        checks=scenario.checks(sim),
        graph_calls=len(sim.requests),
        deliveries=deliveries,
        dead_letters=len(queue.dead_letters),
        elapsed_ms=elapsed,
        problems=problems,
    )
