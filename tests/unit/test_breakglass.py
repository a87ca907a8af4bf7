"""Emergency access against in-memory Conditional Access and directory: what an activation
opens, that a deactivation closes exactly that and nothing an administrator set up, dry runs,
and the health check."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.actions.breakglass import (
    MAX_ROUNDS,
    EmergencyAccess,
    EmergencyAccounts,
    Finding,
    expiry_deactivation,
)
from shared.config import RestingState
from shared.errors import PermanentError, TransientError
from shared.models import ActionKind, ActionRequest, OutcomeStatus
from shared.ports import Activation, CaPolicy
from tests.memory_tenant import MemoryActivations, MemoryDirectory, MemoryPolicies

NOW = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
EXPIRED = NOW - timedelta(seconds=1)
BG1 = "1b1b1b1b-0000-4000-8000-000000000001"
BG2 = "1b1b1b1b-0000-4000-8000-000000000002"
ADMIN_EXCLUDED = "ad000000-0000-4000-8000-000000000001"


class Site:
    def __init__(
        self, resting: RestingState = RestingState.DISABLED, accounts: tuple[str, ...] = (BG1, BG2)
    ) -> None:
        self.directory = MemoryDirectory()
        for n, account in enumerate(accounts, start=1):
            self.directory.add(account, f"bg-0{n}@contoso.com", resting is RestingState.ENABLED)
        self.policies = MemoryPolicies()
        self.policies.add("p-mfa", "enabled", ADMIN_EXCLUDED)
        self.policies.add("p-legacy", "enabled", BG1)
        self.policies.add("p-report", "enabledForReportingButNotEnforced")
        self.policies.add("p-off", "disabled")
        self.store = MemoryActivations()
        self.now = NOW
        config = EmergencyAccounts(accounts, resting, timedelta(hours=4))
        self.access = EmergencyAccess(
            self.directory, self.policies, self.store, config, lambda: self.now
        )

    def excluded(self, policy_id: str) -> tuple[str, ...]:
        return self.policies.policies[policy_id].excluded_users


def action(kind: ActionKind, target: str = "all", **fields: Any) -> ActionRequest:
    return ActionRequest(id=f"act-{kind}", kind=kind, target=target, reason="lockout", **fields)


def patch(policy_id: str, excluded: list[str]) -> str:
    users = ", ".join(f'"{u}"' for u in excluded)
    return (
        f"PATCH /identity/conditionalAccess/policies/{policy_id} "
        f'{{"conditions": {{"users": {{"excludeUsers": [{users}]}}}}}}'
    )


def enable(user_id: str, on: bool) -> str:
    return f'PATCH /users/{user_id} {{"accountEnabled": {"true" if on else "false"}}}'


# activation ----------------------------------------------------------------------------------


async def test_activation_enables_the_accounts_and_excludes_them_from_enforced_policies() -> None:
    site = Site()
    request = action(ActionKind.ACTIVATE_BREAKGLASS)
    applied = await site.access.activate(request)
    outcome = applied.outcome
    assert applied.action == request
    assert outcome.status is OutcomeStatus.EXECUTED
    assert site.directory.users[BG1].account_enabled and site.directory.users[BG2].account_enabled
    assert site.excluded("p-mfa") == (ADMIN_EXCLUDED, BG1, BG2)
    assert site.excluded("p-legacy") == (BG1, BG2)
    assert site.excluded("p-report") == () and site.excluded("p-off") == ()
    assert outcome.calls == [
        enable(BG1, True),
        enable(BG2, True),
        patch("p-mfa", [ADMIN_EXCLUDED, BG1, BG2]),
        patch("p-legacy", [BG1, BG2]),
    ]
    assert outcome.request_ids == ["req-1", "req-2", "ca-req-1", "ca-req-2"]
    assert outcome.before["accounts"][0] == {
        "id": BG1,
        "userPrincipalName": "bg-01@contoso.com",
        "accountEnabled": False,
    }
    assert outcome.before["policies"][0] == {
        "id": "p-mfa",
        "displayName": "Policy p-mfa",
        "state": "enabled",
        "excludes": [],
    }
    assert outcome.after["policies"][0]["excludes"] == [BG1, BG2]
    assert outcome.after["expires_at"] == (NOW + timedelta(hours=4)).isoformat()
    # what it changed is on record for the deactivation
    row = site.store.row
    assert row is not None and row.active
    assert row.enabled == (BG1, BG2)
    assert row.exclusions == {"p-mfa": (BG1, BG2), "p-legacy": (BG2,)}
    assert row.expires_at == NOW + timedelta(hours=4)
    assert applied.expires_at == NOW + timedelta(hours=4)
    expected = expiry_deactivation(applied.action, NOW + timedelta(hours=4))
    assert applied.follow_up is not None
    assert applied.follow_up.model_dump(exclude={"requested_at"}) == expected.model_dump(
        exclude={"requested_at"}
    )


async def test_the_deactivation_at_expiry_is_deterministic_per_expiry() -> None:
    activation = action(
        ActionKind.ACTIVATE_BREAKGLASS, rule="lockout", alert_id="sentinel:9", incident_id="77"
    )
    first = expiry_deactivation(activation, NOW)
    assert first == expiry_deactivation(activation, NOW).model_copy(
        update={"requested_at": first.requested_at}
    )
    assert first.id != expiry_deactivation(activation, NOW + timedelta(minutes=1)).id
    assert first.kind is ActionKind.DEACTIVATE_BREAKGLASS and first.target == "all"
    assert first.id == ActionRequest.derive_id(
        ActionKind.DEACTIVATE_BREAKGLASS, "all", f"expiry:{activation.id}:{NOW.isoformat()}"
    )
    # the audit trail links the deactivation to the alert and incident that opened access
    assert (first.rule, first.alert_id, first.incident_id) == ("lockout", "sentinel:9", "77")
    assert first.params == {"scheduled_for": NOW.isoformat()}
    assert first.reason == "emergency access activation act-activate_breakglass expired"


async def test_a_requested_duration_replaces_the_configured_one() -> None:
    site = Site()
    applied = await site.access.activate(
        action(ActionKind.ACTIVATE_BREAKGLASS, params={"ttl_minutes": 30})
    )
    assert applied.expires_at == NOW + timedelta(minutes=30)


async def test_an_activation_with_nothing_left_to_do_is_already_done() -> None:
    site = Site(resting=RestingState.ENABLED)
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    again = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert again.outcome.status is OutcomeStatus.ALREADY_DONE and again.outcome.calls == []


async def test_a_second_activation_extends_and_keeps_what_the_first_changed() -> None:
    site = Site()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    site.now = NOW + timedelta(hours=1)
    again = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    row = site.store.row
    assert row is not None and row.enabled == (BG1, BG2)
    assert row.exclusions == {"p-mfa": (BG1, BG2), "p-legacy": (BG2,)}
    assert again.expires_at == NOW + timedelta(hours=5)


async def test_an_activation_dry_run_writes_nothing_and_lists_its_calls() -> None:
    site = Site()
    applied = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS, dry_run=True))
    outcome = applied.outcome
    assert outcome.status is OutcomeStatus.DRY_RUN
    assert site.directory.writes == [] and site.policies.writes == [] and site.store.row is None
    assert outcome.calls == [
        enable(BG1, True),
        enable(BG2, True),
        patch("p-mfa", [ADMIN_EXCLUDED, BG1, BG2]),
        patch("p-legacy", [BG1, BG2]),
    ]
    assert outcome.before["accounts"][1]["accountEnabled"] is False
    assert applied.follow_up is None


async def test_a_policy_deleted_before_its_exclusion_is_skipped() -> None:
    site = Site()
    site.policies.gone_on_write.add("p-legacy")
    applied = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert patch("p-mfa", [ADMIN_EXCLUDED, BG1, BG2]) in applied.outcome.calls
    assert all("p-legacy" not in call for call in applied.outcome.calls)


async def test_other_policy_write_errors_fail_the_activation() -> None:
    site = Site()
    failing = site.policies.set_excluded_users

    async def forbidden(policy_id: str, excluded: list[str]) -> str | None:
        if policy_id == "p-legacy":
            raise PermanentError("Forbidden", status=403)
        return await failing(policy_id, excluded)

    site.policies.set_excluded_users = forbidden  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="Forbidden"):
        await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    row = site.store.row  # what was done before the failure is on record
    assert row is not None and row.exclusions == {"p-mfa": (BG1, BG2)}


async def test_policies_that_keep_changing_give_up_after_the_last_round() -> None:
    site = Site()
    listed = site.policies.list_policies
    rounds = 0

    async def churning() -> list[CaPolicy]:
        nonlocal rounds
        rounds += 1
        site.policies.add(f"p-new-{rounds}")
        return await listed()

    site.policies.list_policies = churning  # type: ignore[method-assign]
    with pytest.raises(TransientError, match=f"kept changing over {MAX_ROUNDS} rounds"):
        await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))


async def test_a_concurrent_change_of_the_activation_row_is_retried() -> None:
    site = Site()
    site.store.row = Activation("act-other", True, NOW, etag="stale-elsewhere")
    saving = site.store.save

    async def conflicting(activation: Activation) -> str | None:
        return (
            None if activation.action_id == "act-activate_breakglass" else await saving(activation)
        )

    site.store.save = conflicting  # type: ignore[method-assign]
    with pytest.raises(TransientError, match="changed meanwhile"):
        await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert site.directory.writes == []


# deactivation --------------------------------------------------------------------------------


async def test_deactivation_removes_only_what_the_activation_added() -> None:
    site = Site()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    request = action(ActionKind.DEACTIVATE_BREAKGLASS)
    applied = await site.access.deactivate(request)
    assert applied.action == request
    assert applied.outcome.status is OutcomeStatus.EXECUTED
    # the evidence: state before and after, and Graph's request ids
    assert applied.outcome.before["policies"][0]["excludes"] == [BG1, BG2]
    assert applied.outcome.after["policies"][0]["excludes"] == []
    assert applied.outcome.after["accounts"][0]["accountEnabled"] is False
    assert applied.outcome.request_ids == ["ca-req-3", "ca-req-4", "req-3", "req-4"]
    assert site.excluded("p-mfa") == (ADMIN_EXCLUDED,)
    assert site.excluded("p-legacy") == (BG1,)  # the administrator's exclusion stays
    assert not site.directory.users[BG1].account_enabled
    assert not site.directory.users[BG2].account_enabled
    assert applied.outcome.calls == [
        patch("p-mfa", [ADMIN_EXCLUDED]),
        patch("p-legacy", [BG1]),
        enable(BG1, False),
        enable(BG2, False),
    ]
    row = site.store.row
    assert row is not None and not row.active and row.exclusions == {} and row.enabled == ()


async def test_deactivating_accounts_that_rest_enabled_leaves_them_enabled() -> None:
    site = Site(resting=RestingState.ENABLED)
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    applied = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert site.directory.users[BG1].account_enabled and site.directory.users[BG2].account_enabled
    assert all("/users/" not in call for call in applied.outcome.calls)


async def test_deactivating_one_account_keeps_the_other_open() -> None:
    site = Site()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS, target=BG2))
    assert site.excluded("p-mfa") == (ADMIN_EXCLUDED, BG1)
    assert site.directory.users[BG1].account_enabled
    assert not site.directory.users[BG2].account_enabled
    row = site.store.row
    assert row is not None and row.active
    assert row.enabled == (BG1,) and row.exclusions == {"p-mfa": (BG1,)}


async def test_a_deactivation_scheduled_before_an_extension_changes_nothing() -> None:
    site = Site()
    first = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    site.now = NOW + timedelta(hours=1)
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert first.follow_up is not None
    stale = await site.access.deactivate(first.follow_up)
    extended = (NOW + timedelta(hours=5)).isoformat()
    assert stale.outcome.status is OutcomeStatus.ALREADY_DONE
    assert stale.outcome.after == {"active": True, "expires_at": extended}
    assert stale.outcome.error == f"the activation was extended until {extended}"
    assert site.directory.users[BG1].account_enabled


async def test_the_deactivation_at_the_current_expiry_closes_the_activation() -> None:
    site = Site()
    applied = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert applied.follow_up is not None
    closed = await site.access.deactivate(applied.follow_up)
    assert closed.outcome.status is OutcomeStatus.EXECUTED
    assert not site.directory.users[BG1].account_enabled


async def test_a_deactivation_dry_run_writes_nothing() -> None:
    site = Site()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    writes = (len(site.directory.writes), len(site.policies.writes))
    applied = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS, dry_run=True))
    assert applied.outcome.status is OutcomeStatus.DRY_RUN
    assert (len(site.directory.writes), len(site.policies.writes)) == writes
    assert applied.outcome.calls == [
        patch("p-mfa", [ADMIN_EXCLUDED]),
        patch("p-legacy", [BG1]),
        enable(BG1, False),
        enable(BG2, False),
    ]
    assert applied.outcome.before["policies"][1]["excludes"] == [BG1, BG2]
    row = site.store.row
    assert row is not None and row.active


async def test_deactivation_without_an_activation_only_restores_the_resting_state() -> None:
    site = Site()
    site.directory.add(BG1, "bg-01@contoso.com", enabled=True)
    applied = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert applied.outcome.calls == [enable(BG1, False)]
    assert site.excluded("p-legacy") == (BG1,)


async def test_a_deactivation_with_nothing_to_do_is_already_done() -> None:
    site = Site()
    applied = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert applied.outcome.status is OutcomeStatus.ALREADY_DONE


async def test_a_policy_deleted_before_its_restoration_is_skipped() -> None:
    site = Site()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    site.policies.gone_on_write.add("p-mfa")
    applied = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert applied.outcome.calls[0] == patch("p-legacy", [BG1])


# which accounts ------------------------------------------------------------------------------


def test_an_action_names_all_accounts_or_one_configured_account() -> None:
    config = EmergencyAccounts((BG1, BG2), RestingState.ENABLED, timedelta(hours=1))
    assert config.select("all") == (BG1, BG2)
    assert config.select(BG2) == (BG2,)
    with pytest.raises(PermanentError, match=f"{ADMIN_EXCLUDED} is not a configured"):
        config.select(ADMIN_EXCLUDED)
    empty = EmergencyAccounts((), RestingState.ENABLED, timedelta(hours=1))
    with pytest.raises(PermanentError, match="no emergency accounts are configured"):
        empty.select("all")


async def test_a_missing_emergency_account_is_named() -> None:
    site = Site()
    del site.directory.users[BG2]
    with pytest.raises(PermanentError) as missing:
        await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert missing.value.status == 404
    assert str(missing.value) == f"emergency account {BG2} does not exist in the directory"


# health --------------------------------------------------------------------------------------


async def test_healthy_accounts_have_no_findings() -> None:
    site = Site(resting=RestingState.ENABLED)
    for policy_id in ("p-mfa", "p-legacy"):
        site.policies.add(policy_id, "enabled", BG1, BG2)
    assert await site.access.health() == []


async def test_health_names_every_problem() -> None:
    site = Site(resting=RestingState.ENABLED)
    site.directory.add(BG1, "bg-01@contoso.com", enabled=False)
    del site.directory.users[BG2]
    site.policies.add("p-legacy", "enabled", BG1, BG2)
    assert await site.access.health() == [
        Finding(BG1, "is disabled, expected otherwise"),
        Finding(BG1, "not excluded from enabled Conditional Access policy 'Policy p-mfa' (p-mfa)"),
        Finding(BG2, "missing from the directory"),
    ]


async def test_health_wants_two_accounts_and_no_expired_activation() -> None:
    site = Site(resting=RestingState.DISABLED, accounts=(BG1,))
    site.policies.add("p-mfa", "enabled", BG1)
    site.store.row = Activation("act-1", True, EXPIRED, etag="e")
    site.directory.add(BG1, "bg-01@contoso.com", enabled=True)
    assert await site.access.health() == [
        Finding("-", "1 emergency accounts configured; at least 2 needed"),
        Finding(
            "-",
            f"the activation that expired at {EXPIRED.isoformat()} is still open",
        ),
    ]


async def test_while_active_an_enabled_account_is_expected() -> None:
    site = Site(resting=RestingState.DISABLED)
    for policy_id in ("p-mfa", "p-legacy"):
        site.policies.add(policy_id, "enabled", BG1, BG2)
    site.store.row = Activation("act-1", True, NOW + timedelta(hours=1), etag="e")
    assert await site.access.health() == [
        Finding(BG1, "is disabled, expected otherwise"),
        Finding(BG2, "is disabled, expected otherwise"),
    ]
    site.store.row = Activation("act-1", False, NOW - timedelta(hours=1), etag="e")
    assert await site.access.health() == []


async def test_health_does_not_hide_a_directory_error() -> None:
    site = Site()
    reading = site.directory.get_user

    async def forbidden(user: str) -> Any:
        raise PermanentError("Forbidden", status=403)

    site.directory.get_user = forbidden  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="Forbidden"):
        await site.access.health()
    assert reading is not None


# evidence and records, word for word ---------------------------------------------------------


async def test_writes_graph_answers_without_a_request_id_record_none() -> None:
    site = Site()
    site.directory.request_ids = False
    site.policies.request_ids = False
    opened = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert opened.outcome.status is OutcomeStatus.EXECUTED and len(opened.outcome.calls) == 4
    assert opened.outcome.request_ids == []
    closed = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert closed.outcome.status is OutcomeStatus.EXECUTED and len(closed.outcome.calls) == 4
    assert closed.outcome.request_ids == []


async def test_an_activation_of_more_accounts_keeps_the_exclusions_it_added_before() -> None:
    """Access opened for one account, then for all: the record of each policy holds both, so
    the deactivation removes both and leaves the administrator's exclusions."""
    site = Site()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS, target=BG2))
    row = site.store.row
    assert row is not None and row.exclusions == {"p-mfa": (BG2,), "p-legacy": (BG2,)}
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    row = site.store.row
    assert row is not None and row.exclusions == {"p-mfa": (BG2, BG1), "p-legacy": (BG2,)}
    await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert site.excluded("p-mfa") == (ADMIN_EXCLUDED,)
    assert site.excluded("p-legacy") == (BG1,)


def closed_row() -> Activation:
    """A closed activation whose row still names changes (written by hand or an older
    version): BG1's exclusion from p-legacy, which is the administrator's."""
    return Activation(
        "act-old", False, NOW - timedelta(days=1), (BG1,), {"p-legacy": (BG1,)}, etag="e"
    )


async def test_an_activation_never_takes_over_the_record_of_a_closed_one() -> None:
    site = Site()
    site.store.row = closed_row()
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    row = site.store.row
    assert row is not None and row.exclusions == {"p-mfa": (BG1, BG2), "p-legacy": (BG2,)}


async def test_a_deactivation_never_removes_what_a_closed_activation_names() -> None:
    site = Site()
    site.store.row = closed_row()
    applied = await site.access.deactivate(action(ActionKind.DEACTIVATE_BREAKGLASS))
    assert site.excluded("p-legacy") == (BG1,)
    assert applied.outcome.calls == []


async def test_dry_runs_and_a_superseded_deactivation_answer_for_their_action() -> None:
    site = Site()
    request = action(ActionKind.ACTIVATE_BREAKGLASS, dry_run=True)
    assert (await site.access.activate(request)).action == request
    first = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    request = action(ActionKind.DEACTIVATE_BREAKGLASS, dry_run=True)
    assert (await site.access.deactivate(request)).action == request
    site.now = NOW + timedelta(hours=1)
    await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert first.follow_up is not None
    assert (await site.access.deactivate(first.follow_up)).action == first.follow_up


async def test_a_policy_deleted_before_its_exclusion_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    site = Site()
    site.policies.gone_on_write.add("p-mfa")
    with caplog.at_level(logging.INFO, logger="shared.actions.breakglass"):
        applied = await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert [r.getMessage() for r in caplog.records] == [
        "policy p-mfa was deleted before its exclusion"
    ]
    assert applied.outcome.calls[-1] == patch("p-legacy", [BG1, BG2])


async def test_a_conflict_on_the_activation_row_says_it_is_retried() -> None:
    site = Site()
    saving = site.store.save

    async def conflicting(activation: Activation) -> str | None:
        return None if activation.enabled else await saving(activation)

    site.store.save = conflicting  # type: ignore[method-assign]
    with pytest.raises(TransientError) as raised:
        await site.access.activate(action(ActionKind.ACTIVATE_BREAKGLASS))
    assert str(raised.value) == "the emergency access activation changed meanwhile; retried"


def test_no_configured_accounts_is_named_with_the_setting() -> None:
    empty = EmergencyAccounts((), RestingState.ENABLED, timedelta(hours=1))
    with pytest.raises(PermanentError) as raised:
        empty.select("all")
    assert str(raised.value) == "no emergency accounts are configured (BREAKGLASS_ACCOUNTS)"


async def test_health_checks_every_account_after_a_missing_one() -> None:
    site = Site(resting=RestingState.DISABLED)
    for policy_id in ("p-mfa", "p-legacy"):
        site.policies.add(policy_id, "enabled", BG1, BG2)
    del site.directory.users[BG1]
    site.directory.add(BG2, "bg-02@contoso.com", enabled=True)
    assert await site.access.health() == [
        Finding(BG1, "missing from the directory"),
        Finding(BG2, "is enabled, expected otherwise"),
    ]


async def test_an_activation_expiring_this_moment_is_not_yet_overdue() -> None:
    site = Site(resting=RestingState.ENABLED)
    for policy_id in ("p-mfa", "p-legacy"):
        site.policies.add(policy_id, "enabled", BG1, BG2)
    site.store.row = Activation("act-1", True, NOW, etag="e")
    assert await site.access.health() == []
