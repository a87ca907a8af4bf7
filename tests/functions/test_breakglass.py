"""Emergency access and the lockout guards, end to end: intake or an engineer's request, the
Service Bus-triggered executor, the simulated tenant over HTTP, the audit trail in Azurite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost
from shared import cli
from shared.actions.runner import OUTCOME_RECORDS
from shared.adapters.queue import InMemoryActionQueue
from shared.approvals import ApprovalError
from shared.container import Container
from shared.manual import parse_body
from shared.models import ActionKind, ActionRequest, Actor, AuditRecord
from shared.ports import GLOBAL_ADMINISTRATOR, ApprovalState
from shared.simulator import Fault, SimulatedTenant, SimUser
from tests.conftest import installed, settings_for
from tests.trail import oldest_first

pytestmark = pytest.mark.integration

DOMAIN = "contoso.onmicrosoft.com"
SECURITY_ADMINISTRATOR = "194ae4cb-b126-40b2-bd5b-6091b380977d"
ADA = Actor(kind="engineer", name="ada@contoso.com")
BOB = Actor(kind="engineer", name="bob@contoso.com")


def _user(number: int, name: str, enabled: bool = True) -> SimUser:
    return SimUser(
        id=f"7e570000-0000-4000-8000-{number:012d}",
        user_principal_name=f"{name}@{DOMAIN}",
        display_name=name,
        account_enabled=enabled,
    )


BG1, BG2 = _user(1, "bg-01", enabled=False), _user(2, "bg-02", enabled=False)
GA1, GA2 = _user(11, "ga-one"), _user(12, "ga-two")
SECADMIN = _user(21, "sec-admin")


@pytest.fixture
def tenant(sim: SimulatedTenant) -> SimulatedTenant:
    for user in (BG1, BG2, GA1, GA2, SECADMIN):
        sim.add_user(SimUser(**vars(user)))
    for user in (BG1, BG2, GA1, GA2):
        sim.assign_role(user.id, GLOBAL_ADMINISTRATOR)
    sim.assign_role(SECADMIN.id, SECURITY_ADMINISTRATOR)
    return sim


def breakglass_settings(**extra: Any) -> dict[str, Any]:
    return {
        "BREAKGLASS_ACCOUNTS": f"{BG1.id},{BG2.id}",
        "BREAKGLASS_RESTING_STATE": "disabled",
        "BREAKGLASS_TTL_MINUTES": "60",
        **extra,
    }


@pytest.fixture
async def services(
    tenant: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[Container]:
    async with installed(settings_for(tenant, azurite, **breakglass_settings()), clock) as built:
        yield built


def queue_of(services: Container) -> InMemoryActionQueue:
    assert isinstance(services.queue, InMemoryActionQueue)
    return services.queue


async def drain(services: Container) -> int:
    return await LocalHost().pump(queue_of(services))


async def records(services: Container) -> list[AuditRecord]:
    return await oldest_first(services.audit_store)


def lockout_alert(alert_id: str = "lock-1") -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Every admin sign-in is blocked",
        "severity": "high",
        "category": "AdminLockout",
        "entities": [],
    }


def compromised(*users: SimUser, alert_id: str = "wave-1") -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Token theft",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "user_id": u.id, "roles": ["compromised"]} for u in users],
    }


def excluded(sim: SimulatedTenant, policy_id: str) -> list[str]:
    policy = next(p for p in sim.ca_policies() if p["id"] == policy_id)
    return list(policy["conditions"]["users"]["excludeUsers"])


async def test_a_lockout_alert_opens_emergency_access_and_the_ttl_closes_it(
    services: Container, tenant: SimulatedTenant, clock: DrillClock
) -> None:
    mfa = tenant.add_ca_policy("MFA for admins", exclude_users=(BG1.id,))
    block = tenant.add_ca_policy("Block admins")
    report = tenant.add_ca_policy("Report only", state="enabledForReportingButNotEnforced")
    off = tenant.add_ca_policy("Disabled", state="disabled")

    await services.intake.handle_payload(lockout_alert())
    await drain(services)

    assert tenant.user(BG1.id).account_enabled and tenant.user(BG2.id).account_enabled
    assert excluded(tenant, mfa) == [BG1.id, BG2.id]
    assert excluded(tenant, block) == [BG1.id, BG2.id]
    assert excluded(tenant, report) == [] and excluded(tenant, off) == []
    activation = next(
        r
        for r in await records(services)
        if r.entry.kind == "activate_breakglass" and r.entry.event == "action.executed"
    )
    assert activation.entry.result["after"]["expires_at"]
    assert len(activation.entry.result["calls"]) == 4  # two accounts, two policies

    clock.advance(timedelta(minutes=61))
    await drain(services)

    assert not tenant.user(BG1.id).account_enabled and not tenant.user(BG2.id).account_enabled
    assert excluded(tenant, mfa) == [BG1.id], "the administrator's own exclusion stays"
    assert excluded(tenant, block) == []
    events = [(str(r.entry.event), r.entry.kind) for r in await records(services)]
    assert ("action.executed", "deactivate_breakglass") in events
    assert (await services.chain.verify()).ok


async def test_a_second_activation_extends_the_first(
    services: Container, tenant: SimulatedTenant, clock: DrillClock
) -> None:
    tenant.add_ca_policy("Block admins")
    await services.intake.handle_payload(lockout_alert("lock-1"))
    await drain(services)
    clock.advance(timedelta(minutes=30))
    await services.intake.handle_payload(lockout_alert("lock-2"))
    await drain(services)
    clock.advance(timedelta(minutes=31))  # past the first expiry, before the second
    await drain(services)

    assert tenant.user(BG1.id).account_enabled, "the extension keeps emergency access open"
    superseded = [r for r in await records(services) if r.entry.kind == "deactivate_breakglass"][-1]
    assert superseded.entry.result["status"] == "already_done"
    assert "extended until" in superseded.entry.result["error"]

    clock.advance(timedelta(minutes=30))
    await drain(services)
    assert not tenant.user(BG1.id).account_enabled


async def test_a_policy_created_between_read_and_write_is_covered_too(
    services: Container, tenant: SimulatedTenant
) -> None:
    tenant.add_ca_policy("Block admins")
    late: list[str] = []
    tenant.before_ca_write(lambda sim: late.append(sim.add_ca_policy("Created meanwhile")))
    await services.intake.handle_payload(lockout_alert())
    await drain(services)
    assert late and excluded(tenant, late[0]) == [BG1.id, BG2.id]


async def test_a_policy_deleted_between_read_and_write_is_skipped(
    services: Container, tenant: SimulatedTenant
) -> None:
    doomed = tenant.add_ca_policy("Deleted meanwhile")
    kept = tenant.add_ca_policy("Block admins")
    tenant.before_ca_write(lambda sim: sim.delete_ca_policy(doomed))
    await services.intake.handle_payload(lockout_alert())
    await drain(services)
    assert excluded(tenant, kept) == [BG1.id, BG2.id]
    assert all(p["id"] != doomed for p in tenant.ca_policies())
    assert tenant.user(BG1.id).account_enabled


async def test_an_emergency_account_that_does_not_exist_fails_clearly(
    tenant: SimulatedTenant, azurite: Azurite
) -> None:
    ghost = "00000000-dead-4000-8000-000000000000"
    settings = settings_for(tenant, azurite, **breakglass_settings(BREAKGLASS_ACCOUNTS=ghost))
    async with installed(settings) as services:
        await services.intake.handle_payload(lockout_alert())
        await drain(services)
        failed = [r for r in await records(services) if r.entry.event == "action.failed"]
    assert len(failed) == 1
    assert f"emergency account {ghost} does not exist" in failed[0].entry.result["error"]


async def test_an_engineers_activation_waits_for_a_second_engineer(
    services: Container, tenant: SimulatedTenant
) -> None:
    body = parse_body({"kind": "activate_breakglass", "target": "all", "reason": "MFA outage"})
    submitted = await services.manual.request(body, ADA)
    (action,) = submitted.actions
    assert action.decision == "needs_approval"
    assert await drain(services) == 0 and not tenant.user(BG1.id).account_enabled

    with pytest.raises(ApprovalError) as own:
        await services.approvals.approve(action.id, ADA, "me")
    assert own.value.status == 403
    await services.approvals.approve(action.id, BOB, "confirmed by phone")
    with pytest.raises(ApprovalError) as replay:
        await services.approvals.approve(action.id, BOB, "again")
    assert replay.value.status == 409
    await drain(services)
    assert tenant.user(BG1.id).account_enabled


async def test_an_engineers_early_deactivation_waits_for_a_second_engineer(
    services: Container, tenant: SimulatedTenant
) -> None:
    block = tenant.add_ca_policy("Block admins")
    await services.intake.handle_payload(lockout_alert())
    await drain(services)
    assert tenant.user(BG1.id).account_enabled

    body = parse_body({"kind": "deactivate_breakglass", "target": "all", "reason": "all clear"})
    (action,) = (await services.manual.request(body, ADA)).actions
    assert action.decision == "needs_approval"
    assert await drain(services) == 0
    assert tenant.user(BG1.id).account_enabled and excluded(tenant, block) == [BG1.id, BG2.id]

    with pytest.raises(ApprovalError) as own:
        await services.approvals.approve(action.id, ADA, "me")
    assert own.value.status == 403
    await services.approvals.approve(action.id, BOB, "lockout over, confirmed")
    await drain(services)
    assert not tenant.user(BG1.id).account_enabled and not tenant.user(BG2.id).account_enabled
    assert excluded(tenant, block) == []
    closed = [r for r in await records(services) if r.entry.kind == "deactivate_breakglass"]
    assert [str(r.entry.event) for r in closed] == [
        "action.held",
        "action.approved",
        "action.executed",
    ]


async def test_unanswered_approvals_expire_and_the_sweep_audits_them(
    services: Container, tenant: SimulatedTenant, clock: DrillClock
) -> None:
    body = parse_body({"kind": "activate_breakglass", "target": "all", "reason": "MFA outage"})
    (action,) = (await services.manual.request(body, ADA)).actions
    clock.advance(timedelta(minutes=services.settings.approval_ttl_minutes + 1))
    await LocalHost().fire_timer("expire_approvals")
    assert [r.entry.event for r in await records(services)][-1] == "action.expired"
    with pytest.raises(ApprovalError) as late:
        await services.approvals.approve(action.id, BOB, "too late")
    assert late.value.status == 409
    assert (await services.state.get(action.id)).state == "expired"  # type: ignore[union-attr]


async def test_holders_of_privileged_roles_are_refused_unless_a_rule_allows_it(
    services: Container, tenant: SimulatedTenant
) -> None:
    await services.intake.handle_payload(compromised(SECADMIN))
    await drain(services)
    assert tenant.user(SECADMIN.id).account_enabled
    refused = [r for r in await records(services) if r.entry.event == "action.refused"]
    assert len(refused) == 1 and refused[0].entry.kind == "disable_account"
    assert "Security Administrator" in refused[0].entry.result["error"]
    guards = {g["guard"]: g["passed"] for g in refused[0].entry.result["guards"]}
    assert guards == {
        "protected_identity": True,
        "global_admin_minimum": True,
        "privileged_role": False,
    }


async def test_an_engineers_disable_of_an_admin_is_held_then_runs_when_approved(
    services: Container, tenant: SimulatedTenant
) -> None:
    body = parse_body({"kind": "disable_account", "target": SECADMIN.id, "reason": "phished"})
    (action,) = (await services.manual.request(body, ADA)).actions
    await drain(services)
    assert tenant.user(SECADMIN.id).account_enabled
    held = (await records(services))[-1]
    assert held.entry.event == "action.held"
    assert "waits for an engineer's approval" in held.entry.result["error"]

    await services.approvals.approve(action.id, BOB, "confirmed")
    await drain(services)
    assert not tenant.user(SECADMIN.id).account_enabled
    assert (await records(services))[-1].entry.event == "action.executed"


async def test_the_last_global_administrators_are_never_disabled(
    services: Container, tenant: SimulatedTenant
) -> None:
    # BG1 and BG2 rest disabled: GA1 and GA2 are the only enabled Global Administrators.
    body = parse_body({"kind": "disable_account", "target": GA1.id, "reason": "phished"})
    (action,) = (await services.manual.request(body, ADA)).actions
    await drain(services)
    refused = (await records(services))[-1]
    assert refused.entry.event == "action.refused"
    assert "2 enabled Global Administrators" in refused.entry.result["error"]
    assert tenant.user(GA1.id).account_enabled


async def test_a_graph_403_names_the_role_the_app_is_missing(
    services: Container, tenant: SimulatedTenant
) -> None:
    tenant.set_app_roles([])
    body = parse_body({"kind": "disable_account", "target": SECADMIN.id, "reason": "phished"})
    (action,) = (await services.manual.request(body, ADA)).actions
    await drain(services)
    await services.approvals.approve(action.id, BOB, "confirmed")
    await drain(services)
    failed = (await records(services))[-1]
    assert failed.entry.event == "action.failed"
    error = failed.entry.result["error"]
    assert "403" in error and "Privileged Authentication Administrator" in error
    assert tenant.user(SECADMIN.id).account_enabled


async def test_dry_run_reads_the_tenant_and_writes_nothing(
    tenant: SimulatedTenant, azurite: Azurite
) -> None:
    tenant.add_ca_policy("Block admins")
    settings = settings_for(tenant, azurite, **breakglass_settings(RESPONDER_DRY_RUN="true"))
    async with installed(settings) as services:
        tenant.reset_requests()
        await services.intake.handle_payload(lockout_alert())
        await drain(services)
        (planned,) = [r for r in await records(services) if r.entry.event == "action.dry_run"]
    assert {method for method, _ in tenant.requests} == {"GET"}
    assert planned.entry.result["note"] == "dry run: nothing was written to the tenant"
    assert any("conditionalAccess/policies" in call for call in planned.entry.result["calls"])
    assert not tenant.user(BG1.id).account_enabled


async def test_the_health_check_audits_an_alert_only_when_something_is_wrong(
    services: Container, tenant: SimulatedTenant
) -> None:
    host = LocalHost()
    await host.fire_timer("check_breakglass")
    assert await records(services) == []

    policy = tenant.add_ca_policy("New policy without exclusions")
    tenant.change_user(BG2.id, account_enabled=True)
    await host.fire_timer("check_breakglass")
    (raised,) = await records(services)
    assert raised.entry.event == "alert.raised"
    problems = {(f["account"], f["problem"]) for f in raised.entry.result["findings"]}
    assert (BG2.id, "is enabled, expected otherwise") in problems
    assert any(policy in p and a == BG1.id for a, p in problems)


async def test_the_health_check_reports_a_missing_account(
    tenant: SimulatedTenant, azurite: Azurite
) -> None:
    ghost = "00000000-dead-4000-8000-000000000000"
    settings = settings_for(
        tenant, azurite, **breakglass_settings(BREAKGLASS_ACCOUNTS=f"{BG1.id},{ghost}")
    )
    async with installed(settings) as services:
        findings = await services.monitor.check()
    assert [(f.account, f.problem) for f in findings] == [(ghost, "missing from the directory")]


async def test_deactivation_without_an_activation_returns_the_accounts_to_rest(
    services: Container, tenant: SimulatedTenant
) -> None:
    tenant.change_user(BG1.id, account_enabled=True)
    action = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DEACTIVATE_BREAKGLASS, "all", "engineer:x"),
        kind=ActionKind.DEACTIVATE_BREAKGLASS,
        target="all",
        requested_by=ADA,
    )
    outcome = await services.runner.run(action)
    assert outcome is not None and outcome.status == "executed"
    assert not tenant.user(BG1.id).account_enabled


def cli_environment(monkeypatch: pytest.MonkeyPatch, services: Container) -> None:
    for name, value in services.settings.model_dump(by_alias=True).items():
        if value is None or name.startswith("AUTH_"):
            continue
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if isinstance(text, tuple):
            text = ",".join(text)
        monkeypatch.setenv(name, str(text))


async def test_plan_with_tenant_shows_calls_state_and_guards(
    services: Container,
    tenant: SimulatedTenant,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    tenant.add_ca_policy("Block admins")
    cli_environment(monkeypatch, services)
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(compromised(SECADMIN, GA1)), encoding="utf-8")
    lockout = tmp_path / "lockout.json"
    lockout.write_text(json.dumps(lockout_alert()), encoding="utf-8")
    tenant.reset_requests()

    assert await asyncio.to_thread(cli.main, ["plan", "--alert", str(alert), "--tenant"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rehearsed = {(a["kind"], a["target"]): a["rehearsal"] for a in plan["actions"]}
    secadmin = rehearsed[("disable_account", SECADMIN.id)]
    assert secadmin["status"] == "refused" and secadmin["before"]["accountEnabled"] is True
    assert {g["guard"]: g["passed"] for g in secadmin["guards"]}["privileged_role"] is False
    revoke = rehearsed[("revoke_sessions", SECADMIN.id)]
    assert revoke["calls"] == [f"POST /users/{SECADMIN.id}/revokeSignInSessions"]

    assert await asyncio.to_thread(cli.main, ["plan", "--alert", str(lockout), "--tenant"]) == 0
    (activation,) = json.loads(capsys.readouterr().out)["actions"]
    calls = activation["rehearsal"]["calls"]
    assert any(c.startswith(f"PATCH /users/{BG1.id}") for c in calls)
    assert any("conditionalAccess/policies" in c and BG2.id in c for c in calls)
    assert {method for method, _ in tenant.requests} == {"GET"}, "a plan never writes"


async def test_approvals_can_be_listed_and_decided_from_the_shell(
    services: Container,
    tenant: SimulatedTenant,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = parse_body({"kind": "activate_breakglass", "target": "all", "reason": "MFA outage"})
    (action,) = (await services.manual.request(body, ADA)).actions
    cli_environment(monkeypatch, services)

    assert await asyncio.to_thread(cli.main, ["approvals", "list", "--json"]) == 0
    (pending,) = json.loads(capsys.readouterr().out)
    assert pending["action_id"] == action.id and pending["requested_by"] == ADA.name

    own = ["approvals", "approve", action.id, "--by", ADA.name]
    assert await asyncio.to_thread(cli.main, own) == 2
    assert "cannot approve or reject their own request" in capsys.readouterr().err
    other = ["approvals", "approve", action.id, "--by", BOB.name, "--note", "ok"]
    assert await asyncio.to_thread(cli.main, other) == 0
    assert f"approved {action.id}" in capsys.readouterr().out
    approved = (await records(services))[-1].entry
    assert approved.event == "action.approved" and approved.actor == BOB
    assert approved.reason == "ok"


async def test_an_activation_interrupted_halfway_is_still_undone_completely(
    services: Container, tenant: SimulatedTenant, clock: DrillClock
) -> None:
    first = tenant.add_ca_policy("First")
    second = tenant.add_ca_policy("Second")
    # Once the first policy is written, the next writes fail until the SDK gives up: the
    # activation fails halfway and its message is delivered again.
    tenant.before_ca_write(
        lambda sim: sim.add_fault(
            Fault(method="PATCH", path_pattern="conditionalAccess/policies", times=2)
        )
    )
    await services.intake.handle_payload(lockout_alert())
    assert await drain(services) == 1, "the first delivery fails: retried later"
    retried = await LocalHost().pump_through_time(
        queue_of(services), clock, until=timedelta(minutes=10)
    )
    assert retried == 1, "the retry completes"
    assert excluded(tenant, first) == [BG1.id, BG2.id] == excluded(tenant, second)

    clock.advance(timedelta(minutes=61))
    await drain(services)
    assert excluded(tenant, first) == [] and excluded(tenant, second) == []
    assert not tenant.user(BG1.id).account_enabled


async def test_deactivating_one_account_leaves_the_other_open(
    services: Container, tenant: SimulatedTenant
) -> None:
    block = tenant.add_ca_policy("Block admins")
    await services.intake.handle_payload(lockout_alert())
    await drain(services)
    action = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DEACTIVATE_BREAKGLASS, BG1.id, "engineer:one"),
        kind=ActionKind.DEACTIVATE_BREAKGLASS,
        target=BG1.id,
        requested_by=ADA,
    )
    await services.runner.run(action)
    assert excluded(tenant, block) == [BG2.id]
    assert tenant.user(BG2.id).account_enabled and not tenant.user(BG1.id).account_enabled
    activation = await services.activations.get()
    assert activation is not None and activation.active
    assert activation.exclusions == {block: (BG2.id,)} and activation.enabled == (BG2.id,)


async def test_enable_account_cannot_open_an_emergency_account(
    services: Container, tenant: SimulatedTenant
) -> None:
    body = parse_body({"kind": "enable_account", "target": BG1.id, "reason": "need access"})
    (action,) = (await services.manual.request(body, ADA)).actions
    assert action.decision == "refused" and "activate_breakglass" in action.reason
    by_upn = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.ENABLE_ACCOUNT, BG1.user_principal_name, "x"),
        kind=ActionKind.ENABLE_ACCOUNT,
        target=BG1.user_principal_name,
        requested_by=ADA,
    )
    outcome = await services.runner.run(by_upn)
    assert outcome is not None and outcome.status == "refused"
    assert not tenant.user(BG1.id).account_enabled


async def test_the_health_check_reports_an_activation_left_open_past_its_expiry(
    services: Container, tenant: SimulatedTenant, clock: DrillClock
) -> None:
    await services.intake.handle_payload(lockout_alert())
    await drain(services)
    clock.advance(timedelta(minutes=61))  # the scheduled deactivation is never delivered
    findings = await services.emergency.health()
    assert any("is still open" in f.problem for f in findings)


TIER0 = "7e570000-0000-4000-8000-0000000000a0"


async def test_roles_held_through_a_role_assignable_group_count(
    services: Container, tenant: SimulatedTenant
) -> None:
    group_admin = _user(31, "group-admin")
    tenant.add_user(SimUser(**vars(group_admin)))
    tenant.add_group(TIER0, "Tier 0", role_assignable=True)
    tenant.add_group_member(TIER0, group_admin.id)
    tenant.assign_role(TIER0, GLOBAL_ADMINISTRATOR)

    await services.intake.handle_payload(compromised(group_admin))
    await drain(services)
    refused = [r.entry for r in await records(services) if r.entry.event == "action.refused"]
    assert len(refused) == 1 and "Global Administrator" in refused[0].result["error"]
    minimum = {g["guard"]: g for g in refused[0].result["guards"]}["global_admin_minimum"]
    assert minimum["detail"].startswith("3 enabled Global Administrators"), "GA1, GA2, the member"
    assert tenant.user(group_admin.id).account_enabled

    tenant.set_app_roles([])
    body = parse_body({"kind": "disable_account", "target": group_admin.id, "reason": "phished"})
    (action,) = (await services.manual.request(body, ADA)).actions
    await drain(services)
    await services.approvals.approve(action.id, BOB, "confirmed")
    await drain(services)
    failed = (await records(services))[-1].entry
    assert failed.event == "action.failed" and "403" in failed.result["error"]


async def test_an_approved_run_retried_after_its_intent_is_not_taken_for_its_hold(
    services: Container, tenant: SimulatedTenant, clock: DrillClock
) -> None:
    # The approved run records its intent, with its recording mark, before the write; the
    # write meets a 503 and the run is retried. The mark comes from the clock less a few
    # seconds, so the held record of the same action id lies after it: the retry must not
    # take that for its own outcome.
    body = parse_body({"kind": "disable_account", "target": SECADMIN.id, "reason": "phished"})
    (action,) = (await services.manual.request(body, ADA)).actions
    await drain(services)
    await services.approvals.approve(action.id, BOB, "confirmed")
    # Four answers of 503: the SDK retries three times, then the run is put back on the queue.
    tenant.add_fault(Fault(method="PATCH", path_pattern="^/users/", status=503, times=4))
    await LocalHost().pump_through_time(queue_of(services), clock, until=timedelta(minutes=5))
    assert not tenant.user(SECADMIN.id).account_enabled
    outcomes = [
        str(r.entry.event)
        for r in await records(services)
        if r.entry.action_id == action.id and str(r.entry.event) in OUTCOME_RECORDS
    ]
    assert outcomes == ["action.held", "action.executed"]
    row = await services.state.get(action.id)
    assert row is not None and row.state == "executed"


async def test_two_global_administrator_disables_at_once_leave_the_minimum_enabled(
    services: Container, tenant: SimulatedTenant
) -> None:
    ga3 = _user(13, "ga-three")
    tenant.add_user(SimUser(**vars(ga3)))
    tenant.assign_role(ga3.id, GLOBAL_ADMINISTRATOR)  # GA1, GA2, GA3 enabled; minimum 2
    held = []
    for target in (GA1, ga3):
        body = parse_body({"kind": "disable_account", "target": target.id, "reason": "phished"})
        (action,) = (await services.manual.request(body, ADA)).actions
        held.append(action)
    await drain(services)
    for action in held:
        await services.approvals.approve(action.id, BOB, "confirmed")
    assert len(queue_of(services)) == 2
    # Both are delivered at the same time, and each write is slow: without the lease both
    # would count three enabled Global Administrators before either write lands.
    tenant.add_fault(Fault(method="PATCH", path_pattern="^/users/", status=0, delay_s=0.5, times=2))
    await drain(services)

    enabled = [u for u in (GA1, GA2, ga3) if tenant.user(u.id).account_enabled]
    assert len(enabled) == 2
    outcomes = sorted(str(r.entry.event) for r in (await records(services))[-2:])
    assert outcomes == ["action.executed", "action.refused"]


async def test_a_rejection_that_wins_the_race_stops_the_approved_message(
    services: Container, tenant: SimulatedTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = parse_body({"kind": "disable_account", "target": SECADMIN.id, "reason": "phished"})
    (action,) = (await services.manual.request(body, ADA)).actions
    await drain(services)
    settle = services.approval_store.settle

    async def lost(*args: Any) -> bool:  # the rejection settles first
        monkeypatch.setattr(services.approval_store, "settle", settle)
        return False

    monkeypatch.setattr(services.approval_store, "settle", lost)
    with pytest.raises(ApprovalError):
        await services.approvals.approve(action.id, BOB, "confirmed")
    # The rejecting engineer's settle lands; the message arrives before that rejection has
    # closed the ledger.
    pending = await services.approval_store.get(action.id)
    assert pending is not None
    assert await services.approval_store.settle(pending, ApprovalState.REJECTED, "cy@contoso.com")
    assert len(queue_of(services)) == 1, "the approval's message was already sent"
    await drain(services)
    assert tenant.user(SECADMIN.id).account_enabled
    events = [str(r.entry.event) for r in await records(services)]
    assert "action.executed" not in events
