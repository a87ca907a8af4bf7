"""Account containment: disable and enable sign-in, revoke sign-in sessions.

Each executor reads the user first, records the state before and after, is idempotent (an
already disabled account is not patched again), and in dry-run mode only reports the call it
would make. Protected identities are checked again here against the ids Graph returns, because
an alert may name a protected account by a UPN the configuration lists only by object id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.models import ActionKind, ActionOutcome, ActionRequest, OutcomeStatus
from shared.policy import PROTECTED_KINDS, Guards
from shared.ports import Directory, UserState


async def _set_enabled(
    directory: Directory, guards: Guards, action: ActionRequest, enabled: bool
) -> ActionOutcome:
    user = await directory.get_user(action.target)
    call = f'PATCH /users/{user.id} {{"accountEnabled": {str(enabled).lower()}}}'
    refused = _refusal(guards, action, user)
    if refused:
        return refused
    if user.account_enabled is enabled:
        return ActionOutcome(
            status=OutcomeStatus.ALREADY_DONE, before=user.as_dict(), after=user.as_dict()
        )
    if action.dry_run:
        return ActionOutcome(status=OutcomeStatus.DRY_RUN, before=user.as_dict(), calls=[call])
    request_id = await directory.set_account_enabled(user.id, enabled)
    return await _executed(directory, user, call, request_id)


async def disable_account(
    directory: Directory, guards: Guards, action: ActionRequest
) -> ActionOutcome:
    return await _set_enabled(directory, guards, action, enabled=False)


async def enable_account(
    directory: Directory, guards: Guards, action: ActionRequest
) -> ActionOutcome:
    return await _set_enabled(directory, guards, action, enabled=True)


async def revoke_sessions(
    directory: Directory, guards: Guards, action: ActionRequest
) -> ActionOutcome:
    user = await directory.get_user(action.target)
    call = f"POST /users/{user.id}/revokeSignInSessions"
    refused = _refusal(guards, action, user)
    if refused:
        return refused
    if action.dry_run:
        return ActionOutcome(status=OutcomeStatus.DRY_RUN, before=user.as_dict(), calls=[call])
    request_id = await directory.revoke_sign_in_sessions(user.id)
    return await _executed(directory, user, call, request_id)


async def _executed(
    directory: Directory, before: UserState, call: str, request_id: str | None
) -> ActionOutcome:
    """The outcome of a write, with the state read back from the directory afterwards."""
    after = await directory.get_user(before.id)
    return ActionOutcome(
        status=OutcomeStatus.EXECUTED,
        before=before.as_dict(),
        after=after.as_dict(),
        calls=[call],
        request_ids=[request_id] if request_id else [],
    )


def _refusal(guards: Guards, action: ActionRequest, user: UserState) -> ActionOutcome | None:
    if action.kind not in PROTECTED_KINDS:
        return None
    reason = guards.protected_reason(user.id, user.upn)
    if reason is None:
        return None
    return ActionOutcome(status=OutcomeStatus.REFUSED, before=user.as_dict(), error=reason)


Executor = Callable[[Directory, Guards, ActionRequest], Awaitable[ActionOutcome]]

EXECUTORS: dict[ActionKind, Executor] = {
    ActionKind.DISABLE_ACCOUNT: disable_account,
    ActionKind.ENABLE_ACCOUNT: enable_account,
    ActionKind.REVOKE_SESSIONS: revoke_sessions,
}
