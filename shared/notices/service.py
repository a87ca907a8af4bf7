"""The notice services: the dispatcher reads what the audit trail gained since its last pass
and queues one task per notice and channel; the sender delivers one task, at most once.

Containment never waits for either: the dispatcher runs on its own timer after the records are
audited, and a notice that cannot be delivered ends as a `notify.failed` audit record."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.audit import AuditChain
from shared.errors import TransientError
from shared.models import Actor, AlertSource, AuditEntry, AuditEvent, AuditRecord
from shared.notices.digest import alert_source, capped, digest
from shared.notices.model import Channel, Notice, NoticeClass, NoticeTask, digest_id
from shared.notices.ports import (
    AlertComments,
    Claim,
    DeliveryState,
    DispatchCursor,
    IncidentComments,
    MailChannel,
    NoticeQueue,
    NoticeRows,
    TeamsChannel,
)
from shared.notices.render import comment_text, mail_html, mail_subject, teams_card
from shared.ports import AuditStore

logger = logging.getLogger(__name__)

# What a comment on the originating alert reports.
COMMENT_CLASSES = frozenset(
    {
        NoticeClass.EXECUTED,
        NoticeClass.HELD,
        NoticeClass.REFUSED,
        NoticeClass.FAILED,
        NoticeClass.BLOCK_EXPIRED,
    }
)
_SENTINEL_INCIDENT = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.OperationalInsights/"
    r"workspaces/[^/]+/providers/Microsoft\.SecurityInsights/incidents/[^/]+$",
    re.IGNORECASE,
)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class NoticeConfig:
    """Who hears of what: the classes posted to Teams, the mail recipients per class, whether
    alerts and Sentinel incidents get comments, and the limits."""

    teams_events: frozenset[NoticeClass] = frozenset()
    mail_routes: dict[NoticeClass, tuple[str, ...]] = field(default_factory=dict)
    alert_comments: bool = False
    sentinel_workspace: str | None = None
    page_url: str | None = None
    max_per_minute: int = 20
    give_up_after: timedelta = timedelta(minutes=60)
    retry_base_s: float = 5.0
    retry_max_s: float = 300.0

    @property
    def chosen(self) -> frozenset[NoticeClass]:
        return self.teams_events | frozenset(self.mail_routes)

    @property
    def enabled(self) -> bool:
        return bool(self.chosen) or self.alert_comments or self.sentinel_workspace is not None


@dataclass
class DispatchReport:
    records: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    first_seq: int = 0
    last_seq: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "tasks": dict(self.tasks),
            "range": [self.first_seq, self.last_seq],
        }


class NoticeDispatcher:
    """One pass over the audit records added since the last pass (the timer runs it every
    minute, so a pass is the per-minute digest)."""

    def __init__(
        self,
        store: AuditStore,
        rows: NoticeRows,
        queue: NoticeQueue,
        config: NoticeConfig,
    ) -> None:
        self._store = store
        self._rows = rows
        self._queue = queue
        self._config = config

    async def run(self) -> DispatchReport:
        report = DispatchReport()
        cursor = await self._rows.cursor()
        heads = {name: head.seq for name, head in (await self._store.heads()).items()}
        if cursor is None:
            # A new deployment starts at the present: history is not notified.
            await self._rows.save_cursor(DispatchCursor(heads, heads))
            return report
        if not self._config.enabled:
            # Nothing to tell anyone: keep up with the trail without reading it.
            if _ahead(heads, cursor.done):
                await self._rows.save_cursor(DispatchCursor(heads, heads, cursor.etag))
            return report
        if cursor.planned != cursor.done:
            low, high = cursor.done, cursor.planned
            etag: str | None = cursor.etag
        else:
            low, high = cursor.done, heads
            if not _ahead(high, low):
                return report
            etag = await self._rows.save_cursor(DispatchCursor(low, high, cursor.etag))
            if etag is None:
                logger.info("another notice dispatch pass is running; this one stops")
                return report
        records = await self._read(low, high)
        tasks = self.tasks_for(records, _pass_key(low, high))
        if tasks:
            await self._queue.send(tasks)
        await self._rows.save_cursor(DispatchCursor(high, high, etag or ""))
        report.records = len(records)
        if records:
            seqs = [record.seq for record in records]
            report.first_seq, report.last_seq = min(seqs), max(seqs)
        for task in tasks:
            report.tasks[task.channel] = report.tasks.get(task.channel, 0) + 1
        return report

    async def _read(self, low: dict[str, int], high: dict[str, int]) -> list[AuditRecord]:
        """The records of each chain after `low` up to `high`, oldest first (by time, then
        position: positions order chains only to the second)."""
        records = []
        for chain, top in sorted(high.items()):
            after = low.get(chain, 0)
            if top <= after:
                continue
            async for record in self._store.chain_newest_first(chain):
                if record.chain_seq > top:
                    continue
                if record.chain_seq <= after:
                    break
                records.append(record)
        records.sort(key=lambda record: (record.entry.at, record.seq))
        return records

    def tasks_for(self, records: list[AuditRecord], pass_key: str) -> list[NoticeTask]:
        config = self._config
        notices = digest(records, config.chosen, pass_key)
        tasks = []
        teams = capped([n for n in notices if n.cls in config.teams_events], config.max_per_minute)
        tasks += [_task(n, Channel.TEAMS) for n in teams]
        mail = capped([n for n in notices if n.cls in config.mail_routes], config.max_per_minute)
        tasks += [_task(n, Channel.MAIL, self._recipients(n)) for n in mail]
        return tasks + self._comment_tasks(records, pass_key)

    def _recipients(self, notice: Notice) -> tuple[str, ...]:
        """The route of the notice's class, and of every class folded into it."""
        routes = self._config.mail_routes
        classes = (notice.cls, *notice.folded_classes)
        return tuple(dict.fromkeys(a for c in classes for a in routes.get(c, ())))

    def _comment_tasks(self, records: list[AuditRecord], pass_key: str) -> list[NoticeTask]:
        by_alert: dict[str, list[AuditRecord]] = defaultdict(list)
        for record in records:
            if record.entry.alert_id:
                by_alert[record.entry.alert_id].append(record)
        tasks = []
        for alert_key, members in by_alert.items():
            target = self._comment_target(alert_key)
            if target is None:
                continue
            channel, alert_id = target
            for notice in digest(members, COMMENT_CLASSES, f"{pass_key}|{alert_key}"):
                task_id = digest_id(notice.id, channel, alert_id)
                tasks.append(
                    NoticeTask(id=task_id, channel=channel, notice=notice, alert_id=alert_id)
                )
        return tasks

    def _comment_target(self, alert_key: str) -> tuple[Channel, str] | None:
        """Where a comment about `alert_key` goes: only to the alert's own source."""
        source = alert_source(alert_key)
        raw = alert_key.partition(":")[2]
        if source is AlertSource.GRAPH_ALERTS_V2 and self._config.alert_comments:
            return Channel.ALERT_COMMENT, raw
        workspace = self._config.sentinel_workspace
        if source is not AlertSource.SENTINEL or workspace is None:
            return None
        incidents = f"{workspace}/providers/Microsoft.SecurityInsights/incidents/".lower()
        if _SENTINEL_INCIDENT.match(raw):
            # Only in the workspace whose Responder role the app holds.
            return (Channel.INCIDENT_COMMENT, raw) if raw.lower().startswith(incidents) else None
        if _GUID.match(raw):
            return (
                Channel.INCIDENT_COMMENT,
                f"{workspace}/providers/Microsoft.SecurityInsights/incidents/{raw}",
            )
        return None


def _task(notice: Notice, channel: Channel, recipients: tuple[str, ...] = ()) -> NoticeTask:
    return NoticeTask(
        id=digest_id(notice.id, channel), channel=channel, notice=notice, recipients=recipients
    )


@dataclass
class Channels:
    teams: TeamsChannel | None = None
    mail: MailChannel | None = None
    alert_comments: AlertComments | None = None
    incident_comments: IncidentComments | None = None


class NoticeSender:
    """Delivers one task: at most once (a state row per task id), retried on transient errors
    with the service's Retry-After, audited as `notify.failed` when it cannot be delivered."""

    def __init__(
        self,
        channels: Channels,
        rows: NoticeRows,
        queue: NoticeQueue,
        chain: AuditChain,
        config: NoticeConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self._channels = channels
        self._rows = rows
        self._queue = queue
        self._chain = chain
        self._config = config
        self._clock = clock

    async def deliver(self, task: NoticeTask) -> str:
        """What became of `task`: sent, duplicate, retrying or failed."""
        state = await self._rows.delivery(task.id)
        if state in (DeliveryState.SENT, DeliveryState.FAILED):
            return "duplicate"
        if state is DeliveryState.SENDING and not await self._resumable(task):
            # An earlier attempt stopped mid-send: it may have been delivered, and a notice
            # is sent at most once, so it is not repeated.
            await self._rows.settle(task.id, DeliveryState.FAILED)
            await self._audit_failed(task, "an earlier attempt stopped while sending")
            return "failed"
        claim = None
        if state is not DeliveryState.SENDING:
            claim = await self._rows.claim(task.id)
            if claim is None:
                return "duplicate"
        try:
            # Only a first claim knows that no earlier attempt can have written anything.
            await self._send(task, first=claim is Claim.FIRST)
        except TransientError as exc:
            await self._rows.settle(task.id, DeliveryState.RETRY)
            return await self._later(task, exc)
        except Exception as exc:
            await self._rows.settle(task.id, DeliveryState.FAILED)
            await self._audit_failed(task, f"{type(exc).__name__}: {exc} (not retried)")
            return "failed"
        await self._rows.settle(task.id, DeliveryState.SENT)
        return "sent"

    async def _resumable(self, task: NoticeTask) -> bool:
        """Comments can tell whether an earlier attempt landed: an alert comment carries the
        task id, a Sentinel comment is written under a deterministic id."""
        if task.channel is Channel.INCIDENT_COMMENT:
            return True
        if task.channel is Channel.ALERT_COMMENT and self._channels.alert_comments:
            return True
        return False

    async def _send(self, task: NoticeTask, first: bool) -> None:
        notice, page = task.notice, self._config.page_url
        channels = self._channels
        match task.channel:
            case Channel.TEAMS if channels.teams:
                await channels.teams.post(teams_card(notice, page))
            case Channel.MAIL if channels.mail:
                await channels.mail.send(
                    task.recipients, mail_subject(notice), mail_html(notice, page)
                )
            case Channel.ALERT_COMMENT if channels.alert_comments:
                # The alert is read for an earlier attempt's comment only when there may have
                # been one (a retry after a lost answer, a resumed send), not on a first claim.
                comments = channels.alert_comments
                if first or not await comments.has_comment(task.alert_id, task.id):
                    await comments.add_comment(task.alert_id, comment_text(notice, task.id))
            case Channel.INCIDENT_COMMENT if channels.incident_comments:
                await channels.incident_comments.put_comment(
                    task.alert_id, task.id, comment_text(notice, task.id)
                )
            case _:
                raise RuntimeError(f"the {task.channel} channel is not configured")

    async def _later(self, task: NoticeTask, exc: TransientError) -> str:
        now = self._clock()
        since = task.retrying_since or now
        if now - since >= self._config.give_up_after:
            await self._rows.settle(task.id, DeliveryState.FAILED)
            minutes = int((now - since).total_seconds() // 60)
            await self._audit_failed(task, f"{exc} (gave up after {minutes} minutes)")
            return "failed"
        backoff = min(self._config.retry_base_s * 2**task.retry, self._config.retry_max_s)
        delay = max(exc.retry_after or 0.0, backoff)
        await self._queue.schedule([task.retried(now)], now + timedelta(seconds=delay))
        logger.warning(
            "notice %s (%s) attempt %s failed; again in %.0f s",
            task.id,
            task.channel,
            task.retry + 1,
            delay,
        )
        return "retrying"

    async def _audit_failed(self, task: NoticeTask, error: str) -> None:
        notice = task.notice
        logger.error("notice %s (%s) not delivered: %s", task.id, task.channel, error)
        await self._chain.append(
            AuditEntry(
                event=AuditEvent.NOTIFY_FAILED,
                actor=Actor(),
                incident_id=None if notice.incident == "-" else notice.incident[:256],
                reason=f"{task.channel} notice not delivered",
                result={
                    "task_id": task.id,
                    "channel": str(task.channel),
                    "class": str(notice.cls),
                    "records": [notice.first_seq, notice.last_seq],
                    "error": error[:500],
                },
            )
        )


def _ahead(heads: dict[str, int], cursor: dict[str, int]) -> bool:
    """Whether any chain has records after the cursor."""
    return any(seq > cursor.get(chain, 0) for chain, seq in heads.items())


def _pass_key(low: dict[str, int], high: dict[str, int]) -> str:
    """A pass's name in its notice ids: the same range always gives the same key."""
    text = json.dumps([low, high], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
