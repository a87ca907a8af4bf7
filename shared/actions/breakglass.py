"""Emergency access (break-glass): activate, deactivate, and check the accounts' health.

Activation makes the configured emergency accounts usable: it enables the disabled ones and
adds each account to the excluded users of every enforced Conditional Access policy that does
not exclude it yet. It is time-boxed: the outcome carries the `deactivate_breakglass` that
ends it, scheduled for the expiry; a later activation extends the expiry, and the earlier
scheduled deactivation then finds itself superseded and changes nothing.

Deactivation returns the accounts to their resting state and removes only the exclusions the
activation added, as recorded in the activation row: exclusions an administrator set up stay.

Microsoft's guidance keeps emergency accounts permanently excluded from Conditional Access;
the health check reports every enforced policy that does not exclude one of them, every
missing account, and every account in an unexpected state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from shared.actions.ip_blocks import Applied
from shared.config import RestingState
from shared.errors import PermanentError, TransientError
from shared.models import (
    ALL_BREAKGLASS,
    ActionKind,
    ActionOutcome,
    ActionRequest,
    Actor,
    OutcomeStatus,
)
from shared.ports import (
    Activation,
    ActivationStore,
    CaPolicy,
    ConditionalAccess,
    Directory,
    UserState,
)

logger = logging.getLogger(__name__)

# A policy list that keeps changing under the activation is re-read this many times before
# the attempt is given up (and the queue redelivers it).
MAX_ROUNDS = 3


@dataclass(frozen=True)
class EmergencyAccounts:
    """The configured emergency accounts and how they rest between emergencies."""

    accounts: tuple[str, ...]
    resting: RestingState
    ttl: timedelta

    def select(self, target: str) -> tuple[str, ...]:
        """The accounts an action names: all of them, or one of them by object id."""
        if not self.accounts:
            raise PermanentError("no emergency accounts are configured (BREAKGLASS_ACCOUNTS)")
        if target == ALL_BREAKGLASS:
            return self.accounts
        if target not in self.accounts:
            raise PermanentError(f"{target} is not a configured emergency account")
        return (target,)


def expiry_deactivation(activation: ActionRequest, expires_at: datetime) -> ActionRequest:
    """The deactivation that ends an activation at `expires_at`. Its id depends on both, so a
    redelivered activation schedules the same message, and an extension a new one."""
    origin = f"expiry:{activation.id}:{expires_at.isoformat()}"
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DEACTIVATE_BREAKGLASS, activation.target, origin),
        kind=ActionKind.DEACTIVATE_BREAKGLASS,
        target=activation.target,
        params={"scheduled_for": expires_at.isoformat()},
        reason=f"emergency access activation {activation.id} expired",
        rule=activation.rule,
        alert_id=activation.alert_id,
        incident_id=activation.incident_id,
        requested_by=Actor(),
    )


@dataclass(frozen=True)
class Finding:
    """One problem the health check found with an emergency account."""

    account: str
    problem: str


class EmergencyAccess:
    def __init__(
        self,
        directory: Directory,
        policies: ConditionalAccess,
        store: ActivationStore,
        config: EmergencyAccounts,
        clock: Callable[[], datetime],
    ) -> None:
        self._directory = directory
        self._policies = policies
        self._store = store
        self._config = config
        self._clock = clock

    async def activate(self, action: ActionRequest) -> Applied:
        accounts = self._config.select(action.target)
        users = [await self._read(account) for account in accounts]
        policies = await self._policies.list_policies()
        before = _state(users, policies, accounts)
        if action.dry_run:
            planned = [_enable_call(u.id, True) for u in users if not u.account_enabled]
            planned += [_exclude_call(p, _with(p, accounts)) for p in _missing(policies, accounts)]
            outcome = ActionOutcome(status=OutcomeStatus.DRY_RUN, before=before, calls=planned)
            return Applied(action, outcome)
        current = await self._store.get()
        carried = current if current is not None and current.active else None
        ttl = timedelta(minutes=int(action.params.get("ttl_minutes") or 0)) or self._config.ttl
        expires_at = self._clock() + ttl
        # The row is written before the tenant and after every write to it, so an activation
        # that fails halfway still tells deactivation everything it changed.
        progress = await self._save(
            Activation(
                action_id=action.id,
                active=True,
                expires_at=expires_at,
                enabled=carried.enabled if carried else (),
                exclusions=dict(carried.exclusions) if carried else {},
                etag=current.etag if current else "",
            )
        )
        calls: list[str] = []
        request_ids: list[str] = []
        for user in users:
            if not user.account_enabled:
                request_id = await self._directory.set_account_enabled(user.id, True)
                calls.append(_enable_call(user.id, True))
                request_ids += [request_id] if request_id else []
                enabled = tuple(dict.fromkeys([*progress.enabled, user.id]))
                progress = await self._save(replace(progress, enabled=enabled))
        await self._exclude(accounts, progress, calls, request_ids)
        after = await self._read_back(users, accounts)
        after["expires_at"] = expires_at.isoformat()
        outcome = ActionOutcome(
            status=OutcomeStatus.EXECUTED if calls else OutcomeStatus.ALREADY_DONE,
            before=before,
            after=after,
            calls=calls,
            request_ids=request_ids,
        )
        return Applied(action, outcome, expires_at, expiry_deactivation(action, expires_at))

    async def _exclude(
        self,
        accounts: tuple[str, ...],
        progress: Activation,
        calls: list[str],
        request_ids: list[str],
    ) -> None:
        """Add the accounts to every enforced policy missing them, re-reading the list until
        a read finds nothing left to do: a policy created or changed between the read and the
        write is caught by the next round, one deleted meanwhile is skipped."""
        for _ in range(MAX_ROUNDS):
            missing = _missing(await self._policies.list_policies(), accounts)
            if not missing:
                return
            for policy in missing:
                excluded = _with(policy, accounts)
                try:
                    request_id = await self._policies.set_excluded_users(policy.id, excluded)
                except PermanentError as exc:
                    if exc.status == 404:
                        logger.info("policy %s was deleted before its exclusion", policy.id)
                        continue
                    raise
                calls.append(_exclude_call(policy, excluded))
                request_ids += [request_id] if request_id else []
                added = [a for a in accounts if a not in policy.excluded_users]
                ours = tuple(dict.fromkeys([*progress.exclusions.get(policy.id, ()), *added]))
                exclusions = {**progress.exclusions, policy.id: ours}
                progress = await self._save(replace(progress, exclusions=exclusions))
        if _missing(await self._policies.list_policies(), accounts):
            raise TransientError(
                f"Conditional Access policies kept changing over {MAX_ROUNDS} rounds"
            )

    async def deactivate(self, action: ActionRequest) -> Applied:
        accounts = self._config.select(action.target)
        current = await self._store.get()
        scheduled_for = action.params.get("scheduled_for")
        if current is not None and current.active and scheduled_for and current.expires_at:
            if current.expires_at > datetime.fromisoformat(scheduled_for):
                extended = current.expires_at.isoformat()
                outcome = ActionOutcome(
                    status=OutcomeStatus.ALREADY_DONE,
                    after={"active": True, "expires_at": extended},
                    error=f"the activation was extended until {extended}",
                )
                return Applied(action, outcome)
        users = [await self._read(account) for account in accounts]
        policies = await self._policies.list_policies()
        before = _state(users, policies, accounts)
        open_now = current if current is not None and current.active else None
        added = _only(open_now.exclusions, accounts) if open_now else {}
        removals = _removals(policies, added)
        enable_calls = self._resting_calls(users)
        if action.dry_run:
            planned = [_exclude_call(p, kept) for p, kept in removals]
            planned += [call for _, _, call in enable_calls]
            outcome = ActionOutcome(status=OutcomeStatus.DRY_RUN, before=before, calls=planned)
            return Applied(action, outcome)
        calls: list[str] = []
        request_ids: list[str] = []
        for policy, kept in removals:
            try:
                request_id = await self._policies.set_excluded_users(policy.id, kept)
            except PermanentError as exc:
                if exc.status != 404:
                    raise
                continue
            calls.append(_exclude_call(policy, kept))
            request_ids += [request_id] if request_id else []
        for user_id, enabled, call in enable_calls:
            request_id = await self._directory.set_account_enabled(user_id, enabled)
            calls.append(call)
            request_ids += [request_id] if request_id else []
        if open_now is not None:
            # Accounts this deactivation did not name stay open, with what was done for them.
            others = [a for a in self._config.accounts if a not in accounts]
            remaining = {p: ids for p, ids in _only(open_now.exclusions, others).items() if ids}
            still_enabled = tuple(u for u in open_now.enabled if u in others)
            await self._save(
                replace(open_now, active=bool(others), enabled=still_enabled, exclusions=remaining)
            )
        after = await self._read_back(users, accounts)
        outcome = ActionOutcome(
            status=OutcomeStatus.EXECUTED if calls else OutcomeStatus.ALREADY_DONE,
            before=before,
            after=after,
            calls=calls,
            request_ids=request_ids,
        )
        return Applied(action, outcome)

    async def _save(self, activation: Activation) -> Activation:
        """Store the row under its etag; the stored row, with its new etag."""
        etag = await self._store.save(activation)
        if etag is None:
            raise TransientError("the emergency access activation changed meanwhile; retried")
        return replace(activation, etag=etag)

    async def _read_back(
        self, users: list[UserState], accounts: tuple[str, ...]
    ) -> dict[str, object]:
        """The state after a write, read again from the tenant."""
        return _state(
            [await self._directory.get_user(u.id) for u in users],
            await self._policies.list_policies(),
            accounts,
        )

    def _resting_calls(self, users: list[UserState]) -> list[tuple[str, bool, str]]:
        enabled = self._config.resting is RestingState.ENABLED
        return [
            (u.id, enabled, _enable_call(u.id, enabled))
            for u in users
            if u.account_enabled is not enabled
        ]

    async def health(self) -> list[Finding]:
        """Every problem with the emergency accounts right now; empty when all is well."""
        if len(self._config.accounts) < 2:
            count = len(self._config.accounts)
            findings = [Finding("-", f"{count} emergency accounts configured; at least 2 needed")]
        else:
            findings = []
        current = await self._store.get()
        active = current is not None and current.active
        expected = active or self._config.resting is RestingState.ENABLED
        if current is not None and current.active and current.expires_at is not None:
            if current.expires_at < self._clock():
                stamp = current.expires_at.isoformat()
                findings.append(
                    Finding("-", f"the activation that expired at {stamp} is still open")
                )
        policies = await self._policies.list_policies()
        for account in self._config.accounts:
            try:
                user = await self._directory.get_user(account)
            except PermanentError as exc:
                if exc.status != 404:
                    raise
                findings.append(Finding(account, "missing from the directory"))
                continue
            if user.account_enabled is not expected:
                state = "enabled" if user.account_enabled else "disabled"
                findings.append(Finding(account, f"is {state}, expected otherwise"))
            for policy in _missing(policies, (user.id,)):
                findings.append(
                    Finding(
                        account,
                        f"not excluded from enabled Conditional Access policy "
                        f"'{policy.name}' ({policy.id})",
                    )
                )
        return findings

    async def _read(self, account: str) -> UserState:
        try:
            return await self._directory.get_user(account)
        except PermanentError as exc:
            if exc.status == 404:
                raise PermanentError(
                    f"emergency account {account} does not exist in the directory", status=404
                ) from exc
            raise


def _missing(policies: Iterable[CaPolicy], accounts: Iterable[str]) -> list[CaPolicy]:
    wanted = list(accounts)
    return [p for p in policies if p.enforced and any(a not in p.excluded_users for a in wanted)]


def _only(
    exclusions: dict[str, tuple[str, ...]], accounts: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """The recorded exclusions of the named accounts only."""
    named = set(accounts)
    return {p: tuple(u for u in ids if u in named) for p, ids in exclusions.items()}


def _with(policy: CaPolicy, accounts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*policy.excluded_users, *accounts]))


def _removals(
    policies: Iterable[CaPolicy], added: dict[str, tuple[str, ...]]
) -> list[tuple[CaPolicy, list[str]]]:
    """Per policy the activation touched: the excluded users without those it added."""
    result = []
    for policy in policies:
        ours = set(added.get(policy.id, ()))
        if ours & set(policy.excluded_users):
            result.append((policy, [u for u in policy.excluded_users if u not in ours]))
    return result


def _state(
    users: list[UserState], policies: list[CaPolicy], accounts: Iterable[str]
) -> dict[str, object]:
    wanted = list(accounts)
    return {
        "accounts": [
            {"id": u.id, "userPrincipalName": u.upn, "accountEnabled": u.account_enabled}
            for u in users
        ],
        "policies": [
            {
                "id": p.id,
                "displayName": p.name,
                "state": p.state,
                "excludes": [a for a in wanted if a in p.excluded_users],
            }
            for p in policies
        ],
    }


def _enable_call(user_id: str, enabled: bool) -> str:
    return f'PATCH /users/{user_id} {{"accountEnabled": {str(enabled).lower()}}}'


def _exclude_call(policy: CaPolicy, excluded: list[str]) -> str:
    return (
        f"PATCH /identity/conditionalAccess/policies/{policy.id} "
        f'{{"conditions": {{"users": {{"excludeUsers": {excluded}}}}}}}'.replace("'", '"')
    )
