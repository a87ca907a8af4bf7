"""Account containment against an in-memory directory: what each executor reads, writes and
reports, and the lockout guards (protected identities, privileged roles, the Global
Administrator minimum) as they run at execution time."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.actions import accounts
from shared.actions.accounts import (
    GA_LEASE,
    AccountActions,
    LockoutLimits,
    explain_denied,
    role_names,
)
from shared.config import PRIVILEGED_ROLES, PolicySettings
from shared.errors import PermanentError, TransientError
from shared.models import ActionKind, ActionOutcome, ActionRequest, Actor, OutcomeStatus
from shared.policy import Guards
from shared.ports import GLOBAL_ADMINISTRATOR, Intent
from tests.memory_tenant import MemoryDirectory, MemoryIntents, MemoryLeases, MemoryRoles

ADELE = "5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01"
ADELE_UPN = "adele.vance@contoso.onmicrosoft.com"
VIP = "0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20"
VIP_UPN = "ceo@contoso.onmicrosoft.com"
BREAKGLASS = "1b1b1b1b-0000-4000-8000-000000000001"
BREAKGLASS_UPN = "bg-01@contoso.onmicrosoft.com"
GA_1 = "9a000000-0000-4000-8000-000000000001"
GA_2 = "9a000000-0000-4000-8000-000000000002"
GA_3 = "9a000000-0000-4000-8000-000000000003"
SECURITY_ADMIN = "194ae4cb-b126-40b2-bd5b-6091b380977d"
APPROVED = {"allow_privileged": True, "approved_by": "grace@contoso.com"}


class Tenant:
    def __init__(self, min_global_admins: int = 2, **settings: Any) -> None:
        self.directory = MemoryDirectory()
        self.roles = MemoryRoles()
        self.leases = MemoryLeases()
        self.directory.add(ADELE, ADELE_UPN)
        self.directory.add(VIP, VIP_UPN)
        self.directory.add(BREAKGLASS, BREAKGLASS_UPN, enabled=False)
        values = {"RESPONDER_PROTECTED_IDENTITIES": VIP, "BREAKGLASS_ACCOUNTS": BREAKGLASS}
        self.guards = Guards.from_settings(PolicySettings.model_validate(values | settings))
        limits = LockoutLimits(frozenset(PRIVILEGED_ROLES), min_global_admins)
        self.ledger = MemoryIntents()
        self.actions = AccountActions(
            self.directory, self.roles, self.guards, limits, self.leases, self.ledger
        )

    def global_admins(self, *enabled: bool) -> list[str]:
        ids = [f"9a000000-0000-4000-8000-00000000000{n + 1}" for n in range(len(enabled))]
        for user_id, on in zip(ids, enabled, strict=True):
            self.directory.add(user_id, f"ga{user_id[-1]}@contoso.onmicrosoft.com", on)
        self.roles.assign(GLOBAL_ADMINISTRATOR, *ids)
        return ids

    async def run(self, kind: ActionKind, target: str, **fields: Any) -> ActionOutcome:
        return await self.actions.run(request(kind, target, **fields))


def request(kind: ActionKind, target: str, **fields: Any) -> ActionRequest:
    return ActionRequest(
        id=f"act-{kind}-{target}", kind=kind, target=target, reason="test", **fields
    )


def guard(outcome: ActionOutcome, name: str) -> tuple[bool, str]:
    [check] = [c for c in outcome.guards if c.guard == name]
    return check.passed, check.detail


# what each executor does ---------------------------------------------------------------------


async def test_disable_reads_writes_and_reports_before_after_and_guards() -> None:
    tenant = Tenant()
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert tenant.directory.writes == [("accountEnabled", ADELE, False)]
    assert outcome.before["accountEnabled"] is True and outcome.after["accountEnabled"] is False
    assert outcome.before["userPrincipalName"] == ADELE_UPN
    assert outcome.calls == [f'PATCH /users/{ADELE} {{"accountEnabled": false}}']
    assert outcome.request_ids == ["req-1"]
    assert [(c.guard, c.passed) for c in outcome.guards] == [
        ("protected_identity", True),
        ("global_admin_minimum", True),
        ("privileged_role", True),
    ]
    assert outcome.error is None


async def test_a_user_named_by_upn_is_written_by_object_id() -> None:
    tenant = Tenant()
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE_UPN.upper())
    assert tenant.directory.writes == [("accountEnabled", ADELE, False)]
    assert outcome.calls == [f'PATCH /users/{ADELE} {{"accountEnabled": false}}']


async def test_an_already_disabled_account_is_not_written_again() -> None:
    tenant = Tenant()
    tenant.directory.add(ADELE, ADELE_UPN, enabled=False)
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.ALREADY_DONE
    assert tenant.directory.writes == []
    assert outcome.before == outcome.after and outcome.before["accountEnabled"] is False
    assert guard(outcome, "protected_identity") == (True, "")


async def test_enable_turns_a_disabled_account_back_on() -> None:
    tenant = Tenant()
    tenant.directory.add(ADELE, ADELE_UPN, enabled=False)
    outcome = await tenant.run(ActionKind.ENABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert tenant.directory.writes == [("accountEnabled", ADELE, True)]
    assert outcome.calls == [f'PATCH /users/{ADELE} {{"accountEnabled": true}}']
    assert [(c.guard, c.passed, c.detail) for c in outcome.guards] == [
        ("emergency_access", True, "")
    ]
    assert tenant.leases.acquired == []


async def test_enabling_an_enabled_account_changes_nothing() -> None:
    tenant = Tenant()
    outcome = await tenant.run(ActionKind.ENABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.ALREADY_DONE and tenant.directory.writes == []


async def test_revoke_signs_the_user_out_every_time_it_runs() -> None:
    tenant = Tenant()
    first = await tenant.run(ActionKind.REVOKE_SESSIONS, ADELE)
    second = await tenant.run(ActionKind.REVOKE_SESSIONS, ADELE)
    assert [first.status, second.status] == [OutcomeStatus.EXECUTED] * 2
    assert tenant.directory.writes == [("revokeSignInSessions", ADELE, None)] * 2
    assert first.calls == [f"POST /users/{ADELE}/revokeSignInSessions"]
    assert first.before["signInSessionsValidFromDateTime"] is None
    assert first.after["signInSessionsValidFromDateTime"] is not None
    assert first.after["accountEnabled"] is True
    assert [c.guard for c in first.guards] == ["protected_identity"]


async def test_revoking_a_disabled_users_sessions_still_revokes() -> None:
    tenant = Tenant()
    tenant.directory.add(ADELE, ADELE_UPN, enabled=False)
    outcome = await tenant.run(ActionKind.REVOKE_SESSIONS, ADELE)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert tenant.directory.writes == [("revokeSignInSessions", ADELE, None)]


# dry run -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "enabled", "call"),
    [
        (ActionKind.DISABLE_ACCOUNT, True, f'PATCH /users/{ADELE} {{"accountEnabled": false}}'),
        (ActionKind.ENABLE_ACCOUNT, False, f'PATCH /users/{ADELE} {{"accountEnabled": true}}'),
        (ActionKind.REVOKE_SESSIONS, True, f"POST /users/{ADELE}/revokeSignInSessions"),
    ],
)
async def test_dry_run_writes_nothing_and_reports_state_call_and_guards(
    kind: ActionKind, enabled: bool, call: str
) -> None:
    tenant = Tenant()
    tenant.directory.add(ADELE, ADELE_UPN, enabled=enabled)
    outcome = await tenant.run(kind, ADELE, dry_run=True)
    assert outcome.status is OutcomeStatus.DRY_RUN
    assert tenant.directory.writes == [] and tenant.leases.acquired == []
    assert outcome.before == tenant.directory.users[ADELE].as_dict()
    assert outcome.before["accountEnabled"] is enabled
    assert outcome.after == {} and outcome.request_ids == []
    assert outcome.calls == [call]
    assert outcome.guards and all(c.passed for c in outcome.guards)


async def test_dry_run_of_a_global_admin_disable_reports_the_minimum_without_the_lease() -> None:
    tenant = Tenant()
    tenant.global_admins(True, True)
    tenant.leases.held[GA_LEASE] = "someone-else"
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, dry_run=True)
    assert outcome.status is OutcomeStatus.REFUSED
    assert guard(outcome, "global_admin_minimum")[0] is False
    assert tenant.directory.writes == [] and tenant.leases.acquired == []


# protected identities ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [ActionKind.DISABLE_ACCOUNT, ActionKind.REVOKE_SESSIONS])
@pytest.mark.parametrize("named_as", [VIP, VIP_UPN, VIP_UPN.upper()])
async def test_a_protected_identity_is_refused_however_the_request_names_it(
    kind: ActionKind, named_as: str
) -> None:
    tenant = Tenant()
    outcome = await tenant.run(kind, named_as)
    assert outcome.status is OutcomeStatus.REFUSED
    assert tenant.directory.writes == []
    passed, detail = guard(outcome, "protected_identity")
    assert not passed and "is a protected identity" in detail
    assert outcome.error == detail
    assert outcome.before["id"] == VIP


async def test_a_protection_configured_by_upn_holds_for_a_request_by_object_id() -> None:
    tenant = Tenant(RESPONDER_PROTECTED_IDENTITIES=VIP_UPN.upper())
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, VIP)
    assert outcome.status is OutcomeStatus.REFUSED and tenant.directory.writes == []


@pytest.mark.parametrize("named_as", [BREAKGLASS, BREAKGLASS_UPN])
async def test_enable_account_never_opens_an_emergency_account(named_as: str) -> None:
    tenant = Tenant()
    outcome = await tenant.run(ActionKind.ENABLE_ACCOUNT, named_as)
    assert outcome.status is OutcomeStatus.REFUSED and tenant.directory.writes == []
    passed, detail = guard(outcome, "emergency_access")
    assert not passed and "activate_breakglass" in detail


async def test_an_emergency_account_may_still_be_signed_out_of_nothing_and_is_protected() -> None:
    tenant = Tenant()
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, BREAKGLASS_UPN)
    assert outcome.status is OutcomeStatus.REFUSED


# privileged roles ----------------------------------------------------------------------------


async def test_an_automatic_rule_never_disables_a_privileged_role_holder() -> None:
    tenant = Tenant()
    tenant.roles.assign(SECURITY_ADMIN, ADELE)
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.REFUSED and tenant.directory.writes == []
    passed, detail = guard(outcome, "privileged_role")
    assert not passed
    assert detail == (
        "holds privileged roles (Security Administrator); the rule does not allow disabling them"
    )
    assert outcome.error == detail


@pytest.mark.parametrize(
    "fields",
    [
        {"params": {"allow_privileged": True}},
        {"requested_by": Actor(kind="engineer", name="ada@contoso.com")},
    ],
)
async def test_an_allowed_privileged_disable_waits_for_an_engineers_approval(
    fields: dict[str, Any],
) -> None:
    tenant = Tenant()
    tenant.roles.assign(SECURITY_ADMIN, ADELE)
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE, **fields)
    assert outcome.status is OutcomeStatus.HELD and tenant.directory.writes == []
    assert guard(outcome, "privileged_role") == (True, "holds Security Administrator")
    assert guard(outcome, "approval") == (
        False,
        "holds privileged roles (Security Administrator): waits for an engineer's approval",
    )


async def test_an_approved_privileged_disable_runs() -> None:
    tenant = Tenant()
    tenant.roles.assign(SECURITY_ADMIN, ADELE)
    params = APPROVED
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE, params=params)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert tenant.directory.writes == [("accountEnabled", ADELE, False)]
    assert guard(outcome, "approval") == (True, "by grace@contoso.com")


async def test_roles_outside_the_privileged_list_do_not_hold_a_disable() -> None:
    tenant = Tenant()
    tenant.roles.assign("88d8e3e3-8f55-4a1e-953a-9b9898b8876b", ADELE)  # Directory Readers
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert guard(outcome, "privileged_role") == (True, "")


# the Global Administrator minimum ------------------------------------------------------------


async def test_a_global_admin_is_not_disabled_when_only_the_minimum_is_enabled() -> None:
    tenant = Tenant(min_global_admins=2)
    tenant.global_admins(True, True, False)
    params = APPROVED
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=params)
    assert outcome.status is OutcomeStatus.REFUSED and tenant.directory.writes == []
    assert guard(outcome, "global_admin_minimum") == (
        False,
        "2 enabled Global Administrators; at least 2 must stay enabled",
    )
    assert outcome.error == guard(outcome, "global_admin_minimum")[1]


async def test_a_global_admin_above_the_minimum_is_disabled_after_approval() -> None:
    tenant = Tenant(min_global_admins=2)
    tenant.global_admins(True, True, True)
    params = APPROVED
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=params)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert guard(outcome, "global_admin_minimum") == (
        True,
        "3 enabled Global Administrators; at least 2 must stay enabled",
    )
    assert guard(outcome, "privileged_role") == (True, "holds Global Administrator")
    assert tenant.leases.acquired == [(GA_LEASE, f"act-disable_account-{GA_1}")]
    assert tenant.leases.held == {}


async def test_groups_and_service_principals_holding_the_role_do_not_count() -> None:
    tenant = Tenant(min_global_admins=2)
    tenant.roles.assign(GLOBAL_ADMINISTRATOR, "7e000000-0000-4000-8000-00000000000a")
    tenant.global_admins(True, True, True)
    params = APPROVED
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=params)
    assert guard(outcome, "global_admin_minimum")[1].startswith("3 enabled")


async def test_a_directory_error_while_counting_is_not_taken_for_a_missing_user() -> None:
    tenant = Tenant(min_global_admins=1)
    tenant.global_admins(True, True)
    broken = tenant.directory.get_user

    async def flaky(user: str) -> Any:
        if user == GA_2:
            raise PermanentError("Forbidden", status=403)
        return await broken(user)

    tenant.directory.get_user = flaky  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="Forbidden"):
        await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=APPROVED)
    assert tenant.directory.writes == []
    assert tenant.leases.held == {}


async def test_the_global_admin_minimum_holds_under_concurrent_disables() -> None:
    """Three enabled Global Administrators, at least two must stay: of two disables running at
    once, exactly one may succeed. Without the lease both would count three."""
    tenant = Tenant(min_global_admins=2)
    tenant.global_admins(True, True, True)
    params = APPROVED
    outcomes = await asyncio.gather(
        tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=params),
        tenant.run(ActionKind.DISABLE_ACCOUNT, GA_2, params=params),
    )
    assert sorted(o.status for o in outcomes) == [OutcomeStatus.EXECUTED, OutcomeStatus.REFUSED]
    enabled = [u for u in (GA_1, GA_2, GA_3) if tenant.directory.users[u].account_enabled]
    assert len(enabled) == 2
    assert tenant.leases.held == {}


async def test_a_disable_of_someone_else_never_waits_for_the_global_admin_lease() -> None:
    tenant = Tenant()
    tenant.leases.held[GA_LEASE] = "a-long-running-disable"
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE)
    assert outcome.status is OutcomeStatus.EXECUTED and tenant.leases.acquired == []


async def test_a_lease_held_too_long_elsewhere_is_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts, "LEASE_WAIT_S", -1.0)
    tenant = Tenant(min_global_admins=1)
    tenant.global_admins(True, True)
    tenant.leases.held[GA_LEASE] = "a-long-running-disable"
    with pytest.raises(TransientError, match="another Global Administrator disable"):
        await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=APPROVED)
    assert tenant.directory.writes == []
    assert tenant.leases.held == {GA_LEASE: "a-long-running-disable"}


async def test_the_lease_is_given_back_when_the_write_fails() -> None:
    tenant = Tenant(min_global_admins=1)
    tenant.global_admins(True, True)
    tenant.directory.fail_writes = PermanentError("Bad request", status=400)
    with pytest.raises(PermanentError):
        await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=APPROVED)
    assert tenant.leases.held == {}


# a write Graph refuses -----------------------------------------------------------------------


async def test_a_403_on_an_admins_account_names_the_role_the_app_lacks() -> None:
    tenant = Tenant(min_global_admins=1)
    tenant.global_admins(True, True)
    tenant.directory.fail_writes = PermanentError(
        "Insufficient privileges", status=403, request_id="req-9"
    )
    with pytest.raises(PermanentError) as raised:
        await tenant.run(ActionKind.DISABLE_ACCOUNT, GA_1, params=APPROVED)
    error = raised.value
    assert (error.status, error.request_id) == (403, "req-9")
    assert str(error) == (
        "Insufficient privileges - the app's identity lacks the directory role to change this "
        "account: accounts holding admin roles (Global Administrator) need the app to hold "
        "Privileged Authentication Administrator (or Global Administrator)"
    )


async def test_other_refusals_pass_through_unchanged() -> None:
    tenant = Tenant()
    refused = PermanentError("Bad request", status=400)
    tenant.directory.fail_writes = refused
    with pytest.raises(PermanentError) as raised:
        await tenant.run(ActionKind.REVOKE_SESSIONS, ADELE)
    assert raised.value is refused
    assert explain_denied(refused, []) is refused


def test_role_names_reads_known_roles_by_name_and_keeps_unknown_ids() -> None:
    assert role_names([]) == "none"
    assert role_names([SECURITY_ADMIN, "x-1"]) == "Security Administrator, x-1"


async def test_a_403_on_revoking_a_plain_users_sessions_names_no_roles() -> None:
    tenant = Tenant()
    tenant.directory.fail_writes = PermanentError("Insufficient privileges", status=403)
    with pytest.raises(PermanentError) as raised:
        await tenant.run(ActionKind.REVOKE_SESSIONS, ADELE)
    assert "accounts holding admin roles (none)" in str(raised.value)


@pytest.mark.parametrize("kind", [ActionKind.DISABLE_ACCOUNT, ActionKind.REVOKE_SESSIONS])
async def test_a_write_without_a_request_id_records_none(kind: ActionKind) -> None:
    tenant = Tenant()
    tenant.directory.request_ids = False
    outcome = await tenant.run(kind, ADELE)
    assert outcome.status is OutcomeStatus.EXECUTED and outcome.request_ids == []


# a write whose answer never came -------------------------------------------------------------


async def test_a_retry_within_the_settle_time_re_reads_and_does_not_write_again() -> None:
    now = [datetime(2026, 3, 14, 9, 0, tzinfo=UTC)]
    tenant = Tenant()
    actions = settling(tenant, now)
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    call = f'PATCH /users/{ADELE} {{"accountEnabled": false}}'
    before = tenant.directory.users[ADELE].as_dict()
    await tenant.ledger.intend(action, call, before, now[0])  # then the request timed out
    intent = (await tenant.ledger.get(action.id)).intent  # type: ignore[union-attr]

    now[0] += timedelta(seconds=20)
    with pytest.raises(TransientError, match="may still land") as raised:
        await actions.run(action, intent)
    assert raised.value.retry_after == pytest.approx(40.0)
    assert tenant.directory.writes == []

    # The earlier write landed meanwhile: confirmed, not written again.
    tenant.directory.users[ADELE] = replace(tenant.directory.users[ADELE], account_enabled=False)
    outcome = await actions.run(action, intent)
    assert outcome.status is OutcomeStatus.EXECUTED and "confirmed" in outcome.after["note"]
    assert [(c.guard, c.passed) for c in outcome.guards] == [("protected_identity", True)]
    assert tenant.directory.writes == []


async def test_after_the_settle_time_a_write_that_never_landed_is_made_again() -> None:
    now = [datetime(2026, 3, 14, 9, 0, tzinfo=UTC)]
    tenant = Tenant()
    actions = settling(tenant, now)
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    before = tenant.directory.users[ADELE].as_dict()
    await tenant.ledger.intend(action, "PATCH", before, now[0])
    intent = (await tenant.ledger.get(action.id)).intent  # type: ignore[union-attr]

    now[0] += timedelta(seconds=61)
    outcome = await actions.run(action, intent)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert tenant.directory.writes == [("accountEnabled", ADELE, False)]
    renewed = (await tenant.ledger.get(action.id)).intent  # type: ignore[union-attr]
    assert renewed is not None and renewed.at == now[0]


def settling(tenant: Tenant, now: list[datetime]) -> AccountActions:
    """The tenant's executor with a settle time of 60 s, on the clock `now[0]`."""
    return AccountActions(
        tenant.directory,
        tenant.roles,
        tenant.guards,
        LockoutLimits(frozenset(PRIVILEGED_ROLES), 2),
        tenant.leases,
        tenant.ledger,
        settle=timedelta(seconds=60),
        clock=lambda: now[0],
    )


async def test_the_settle_time_ends_exactly_after_the_settle_time() -> None:
    now = [datetime(2026, 3, 14, 9, 0, tzinfo=UTC)]
    tenant = Tenant()
    actions = settling(tenant, now)
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    before = tenant.directory.users[ADELE].as_dict()
    await tenant.ledger.intend(action, "PATCH", before, now[0])
    intent = (await tenant.ledger.get(action.id)).intent  # type: ignore[union-attr]

    now[0] += timedelta(seconds=59.5)
    with pytest.raises(TransientError) as raised:
        await actions.run(action, intent)
    assert raised.value.retry_after == pytest.approx(0.5)
    assert tenant.directory.writes == []
    now[0] += timedelta(seconds=0.5)
    assert (await actions.run(action, intent)).status is OutcomeStatus.EXECUTED
    assert tenant.directory.writes == [("accountEnabled", ADELE, False)]


async def test_the_intent_names_the_call_and_the_state_before_it() -> None:
    now = [datetime(2026, 3, 14, 9, 0, tzinfo=UTC)]
    tenant = Tenant()
    before = tenant.directory.users[ADELE].as_dict()
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    await settling(tenant, now).run(action)
    intent = (await tenant.ledger.get(action.id)).intent  # type: ignore[union-attr]
    assert intent == Intent(f'PATCH /users/{ADELE} {{"accountEnabled": false}}', before, now[0])
    assert tenant.ledger.record_from == {}, "no recording mark unless one is given"


@pytest.mark.parametrize("kind", [ActionKind.DISABLE_ACCOUNT, ActionKind.REVOKE_SESSIONS])
async def test_the_recording_mark_goes_into_the_ledger_with_the_intent(kind: ActionKind) -> None:
    tenant = Tenant()
    action = request(kind, ADELE)
    outcome = await tenant.actions.run(action, None, 4711)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert (await tenant.ledger.get(action.id)).record_from == 4711  # type: ignore[union-attr]


async def test_a_global_admin_disable_under_the_lease_records_the_mark_too() -> None:
    tenant = Tenant(min_global_admins=2)
    tenant.global_admins(True, True, True)
    action = request(ActionKind.DISABLE_ACCOUNT, GA_1, params=APPROVED)
    outcome = await tenant.actions.run(action, None, 4711)
    assert outcome.status is OutcomeStatus.EXECUTED
    assert tenant.leases.acquired == [(GA_LEASE, action.id)]
    assert (await tenant.ledger.get(action.id)).record_from == 4711  # type: ignore[union-attr]


async def test_no_recording_mark_is_written_when_nothing_is_written() -> None:
    tenant = Tenant()
    tenant.directory.add(ADELE, ADELE_UPN, enabled=False)
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    outcome = await tenant.actions.run(action, None, 4711)
    assert outcome.status is OutcomeStatus.ALREADY_DONE
    assert tenant.ledger.record_from == {}


async def test_confirm_finds_the_intended_write_in_the_tenant() -> None:
    tenant = Tenant()
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    assert await tenant.actions.confirm(action) is None  # no intent recorded
    call = f'PATCH /users/{ADELE} {{"accountEnabled": false}}'
    before = tenant.directory.users[ADELE].as_dict()
    await tenant.ledger.intend(action, call, before, datetime(2026, 3, 14, 9, 0, tzinfo=UTC))
    assert await tenant.actions.confirm(action) is None  # the write does not show
    tenant.directory.users[ADELE] = replace(tenant.directory.users[ADELE], account_enabled=False)
    assert await tenant.actions.confirm(action.model_copy(update={"dry_run": True})) is None
    assert await tenant.actions.confirm(action) == ActionOutcome(
        status=OutcomeStatus.EXECUTED,
        before=before,
        after={**tenant.directory.users[ADELE].as_dict(), "note": accounts.CONFIRMED},
        calls=[call],
        guards=[],
    )


async def test_a_disabled_account_is_not_taken_for_a_disable_whose_before_was_disabled() -> None:
    """The tenant in the wanted state confirms the write only when the intent saw it in the
    other state: otherwise the state is not this action's doing."""
    tenant = Tenant()
    tenant.directory.add(ADELE, ADELE_UPN, enabled=False)
    action = request(ActionKind.DISABLE_ACCOUNT, ADELE)
    before = tenant.directory.users[ADELE].as_dict()
    await tenant.ledger.intend(action, "PATCH", before, datetime(2026, 3, 14, 9, 0, tzinfo=UTC))
    assert await tenant.actions.confirm(action) is None


async def test_a_sign_out_is_confirmed_by_a_new_sessions_time_only() -> None:
    tenant = Tenant()
    earlier = datetime(2026, 3, 14, 8, 0, tzinfo=UTC)
    tenant.directory.users[ADELE] = replace(
        tenant.directory.users[ADELE], sessions_valid_from=earlier
    )
    action = request(ActionKind.REVOKE_SESSIONS, ADELE)
    call = f"POST /users/{ADELE}/revokeSignInSessions"
    before = tenant.directory.users[ADELE].as_dict()
    await tenant.ledger.intend(action, call, before, datetime(2026, 3, 14, 9, 0, tzinfo=UTC))
    assert await tenant.actions.confirm(action) is None  # the sessions time did not move
    later = datetime(2026, 3, 14, 9, 0, 1, tzinfo=UTC)
    tenant.directory.users[ADELE] = replace(
        tenant.directory.users[ADELE], sessions_valid_from=later
    )
    confirmed = await tenant.actions.confirm(action)
    assert confirmed is not None and confirmed.status is OutcomeStatus.EXECUTED
    assert confirmed.calls == [call] and confirmed.before == before


class Recorded(MemoryDirectory):
    """A directory and roles that note when each read starts and ends."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    async def get_user(self, user: str) -> Any:
        self.events.append("user read starts")
        for _ in range(3):
            await asyncio.sleep(0)
        try:
            return await super().get_user(user)
        finally:
            self.events.append("user read ends")


class RecordedRoles(MemoryRoles):
    def __init__(self, events: list[str], fail: Exception | None = None) -> None:
        super().__init__()
        self.events = events
        self.fail = fail

    async def roles_of(self, principal_id: str) -> Any:
        self.events.append(f"roles read starts for {principal_id}")
        if self.fail is not None:
            raise self.fail
        return await super().roles_of(principal_id)


def recorded_tenant(events: list[str], fail: Exception | None = None) -> Tenant:
    tenant = Tenant()
    directory = Recorded(events)
    directory.users = tenant.directory.users
    tenant.directory, tenant.roles = directory, RecordedRoles(events, fail)
    tenant.actions = AccountActions(
        directory,
        tenant.roles,
        tenant.guards,
        LockoutLimits(frozenset(PRIVILEGED_ROLES), 2),
        tenant.leases,
        tenant.ledger,
    )
    return tenant


async def test_a_disable_naming_its_user_by_id_reads_the_roles_beside_the_user() -> None:
    events: list[str] = []
    tenant = recorded_tenant(events)
    outcome = await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE.upper())
    assert outcome.status is OutcomeStatus.EXECUTED
    # Started before the user read ended, under the id Graph answers with (lower case).
    assert events.index(f"roles read starts for {ADELE}") < events.index("user read ends")

    events.clear()
    tenant.directory.add(ADELE, ADELE_UPN)  # enabled again
    await tenant.run(ActionKind.DISABLE_ACCOUNT, ADELE_UPN)
    # A user principal name is no principal id: the roles wait for the user's id.
    assert events[:3] == ["user read starts", "user read ends", f"roles read starts for {ADELE}"]


async def test_a_failed_user_read_is_the_error_even_when_the_roles_read_beside_it_fails() -> None:
    events: list[str] = []
    tenant = recorded_tenant(events, fail=TransientError("roles unavailable"))
    missing = "7d000000-0000-4000-8000-000000000404"
    with pytest.raises(PermanentError, match="does not exist"):
        await tenant.run(ActionKind.DISABLE_ACCOUNT, missing)
    assert events[0] == "user read starts" and f"roles read starts for {missing}" in events
