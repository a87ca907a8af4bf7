"""The small interfaces the services depend on; adapters in shared/adapters implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.models import ActionRequest, AuditRecord, OutcomeStatus


@dataclass(frozen=True)
class UserState:
    """What the directory says about a user right now."""

    id: str
    upn: str
    account_enabled: bool
    sessions_valid_from: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "userPrincipalName": self.upn,
            "accountEnabled": self.account_enabled,
            "signInSessionsValidFromDateTime": (
                self.sessions_valid_from.isoformat() if self.sessions_valid_from else None
            ),
        }


class Directory(Protocol):
    """User operations in Entra ID."""

    async def get_user(self, user: str) -> UserState: ...

    async def set_account_enabled(self, user_id: str, enabled: bool) -> str | None: ...

    async def revoke_sign_in_sessions(self, user_id: str) -> str | None: ...


class AlertFeed(Protocol):
    """Security alerts updated after a point in time, page by page, oldest first."""

    def alerts_updated_since(self, since: datetime) -> AsyncIterator[list[dict[str, Any]]]: ...


class AuditStore(Protocol):
    """Insert-only storage of chained audit records."""

    async def head(self) -> AuditRecord | None: ...

    async def insert_all(self, records: list[AuditRecord]) -> None:
        """Insert atomically; raise `AppendConflict` if any sequence number exists already."""
        ...

    def newest_first(self) -> AsyncIterator[AuditRecord]: ...


class AppendConflict(Exception):
    """Another writer took the sequence number first."""


LEDGER_QUEUED = "queued"


@dataclass(frozen=True)
class LedgerEntry:
    action_id: str
    state: str
    kind: str
    target: str


class ActionLedger(Protocol):
    """One row per action id: claims a request once, remembers how it ended."""

    async def claim(self, action: ActionRequest) -> bool:
        """Record the action as queued; False when the id was claimed before."""
        ...

    async def release(self, action_id: str) -> None: ...

    async def get(self, action_id: str) -> LedgerEntry | None: ...

    async def finish(self, action_id: str, status: OutcomeStatus, audit_seq: int) -> None: ...


class AlertCheckpoint(Protocol):
    """The poller's watermark and the alert versions already handled."""

    async def watermark(self, feed: str) -> datetime | None: ...

    async def advance_watermark(self, feed: str, value: datetime) -> None: ...

    async def is_handled(self, alert_key: str, version: str) -> bool: ...

    async def mark_handled(self, alert_key: str, version: str) -> None: ...


class ActionQueue(Protocol):
    """Where planned actions wait for the executor."""

    async def send(self, actions: list[ActionRequest]) -> None: ...
