"""The interfaces the notice services depend on; shared/adapters implements them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from shared.notices.model import NoticeTask


class NoticeQueue(Protocol):
    """Where notices wait for the sender (a Service Bus queue; message id = task id)."""

    async def send(self, tasks: list[NoticeTask]) -> None: ...

    async def schedule(self, tasks: list[NoticeTask], at: datetime) -> None: ...


@dataclass(frozen=True)
class DispatchCursor:
    """How far the dispatcher has read the audit trail, per chain (the trail's chains are
    numbered each on its own, which is exact where positions order chains only to the second):
    the number of the last record dispatched (`done`), and of the last record of the pass that
    began (`planned`; a rerun repeats exactly that pass, so its notice ids come out the same)."""

    done: dict[str, int]
    planned: dict[str, int]
    etag: str = ""


class DeliveryState(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


class Claim(StrEnum):
    """How a notice task was claimed for sending."""

    FIRST = "first"  # its row was created now: no attempt before this one
    AGAIN = "again"  # taken over from an attempt that ended in `retry`


class NoticeRows(Protocol):
    """The dispatcher's cursor and one row per notice task (at most once per event)."""

    async def cursor(self) -> DispatchCursor | None: ...

    async def save_cursor(self, cursor: DispatchCursor) -> str | None:
        """Store `cursor` unless someone changed the stored one since it was read (etag; an
        empty etag means none was stored). The new etag; None on such a conflict."""
        ...

    async def delivery(self, task_id: str) -> DeliveryState | None: ...

    async def claim(self, task_id: str) -> Claim | None:
        """Mark the task as being sent, if no row exists (`Claim.FIRST`: no attempt was ever
        made) or the last attempt is known not to have been delivered (`retry`;
        `Claim.AGAIN`: that attempt's write may still have landed); None otherwise."""
        ...

    async def settle(self, task_id: str, state: DeliveryState) -> None: ...


class TeamsChannel(Protocol):
    async def post(self, card: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class MailChannel(Protocol):
    async def send(self, recipients: tuple[str, ...], subject: str, html_body: str) -> None: ...

    async def close(self) -> None: ...


class AlertComments(Protocol):
    """Comments on Graph alerts_v2 alerts."""

    async def has_comment(self, alert_id: str, marker: str) -> bool: ...

    async def add_comment(self, alert_id: str, text: str) -> None: ...

    async def close(self) -> None: ...


class IncidentComments(Protocol):
    """Comments on Microsoft Sentinel incidents (ARM); `comment_id` makes the write
    idempotent (PUT)."""

    async def put_comment(self, incident_arm_id: str, comment_id: str, text: str) -> None: ...

    async def close(self) -> None: ...
