"""Account containment: disable and enable sign-in, revoke sign-in sessions.

Each executor reads the user first, records the state before and after, is idempotent (an
already disabled account is not patched again), and in dry-run mode only reports the call it
would make. Every outcome lists the guards that ran and their verdicts.

The lockout guards run here, against the directory as it is at execution time:
- protected identities (break-glass, VIPs) are never disabled or signed out; they are checked
  again against the ids Graph returns, because an alert may name an account by a UPN the
  configuration lists only by object id;
- a holder of a privileged directory role is disabled only when the request allows it (an
  engineer's request, or a playbook rule with `allow_privileged`) and an engineer approved
  it; otherwise the action is refused or held for approval;
- a Global Administrator is never disabled while `min_global_admins` or fewer are enabled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.concurrency import ahead
from shared.config import PRIVILEGED_ROLES
from shared.errors import MissingPermission, PermanentError, TransientError
from shared.models import (
    ActionKind,
    ActionOutcome,
    ActionRequest,
    GuardCheck,
    OutcomeStatus,
    is_guid,
    utcnow,
)
from shared.policy import PROTECTED_KINDS, Guards
from shared.ports import (
    GLOBAL_ADMINISTRATOR,
    ActionLedger,
    Directory,
    DirectoryRoles,
    Intent,
    Leases,
    RoleAssignment,
    UserState,
)

PRIVILEGED_AUTHENTICATION_ADMINISTRATOR = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
GA_LEASE = "global-admin-disables"
LEASE_TTL = timedelta(minutes=2)
LEASE_WAIT_S = 20.0
CONFIRMED = "confirmed: the write of an earlier delivery took effect; its response was lost"
SESSIONS = "signInSessionsValidFromDateTime"


def role_names(role_ids: list[str]) -> str:
    return ", ".join(PRIVILEGED_ROLES.get(r, r) for r in role_ids) or "none"


@dataclass(frozen=True)
class LockoutLimits:
    privileged_roles: frozenset[str]
    min_global_admins: int


@dataclass(frozen=True)
class _Marks:
    """What goes into the ledger with a run's intent: the recording mark, and the ETag of the
    claim the intent must find unchanged."""

    record_from: int | None
    claim_etag: str | None


class AccountActions:
    """The executors of `disable_account`, `enable_account` and `revoke_sessions`.

    A write whose answer never came (a timeout, a dropped connection) may still be carried
    out by the tenant later. So a later delivery that finds the write recorded as intended,
    yet not showing in the tenant, waits until `settle` has passed since that intent before
    it writes again: until then it only re-reads (the action goes back on the queue), and
    once the earlier write shows, the action is recorded as executed (confirmed) without a
    second write. The intent is stamped with `clock`, the time retries are scheduled by."""

    def __init__(
        self,
        directory: Directory,
        roles: DirectoryRoles,
        guards: Guards,
        limits: LockoutLimits,
        leases: Leases,
        ledger: ActionLedger,
        settle: timedelta = timedelta(0),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._ledger = ledger
        self._directory = directory
        self._roles = roles
        self._guards = guards
        self._limits = limits
        self._leases = leases
        self._settle = settle
        self._clock = clock

    async def run(
        self,
        action: ActionRequest,
        intent: Intent | None = None,
        record_from: int | None = None,
        claim_etag: str | None = None,
    ) -> ActionOutcome:
        """Run `action`. `intent` is the write an earlier delivery recorded in the ledger
        before it made it, if any. `record_from`, when given, goes into the ledger with the
        intent this run records before its write: the runner's recording mark, which then
        costs no write of its own. With `claim_etag`, the intent goes only into the claim as
        it was sent (`ClaimChanged` otherwise, before anything is written to the tenant).
        Without an earlier `intent`, an executed outcome always comes from a write made after
        such an intent."""
        marks = _Marks(record_from, claim_etag)
        # A disable naming the user by id reads its roles beside the user (the lockout guards
        # need both): one Graph round trip fewer in sequence.
        if action.kind is ActionKind.DISABLE_ACCOUNT and is_guid(action.target):
            async with ahead(self._roles.roles_of(action.target.lower())) as roles_read:
                return await self._run(action, intent, marks, roles_read)
        return await self._run(action, intent, marks, None)

    async def _run(
        self,
        action: ActionRequest,
        intent: Intent | None,
        marks: _Marks,
        roles_read: Awaitable[list[RoleAssignment]] | None,
    ) -> ActionOutcome:
        user = await self._directory.get_user(action.target)
        checks = self._protected(action, user)
        if checks and not checks[-1].passed:
            return _stopped(OutcomeStatus.REFUSED, user, checks)
        confirmed = _confirmed(action, user, checks, intent)
        if confirmed is not None:
            return confirmed
        if intent is not None and not action.dry_run:
            self._wait_for_settle(action, intent)
        if action.kind is ActionKind.REVOKE_SESSIONS:
            call = f"POST /users/{user.id}/revokeSignInSessions"
        else:
            enabled = action.kind is ActionKind.ENABLE_ACCOUNT
            call = f'PATCH /users/{user.id} {{"accountEnabled": {str(enabled).lower()}}}'
            if user.account_enabled is enabled:
                return ActionOutcome(
                    status=OutcomeStatus.ALREADY_DONE,
                    before=user.as_dict(),
                    after=user.as_dict(),
                    guards=checks,
                )
        held_roles: list[str] = []
        if action.kind is ActionKind.DISABLE_ACCOUNT:
            assignments = await (roles_read or self._roles.roles_of(user.id))
            held_roles = [a.role_id for a in assignments]
            if GLOBAL_ADMINISTRATOR in held_roles and not action.dry_run:
                # Count the enabled Global Administrators and write under one lease: two
                # disables at once could each count the other as still enabled.
                async with self._lease(action.id):
                    return await self._write(action, user, checks, call, held_roles, marks)
        return await self._write(action, user, checks, call, held_roles, marks)

    async def confirm(self, action: ActionRequest) -> ActionOutcome | None:
        """Before `action` is recorded as failed: re-read the user; the executed outcome if
        the write this action intended shows in the tenant."""
        if action.dry_run:
            return None
        entry = await self._ledger.get(action.id, sent_mark=False)
        user = await self._directory.get_user(action.target)
        return _confirmed(action, user, [], entry.intent if entry is not None else None)

    def _wait_for_settle(self, action: ActionRequest, intent: Intent) -> None:
        """Raise a TransientError (the action runs again after the rest of the settle time)
        while the earlier write `intent` records may still land in the tenant."""
        left = (intent.at + self._settle - self._clock()).total_seconds()
        if left > 0:
            raise TransientError(
                f"the earlier write of {action.id} ({intent.call}, {intent.at.isoformat()}) "
                f"got no answer and may still land; re-read in {left:.1f} s",
                retry_after=left,
            )

    @asynccontextmanager
    async def _lease(self, holder: str) -> AsyncIterator[None]:
        deadline = time.monotonic() + LEASE_WAIT_S
        while not await self._leases.acquire(GA_LEASE, holder, LEASE_TTL):
            if time.monotonic() > deadline:
                raise TransientError("another Global Administrator disable is running; retried")
            await asyncio.sleep(0.2)
        try:
            yield
        finally:
            await self._leases.release(GA_LEASE, holder)

    async def _write(
        self,
        action: ActionRequest,
        user: UserState,
        checks: list[GuardCheck],
        call: str,
        held_roles: list[str],
        marks: _Marks,
    ) -> ActionOutcome:
        if action.kind is ActionKind.DISABLE_ACCOUNT:
            checks = checks + await self._lockout(action, held_roles)
            stopped = next((c for c in checks if not c.passed), None)
            if stopped is not None:
                held = stopped.guard == "approval"
                return _stopped(OutcomeStatus.HELD if held else OutcomeStatus.REFUSED, user, checks)
        if action.dry_run:
            return ActionOutcome(
                status=OutcomeStatus.DRY_RUN, before=user.as_dict(), calls=[call], guards=checks
            )
        # The intent goes to the ledger first: if the response is lost, the next delivery
        # knows the write it finds in the tenant was this action's.
        await self._ledger.intend(
            action, call, user.as_dict(), self._clock(), marks.record_from, marks.claim_etag
        )
        try:
            if action.kind is ActionKind.REVOKE_SESSIONS:
                request_id = await self._directory.revoke_sign_in_sessions(user.id)
            else:
                enabled = action.kind is ActionKind.ENABLE_ACCOUNT
                request_id = await self._directory.set_account_enabled(user.id, enabled)
        except PermanentError as exc:
            raise explain_denied(exc, held_roles) from exc
        after = await self._directory.get_user(user.id)
        return ActionOutcome(
            status=OutcomeStatus.EXECUTED,
            before=user.as_dict(),
            after=after.as_dict(),
            calls=[call],
            request_ids=[request_id] if request_id else [],
            guards=checks,
        )

    def _protected(self, action: ActionRequest, user: UserState) -> list[GuardCheck]:
        if action.kind is ActionKind.ENABLE_ACCOUNT:
            reason = self._guards.breakglass_reason(user.id, user.upn)
            return [
                GuardCheck(guard="emergency_access", passed=reason is None, detail=reason or "")
            ]
        if action.kind not in PROTECTED_KINDS:
            return []
        reason = self._guards.protected_reason(user.id, user.upn)
        return [GuardCheck(guard="protected_identity", passed=reason is None, detail=reason or "")]

    async def _lockout(self, action: ActionRequest, held: list[str]) -> list[GuardCheck]:
        privileged = [r for r in held if r in self._limits.privileged_roles]
        checks = [await self._global_admins(held)]
        if not privileged:
            checks.append(GuardCheck(guard="privileged_role", passed=True))
            return checks
        names = role_names(privileged)
        allowed = action.requested_by.kind == "engineer" or bool(
            action.params.get("allow_privileged")
        )
        if not allowed:
            detail = f"holds privileged roles ({names}); the rule does not allow disabling them"
            checks.append(GuardCheck(guard="privileged_role", passed=False, detail=detail))
            return checks
        checks.append(GuardCheck(guard="privileged_role", passed=True, detail=f"holds {names}"))
        approver = action.params.get("approved_by")
        if approver:
            checks.append(GuardCheck(guard="approval", passed=True, detail=f"by {approver}"))
        else:
            detail = f"holds privileged roles ({names}): waits for an engineer's approval"
            checks.append(GuardCheck(guard="approval", passed=False, detail=detail))
        return checks

    async def _global_admins(self, held: list[str]) -> GuardCheck:
        if GLOBAL_ADMINISTRATOR not in held:
            return GuardCheck(guard="global_admin_minimum", passed=True)
        enabled = 0
        for assignment in await self._roles.holders_of(GLOBAL_ADMINISTRATOR):
            try:
                holder = await self._directory.get_user(assignment.principal_id)
            except PermanentError as exc:
                if exc.status != 404:
                    raise
                continue  # a group or service principal: not an account that signs in
            enabled += holder.account_enabled
        minimum = self._limits.min_global_admins
        passed = enabled > minimum
        detail = f"{enabled} enabled Global Administrators; at least {minimum} must stay enabled"
        return GuardCheck(guard="global_admin_minimum", passed=passed, detail=detail)


def _confirmed(
    action: ActionRequest, user: UserState, checks: list[GuardCheck], intent: Intent | None
) -> ActionOutcome | None:
    """The outcome of an earlier delivery's write whose response was lost: the ledger holds
    its intent, and the tenant shows its effect."""
    if intent is None or not _took_effect(action, intent, user):
        return None
    return ActionOutcome(
        status=OutcomeStatus.EXECUTED,
        before=intent.before,
        after={**user.as_dict(), "note": CONFIRMED},
        calls=[intent.call],
        guards=checks,
    )


def _took_effect(action: ActionRequest, intent: Intent, user: UserState) -> bool:
    if action.kind is ActionKind.REVOKE_SESSIONS:
        return bool(user.as_dict()[SESSIONS] != intent.before.get(SESSIONS))
    wanted = action.kind is ActionKind.ENABLE_ACCOUNT
    return user.account_enabled is wanted and intent.before.get("accountEnabled") is not wanted


def explain_denied(exc: PermanentError, held_roles: list[str]) -> PermanentError:
    """A Graph 403 on an account write, with the role the app is missing named."""
    if exc.status != 403 or isinstance(exc, MissingPermission):
        return exc  # a missing application permission is named already
    needed = PRIVILEGED_ROLES[PRIVILEGED_AUTHENTICATION_ADMINISTRATOR]
    message = (
        f"{exc} - the app's identity lacks the directory role to change this account: "
        f"accounts holding admin roles ({role_names(held_roles)}) need the app to hold "
        f"{needed} (or Global Administrator)"
    )
    return PermanentError(message, status=403, request_id=exc.request_id)


def _stopped(status: OutcomeStatus, user: UserState, checks: list[GuardCheck]) -> ActionOutcome:
    stopped = next(c for c in checks if not c.passed)
    return ActionOutcome(status=status, before=user.as_dict(), guards=checks, error=stopped.detail)
