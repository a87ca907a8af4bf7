"""The chaos drill, small: its report, its loss accounting checked against the tenant and the
trail independently, and the goals: nothing lost, one outcome per action, no account written
twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from drill.azurite import ENV_ENDPOINT
from drill.chaos import ChaosDrill, ChaosOptions
from drill.context import DrillContext
from drill.crashes import network_key
from drill.runner import DrillReport, run_scenario
from drill.scenarios import SCENARIOS, WITH_OPTIONS
from shared.actions.ip_blocks import COMMENT_MARK
from shared.cli import main
from shared.models import AuditRecord
from shared.simulator import SimUser
from shared.simulator.state import TenantWrite

pytestmark = pytest.mark.integration

# Small and quick: a short outage once the alerts are in, short locks and timer periods, and
# sender retries (3.75 to 22.5 s apart) that outlast the outage and Azurite's restart.
SMALL: dict[str, Any] = {
    "users": 6,
    "dos_alerts": 12,
    "addresses": 6,
    "feed_s": 3.0,
    "outage_at_s": 4.0,
    "outage_s": 1.0,
    "sender_retry_scale": 0.5,
    "lock_s": 0.5,
    "timer_period_s": 1.0,
    "settle_rounds": 1,
}
NOT_OUTCOMES = {"action.planned", "action.held", "action.approved"}


class Observed(ChaosDrill):
    """The chaos drill, keeping what the tenant and the trail held at the end, raw."""

    users_seen: dict[str, SimUser]
    rules_seen: list[dict[str, Any]]
    records_seen: list[AuditRecord]
    writes_seen: list[TenantWrite]

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        result = await super().checks(ctx)
        self.users_seen = {u.id: ctx.sim.user(u.id) for u in self.users}
        self.rules_seen = ctx.sim.transport_rules
        self.records_seen = [r async for r in ctx.services.audit_store.newest_first()]
        self.writes_seen = ctx.sim.writes
        return result


@pytest.fixture(autouse=True)
def own_azurite(monkeypatch: pytest.MonkeyPatch) -> None:
    # The drill stops and restarts its own Azurite; a shared one must not leak in.
    monkeypatch.delenv(ENV_ENDPOINT, raising=False)


async def run(**options: Any) -> tuple[Observed, DrillReport, dict[str, Any]]:
    drill = Observed(ChaosOptions(**{**SMALL, **options}))
    report = await run_scenario(drill)
    summary = report.summary()
    json.dumps(summary)  # the --json output
    return drill, report, summary


def ended(records: list[AuditRecord]) -> set[tuple[str, str]]:
    """(kind, target) of every action the trail gives an outcome."""
    return {
        (r.entry.kind or "", (r.entry.target or "").lower())
        for r in records
        if str(r.entry.event).startswith("action.") and str(r.entry.event) not in NOT_OUTCOMES
    }


async def test_the_report_counts_a_loss_it_is_shown_and_only_real_ones() -> None:
    drill, report, summary = await run(
        throttle_rate=0.0, timeout_rate=0.0, crash_points=False, drop_one_message=True
    )

    for section in ("alerts_in", "actions", "duplicate_writes", "crash_points", "host"):
        assert isinstance(summary[section], dict), section
    actions = summary["actions"]
    assert {"planned", "executed", "failed", "lost"} <= set(actions)
    assert summary["chain_verified"] is True and summary["audit_verified"] is True
    assert summary["storage_outage"]["down_s"] >= 1.0
    assert summary["crash_points"]["dropped_message"]["fired"] >= 1
    assert sum(summary["outcome_records_per_planned_action"].values()) == actions["planned"]

    # The deliberately dropped disable: claimed and audited as planned, never delivered.
    victim = drill.dropped_victim
    assert victim is not None
    lost = {(item["kind"], item["target"]) for item in summary["lost"]}
    assert ("disable_account", victim.id) in lost
    assert drill.users_seen[victim.id].account_enabled
    assert not report.ok and summary["checks"]["no action lost"] is False

    # Every loss the report names is one: no outcome in the trail, no effect in the tenant.
    finished = ended(drill.records_seen)
    blocked = {
        network_key(rng)
        for rule in drill.rules_seen
        if COMMENT_MARK in str(rule.get("Comments"))
        for rng in rule["SenderIpRanges"]
    }
    for kind, target in lost:
        assert (kind, target.lower()) not in finished
        if kind == "disable_account":
            assert drill.users_seen[target].account_enabled
        elif kind == "revoke_sessions":
            assert drill.users_seen[target].revocations == 0
        else:
            assert target not in blocked
    # ... and every user it does not name is accounted for (an outcome or the effect).
    for user in drill.users:
        seen = drill.users_seen[user.id]
        for kind, effect in (
            ("disable_account", not seen.account_enabled),
            ("revoke_sessions", seen.revocations > 0),
        ):
            if (kind, user.id) not in lost:
                assert effect or (kind, user.id.lower()) in finished, (kind, user.id)

    # Duplicates come from the write log as it is.
    duplicates = summary["duplicate_writes"]
    assert duplicates["duplicate_disables"] == sum(
        1 for w in drill.writes_seen if w.kind == "disable" and not w.changed
    )
    assert duplicates["disables"] == sum(1 for w in drill.writes_seen if w.kind == "disable")


def test_the_drill_is_registered_and_takes_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert "chaos" in SCENARIOS and "chaos" in WITH_OPTIONS
    drill = WITH_OPTIONS["chaos"]({"users": "12", "crash_points": "false", "outage_s": "30"})
    assert isinstance(drill, ChaosDrill)
    assert drill.options.users == 12 and drill.options.outage_s == 30.0
    assert not drill.points
    with pytest.raises(ValueError, match="unknown chaos option"):
        ChaosOptions.parse({"colour": "red"})
    with pytest.raises(ValueError, match="takes a int"):
        ChaosOptions.parse({"users": "many"})
    with pytest.raises(ValueError, match="at least 5"):
        ChaosOptions.parse({"users": "3"})
    with pytest.raises(ValueError, match="add up to less than 1"):
        ChaosOptions.parse({"throttle_rate": "0.9", "timeout_rate": "0.2"})
    assert main(["drill", "--scenario", "chaos", "--set", "users=x"]) == 2
    assert main(["drill", "--scenario", "exchange-dos", "--set", "users=3"]) == 2
    assert "takes no options" in capsys.readouterr().err


async def test_under_fire_nothing_is_lost_and_every_action_ends_once() -> None:
    _, _, summary = await run()

    assert all(point["fired"] for point in summary["crash_points"].values())
    assert summary["lost_response_on_disable"]["fired"] == 1
    assert summary["actions"]["lost"] == 0, summary["lost"]
    assert summary["actions_with_other_than_one_outcome"] == []
    assert set(summary["outcome_records_per_planned_action"]) == {"1"}
    assert summary["duplicate_writes"]["duplicate_rule_writes"] == 0
    assert summary["chain_verified"] is True


async def test_under_fire_no_account_is_written_twice() -> None:
    _, report, summary = await run()

    duplicates = summary["duplicate_writes"]
    assert duplicates["duplicate_disables"] == 0 and duplicates["duplicate_enables"] == 0
    assert report.ok, {check: ok for check, ok in summary["checks"].items() if not ok}
