"""In-memory stand-ins for the directory ports (users, role assignments, leases, Conditional
Access, the activation row), for unit tests of the executors without Azurite or the simulated
tenant. They behave like the real adapters where the executors can tell: unknown users are a
404, writes return a request id, leases are exclusive, and every read yields to the event loop
so that concurrent executors interleave as they would against a remote service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.errors import PermanentError
from shared.models import ActionRequest
from shared.ports import (
    LEDGER_QUEUED,
    Activation,
    CaPolicy,
    ClaimChanged,
    Intent,
    LedgerEntry,
    RoleAssignment,
    UserState,
)


@dataclass
class MemoryDirectory:
    users: dict[str, UserState] = field(default_factory=dict)
    writes: list[tuple[str, str, object]] = field(default_factory=list)
    fail_writes: PermanentError | None = None
    # Graph leaves out the request-id header now and then
    request_ids: bool = True

    def add(self, user_id: str, upn: str, enabled: bool = True) -> UserState:
        self.users[user_id] = UserState(id=user_id, upn=upn, account_enabled=enabled)
        return self.users[user_id]

    async def get_user(self, user: str) -> UserState:
        await asyncio.sleep(0)
        for state in self.users.values():
            if user.lower() in (state.id.lower(), state.upn.lower()):
                return state
        raise PermanentError(f"Resource '{user}' does not exist", status=404)

    async def set_account_enabled(self, user_id: str, enabled: bool) -> str | None:
        await asyncio.sleep(0)
        if self.fail_writes is not None:
            raise self.fail_writes
        self.users[user_id] = replace(self.users[user_id], account_enabled=enabled)
        self.writes.append(("accountEnabled", user_id, enabled))
        return f"req-{len(self.writes)}" if self.request_ids else None

    async def revoke_sign_in_sessions(self, user_id: str) -> str | None:
        await asyncio.sleep(0)
        if self.fail_writes is not None:
            raise self.fail_writes
        now = datetime(2026, 3, 14, 9, 30, tzinfo=UTC) + timedelta(seconds=len(self.writes))
        self.users[user_id] = replace(self.users[user_id], sessions_valid_from=now)
        self.writes.append(("revokeSignInSessions", user_id, None))
        return f"req-{len(self.writes)}" if self.request_ids else None


@dataclass
class MemoryRoles:
    assignments: list[RoleAssignment] = field(default_factory=list)

    def assign(self, role_id: str, *principals: str) -> None:
        self.assignments += [RoleAssignment(role_id, p) for p in principals]

    async def roles_of(self, principal_id: str) -> list[RoleAssignment]:
        await asyncio.sleep(0)
        return [a for a in self.assignments if a.principal_id == principal_id]

    async def holders_of(self, role_id: str) -> list[RoleAssignment]:
        await asyncio.sleep(0)
        return [a for a in self.assignments if a.role_id == role_id]


@dataclass
class MemoryLeases:
    held: dict[str, str] = field(default_factory=dict)
    acquired: list[tuple[str, str]] = field(default_factory=list)

    async def acquire(self, name: str, holder: str, ttl: timedelta) -> bool:
        await asyncio.sleep(0)
        if self.held.get(name, holder) != holder:
            return False
        self.held[name] = holder
        self.acquired.append((name, holder))
        return True

    async def release(self, name: str, holder: str) -> None:
        if self.held.get(name) == holder:
            del self.held[name]


@dataclass
class MemoryPolicies:
    policies: dict[str, CaPolicy] = field(default_factory=dict)
    writes: list[tuple[str, list[str]]] = field(default_factory=list)
    gone_on_write: set[str] = field(default_factory=set)
    request_ids: bool = True

    def add(self, policy_id: str, state: str = "enabled", *excluded: str) -> None:
        self.policies[policy_id] = CaPolicy(policy_id, f"Policy {policy_id}", state, excluded)

    async def list_policies(self) -> list[CaPolicy]:
        await asyncio.sleep(0)
        return list(self.policies.values())

    async def set_excluded_users(self, policy_id: str, excluded: list[str]) -> str | None:
        await asyncio.sleep(0)
        if policy_id in self.gone_on_write or policy_id not in self.policies:
            self.policies.pop(policy_id, None)
            raise PermanentError(f"policy {policy_id} not found", status=404)
        policy = self.policies[policy_id]
        self.policies[policy_id] = replace(policy, excluded_users=tuple(excluded))
        self.writes.append((policy_id, list(excluded)))
        return f"ca-req-{len(self.writes)}" if self.request_ids else None


@dataclass
class MemoryActivations:
    row: Activation | None = None
    saves: int = 0

    async def get(self) -> Activation | None:
        return self.row

    async def save(self, activation: Activation) -> str | None:
        if (self.row.etag if self.row else "") != activation.etag:
            return None
        self.saves += 1
        etag = f"etag-{self.saves}"
        self.row = replace(activation, etag=etag)
        return etag


class MemoryIntents:
    """The ledger as the account executor uses it: the intent recorded before each tenant
    write, read back by a later delivery."""

    def __init__(self) -> None:
        self.intents: dict[str, tuple[ActionRequest, Intent]] = {}
        self.record_from: dict[str, int] = {}

    async def get(self, action_id: str, sent_mark: bool = True) -> LedgerEntry | None:
        found = self.intents.get(action_id)
        if found is None:
            return None
        action, intent = found
        return LedgerEntry(
            action_id,
            LEDGER_QUEUED,
            str(action.kind),
            action.target,
            request=action,
            intent=intent,
            record_from=self.record_from.get(action_id, 0),
        )

    async def intend(
        self,
        action: ActionRequest,
        call: str,
        before: dict[str, Any],
        at: datetime,
        record_from: int | None = None,
        claim_etag: str | None = None,
    ) -> None:
        if claim_etag is not None and action.id in self.intents:
            raise ClaimChanged(f"the claim of {action.id} changed since it was sent")
        self.intents[action.id] = (action, Intent(call, dict(before), at))
        if record_from is not None:
            self.record_from[action.id] = record_from
