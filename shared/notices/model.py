"""What a notice is: event classes, the audited facts a notice reports, and the queue message
that carries one notice to one channel."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class NoticeClass(StrEnum):
    """The events a deployment can choose to be told about."""

    EXECUTED = "executed"
    HELD = "held"
    REFUSED = "refused"
    FAILED = "failed"
    BREAKGLASS = "breakglass"
    BLOCK_EXPIRED = "block_expired"
    READINESS = "readiness"


ALL_CLASSES = tuple(NoticeClass)


class Channel(StrEnum):
    TEAMS = "teams"
    MAIL = "mail"
    ALERT_COMMENT = "alert_comment"
    INCIDENT_COMMENT = "incident_comment"


class NoticeItem(BaseModel):
    """One audit record a notice reports. Every text field may come from an alert and is
    attacker-influenced: renderers escape it."""

    model_config = ConfigDict(frozen=True)

    seq: int
    event: str
    kind: str = ""
    target: str = ""
    upn: str = ""
    display_name: str = ""
    action_id: str = ""
    alert_id: str = ""
    rule: str = ""
    reason: str = ""
    guards: tuple[str, ...] = ()
    error: str = ""
    expires_at: str = ""


class Notice(BaseModel):
    """The digest of one incident's records of one event class in one dispatch pass."""

    model_config = ConfigDict(frozen=True)

    id: str
    cls: NoticeClass
    incident: str
    total: int
    counts: dict[str, int] = Field(default_factory=dict)
    rules: tuple[str, ...] = ()
    items: tuple[NoticeItem, ...] = ()
    first_seq: int = 0
    last_seq: int = 0
    # Incidents folded into this notice when a pass had more than the per-minute cap, and the
    # event classes they were of.
    folded: int = 0
    folded_classes: tuple[NoticeClass, ...] = ()


class NoticeTask(BaseModel):
    """One notice for one channel: the queue message. `id` is deterministic (notice id and
    channel, plus the alert for comments), so the queue drops a repeat and the sender's state
    row makes sure it is sent at most once."""

    id: str
    channel: Channel
    notice: Notice
    recipients: tuple[str, ...] = ()
    alert_id: str = ""
    retry: int = Field(0, ge=0)
    retrying_since: datetime | None = None

    @property
    def message_id(self) -> str:
        return f"{self.id}-retry-{self.retry}" if self.retry else self.id

    def retried(self, since: datetime) -> NoticeTask:
        return self.model_copy(
            update={"retry": self.retry + 1, "retrying_since": self.retrying_since or since}
        )


def digest_id(*parts: object) -> str:
    text = "|".join(str(p) for p in parts)
    return "ntc-" + hashlib.sha256(text.encode()).hexdigest()[:32]
