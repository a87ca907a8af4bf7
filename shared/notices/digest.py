"""From audit records to notices: which records are worth telling, and how one dispatch pass
(about a minute of the trail) is coalesced into one notice per incident and event class, so a
storm of 10,000 blocks makes a handful of messages, never 10,000."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.models import ActionKind, AlertSource, AuditEvent, AuditRecord
from shared.notices.model import Notice, NoticeClass, NoticeItem, digest_id

# Internal alerts about the responder itself: the readiness check, emergency access health,
# and a failed audit verification.
READINESS_ALERTS = ("responder:readiness", "responder:breakglass-health", "responder:audit")
NO_INCIDENT = "-"


def classify(record: AuditRecord) -> NoticeClass | None:
    """The event class a record belongs to; None for records nobody is told about."""
    entry = record.entry
    kind = entry.kind or ""
    match entry.event:
        case AuditEvent.ACTION_EXECUTED:
            if kind in (ActionKind.ACTIVATE_BREAKGLASS, ActionKind.DEACTIVATE_BREAKGLASS):
                return NoticeClass.BREAKGLASS
            if kind == ActionKind.UNBLOCK_IP and entry.reason.startswith("temporary block "):
                return NoticeClass.BLOCK_EXPIRED
            return NoticeClass.EXECUTED
        case AuditEvent.ACTION_HELD | AuditEvent.ACTION_EXPIRED:
            return NoticeClass.HELD
        case AuditEvent.ACTION_REFUSED:
            return NoticeClass.REFUSED
        case AuditEvent.ACTION_FAILED:
            return NoticeClass.FAILED
        case AuditEvent.ALERT_RAISED:
            alert = entry.alert_id or ""
            if alert.startswith(READINESS_ALERTS):
                return NoticeClass.READINESS
            # An action still open long after its claim (the reconciler's stuck alert).
            return NoticeClass.FAILED if entry.action_id else None
    return None


def item_of(record: AuditRecord) -> NoticeItem:
    entry = record.entry
    result: dict[str, Any] = entry.result or {}
    before = _mapping(result.get("before"))
    after = _mapping(result.get("after"))
    guards = tuple(
        f"{g.get('guard')}: {'passed' if g.get('passed') else 'stopped'}"
        + (f" ({g.get('detail')})" if g.get("detail") else "")
        for g in result.get("guards", [])
        if isinstance(g, dict)
    )
    failures = result.get("failures") or result.get("findings")
    error = result.get("error") or (f"{len(failures)} checks failed" if failures else "")
    return NoticeItem(
        seq=record.seq,
        event=str(entry.event),
        kind=entry.kind or "",
        target=entry.target or "",
        # The directory's names when the action read them, else the alert's (recorded at plan
        # time in the parameters), so a held or planned action names its person too.
        upn=_text(before.get("userPrincipalName") or entry.params.get("target_upn")),
        display_name=_text(before.get("displayName") or entry.params.get("target_name")),
        action_id=entry.action_id or "",
        alert_id=entry.alert_id or "",
        rule=entry.rule or "",
        reason=entry.reason,
        guards=guards,
        error=str(error or ""),
        expires_at=str(after.get("expires_at") or ""),
    )


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def incident_of(record: AuditRecord) -> str:
    entry = record.entry
    return entry.incident_id or entry.alert_id or NO_INCIDENT


def _made(record: AuditRecord) -> tuple[datetime, int]:
    return record.entry.at, record.seq


def digest(
    records: Iterable[AuditRecord], chosen: frozenset[NoticeClass], pass_key: str
) -> list[Notice]:
    """One notice per (incident, event class) among `records`, for the chosen classes.
    `pass_key` names the dispatch pass (its audit range), so ids are the same on a rerun."""
    groups: dict[tuple[str, NoticeClass], list[AuditRecord]] = defaultdict(list)
    for record in records:
        cls = classify(record)
        if cls is not None and cls in chosen:
            groups[(incident_of(record), cls)].append(record)
    notices = []
    # Oldest first by the time each record was made: positions order one second's records by
    # lane, not by time. The range they span is from the lowest position to the highest.
    for members in groups.values():
        members.sort(key=_made)
    for (incident, cls), members in sorted(groups.items(), key=lambda g: _made(g[1][0])):
        counts: dict[str, int] = defaultdict(int)
        for record in members:
            counts[record.entry.kind or str(record.entry.event)] += 1
        notices.append(
            Notice(
                id=digest_id(pass_key, incident, cls),
                cls=cls,
                incident=incident,
                total=len(members),
                counts=dict(counts),
                rules=tuple(sorted({r.entry.rule for r in members if r.entry.rule})),
                items=tuple(item_of(r) for r in members[:20]),
                first_seq=min(r.seq for r in members),
                last_seq=max(r.seq for r in members),
            )
        )
    return notices


def capped(notices: list[Notice], limit: int) -> list[Notice]:
    """At most `limit` notices: the overflow is folded into the last one kept, which then says
    how many incidents it stands for (the mailbox sends 30 messages a minute at most)."""
    if len(notices) <= limit:
        return notices
    kept, rest = notices[: limit - 1], notices[limit - 1 :]
    head = rest[0]
    counts: dict[str, int] = defaultdict(int)
    for notice in rest:
        for kind, count in notice.counts.items():
            counts[kind] += count
    folded = head.model_copy(
        update={
            "id": digest_id(head.id, "folded", len(rest)),
            "total": sum(n.total for n in rest),
            "counts": dict(counts),
            "folded": len(rest) - 1,
            "folded_classes": tuple(sorted({n.cls for n in rest[1:]} - {head.cls})),
            "first_seq": min(n.first_seq for n in rest),
            "last_seq": max(n.last_seq for n in rest),
        }
    )
    return [*kept, folded]


def alert_source(alert_id: str) -> AlertSource | None:
    """The source of an alert key (`graph_alerts_v2:<id>`, `sentinel:<ARM id>`)."""
    prefix, _, rest = alert_id.partition(":")
    if not rest:
        return None
    try:
        return AlertSource(prefix)
    except ValueError:
        return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
