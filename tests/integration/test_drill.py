"""The default drill end to end, as `make drill` runs it: contained, audited, verified."""

from __future__ import annotations

import asyncio
import json

import pytest

from drill.azurite import ENV_BLOB_ENDPOINT, ENV_ENDPOINT, Azurite
from drill.exchange_dos import ExchangeDos
from drill.runner import run_scenario
from drill.tamper import Tamper
from shared.cli import main
from shared.container import Container
from shared.models import Actor, AuditEntry, AuditEvent
from shared.simulator import SimulatedTenant
from tests.conftest import settings_for

pytestmark = pytest.mark.integration


def test_the_compromised_account_drill_contains_and_verifies(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    assert main(["drill", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["audit_verified"]
    # Executed: two disables, two revocations, and the attacker's address blocked; refused:
    # both actions on the emergency access account.
    assert summary["actions_executed"] == 5 and summary["actions_refused"] == 2
    assert summary["audit_records"] == 12 and summary["dead_letters"] == 0
    assert summary["checks"]["attacker address blocked at the mail edge"]
    assert all(summary["checks"].values())
    assert summary["time_to_contain_ms"] > 0
    # Told: per incident a card and an e-mail for what was done (and for what a guard refused),
    # a comment on each Graph alert and on the Sentinel incident.
    assert summary["notifications_sent"] == 6 and summary["comments_posted"] == 3


def test_the_readable_drill_prints_a_timeline(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    assert main(["drill"]) == 0
    out = capsys.readouterr().out
    assert "timeline" in out and "executed" in out and "refused" in out
    assert "notices sent (9)" in out and "teams: Contained" in out
    assert "audit chain verified: 12 records" in out and "result: PASS" in out
    assert "[ok] attacker address blocked at the mail edge" in out


def test_audit_verify_reads_the_configured_trail(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with SimulatedTenant() as sim:
        settings = settings_for(sim, azurite)

    written: list[int] = []

    async def write() -> None:
        services = await Container(settings).prepare()
        entry = AuditEntry(event=AuditEvent.ACTION_PLANNED, actor=Actor(), reason="cli check")
        written.extend(r.seq for r in await services.chain.append_all([entry, entry, entry]))
        await services.close()

    asyncio.run(write())
    monkeypatch.setenv("RESPONDER_TABLES_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("RESPONDER_AUDIT_TABLE", settings.audit_table)
    monkeypatch.setenv("RESPONDER_QUEUE", "memory")
    assert main(["audit", "verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] and report["records_checked"] == 3
    assert report["head_seq"] == written[-1]
    monkeypatch.setenv("RESPONDER_AUDIT_TABLE", "NoSuchTable")
    assert main(["audit", "verify"]) == 2
    assert "does not exist" in capsys.readouterr().err


async def test_the_exchange_dos_drill_blocks_each_attacker_once_and_lifts_it(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    report = await run_scenario(ExchangeDos(alerts=600, addresses=60))
    summary = report.summary()
    assert report.checks and all(report.checks.values()), report.checks
    assert report.ok and summary["audit_verified"] and summary["dead_letters"] == 0
    assert summary["addresses_blocked"] == 60
    assert summary["addresses_unblocked_after_ttl"] == 60
    assert summary["actions_refused"] > 0
    # The storm's writes are batched: far fewer Exchange calls than alerts or addresses.
    assert summary["exchange_calls"] < 60


async def test_a_storm_posted_several_at_a_time_blocks_each_address_once(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of alerts POSTed 4 at a time, as one instance takes them: concurrent batches
    race for the same new networks (their reservations and claims fall back to one at a
    time), and still every address is blocked once and every action ends once."""
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    report = await run_scenario(ExchangeDos(alerts=1200, addresses=80, per_post=25, in_flight=4))
    summary = report.summary()
    assert report.checks and all(report.checks.values()), report.checks
    assert report.ok and summary["audit_verified"] and summary["dead_letters"] == 0
    assert summary["addresses_blocked"] == 80
    assert summary["addresses_unblocked_after_ttl"] == 80


async def test_alerts_forwarded_in_pages_get_their_comments(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defender holds every alert a Logic App forwards, so the comments on them land: none of
    the storm's notices fails."""
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    report = await run_scenario(ExchangeDos(alerts=200, addresses=20, per_post=25))
    assert report.ok, report.checks
    events = [r.entry.event for r in report.records]
    assert AuditEvent.NOTIFY_FAILED not in events
    commented = {
        line.split()[3].rstrip(":")
        for line in report.notices
        if line.startswith("comment on alert ")
    }
    # Alerts 0..19 were polled; those after them came through the webhook in pages.
    assert any(int(alert_id.rpartition("_")[2]) >= 20 for alert_id in commented), commented


async def test_the_tamper_drill_detects_through_change_notifications(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    report = await run_scenario(Tamper())
    summary = report.summary()
    assert report.checks and all(report.checks.values()), report.checks
    assert report.ok and summary["audit_verified"]
    assert summary["webhook_answers"] == [202, 202, 202, 403]
    raised = [r for r in report.records if r.entry.event is AuditEvent.ALERT_RAISED]
    assert len(raised) == 2


def test_the_readiness_drill_shows_each_missing_grant_with_its_fix(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_ENDPOINT, azurite.endpoint)
    monkeypatch.setenv(ENV_BLOB_ENDPOINT, azurite.blob_endpoint)
    assert main(["drill", "--scenario", "readiness"]) == 0
    out = capsys.readouterr().out
    assert "FAIL  Graph permission User.RevokeSessions.All" in out
    assert "fix: infra/grant-graph-permissions.sh --with-breakglass" in out
    assert 'New-ManagementRoleAssignment -App <object id> -Role "Transport Rules"' in out
    assert "result: PASS" in out
