"""Notices: what they say and how attacker text is escaped, how a storm is digested, which
settings are refused, and how the sender keeps a notice to at most one delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.audit import GENESIS_HASH, AuditChain, chain_entry, lane_position
from shared.config import Settings
from shared.errors import ConfigError, PermanentError, TransientError
from shared.models import Actor, AuditEntry, AuditEvent, AuditRecord
from shared.notices.digest import capped, classify, digest
from shared.notices.model import Channel, Notice, NoticeClass, NoticeTask
from shared.notices.ports import Claim, DeliveryState, DispatchCursor
from shared.notices.render import (
    comment_text,
    mail_html,
    mail_subject,
    teams_card,
)
from shared.notices.service import Channels, NoticeConfig, NoticeDispatcher, NoticeSender
from tests.fakes import MemoryAuditStore

HOSTILE = (
    "Urgent [click here](https://evil.example/login) <at>CEO</at> **now** "
    "<img src=x onerror=alert(1)> \ud800 tail"
)
PAGE = "https://responder.example/api/audit/ui"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def record(seq: int, event: AuditEvent, **fields: Any) -> AuditRecord:
    entry = AuditEntry(event=event, actor=Actor(), **fields)
    return AuditRecord(seq=seq, prev_hash="0" * 64, hash="1" * 64, entry=entry, body="{}")


def executed(seq: int, kind: str, target: str, **fields: Any) -> AuditRecord:
    return record(seq, AuditEvent.ACTION_EXECUTED, kind=kind, target=target, **fields)


def hostile_notice(cls: NoticeClass = NoticeClass.EXECUTED) -> Notice:
    event = AuditEvent.ACTION_HELD if cls is NoticeClass.HELD else AuditEvent.ACTION_EXECUTED
    rec = record(
        7,
        event,
        kind="disable_account",
        target="adele.vance@contoso.onmicrosoft.com",
        action_id="act-1",
        alert_id="graph_alerts_v2:da1",
        incident_id="4711",
        rule="compromised-user",
        reason=f"rule compromised-user: {HOSTILE}",
        result={"before": {"userPrincipalName": "adele.vance@contoso.onmicrosoft.com"}},
    )
    [notice] = digest([rec], frozenset({cls}), "0-7")
    return notice


def texts(card: dict[str, Any]) -> list[str]:
    content = card["attachments"][0]["content"]
    found = []
    for element in content["body"]:
        if element["type"] == "TextBlock":
            found.append(element["text"])
        for fact in element.get("facts", []):
            found += [fact["title"], fact["value"]]
    return found


def test_card_text_from_an_alert_cannot_inject_links_mentions_or_markup() -> None:
    card = teams_card(hostile_notice(), PAGE)
    for text in texts(card):
        # Every Markdown delimiter arrives escaped: no link, mention or emphasis survives.
        for token in ("[", "]", "(", ")", "<", ">", "*"):
            assert all(text[i - 1] == "\\" for i, c in enumerate(text) if c == token), text
        assert "\ud800" not in text
    why = next(t for t in texts(card) if "click here" in t)
    assert "\\[click here\\]\\(https\\:\\/\\/evil\\.example\\/login\\)" in why
    assert "\\<at\\>CEO\\<\\/at\\>" in why
    assert "\ufffd" in why
    # The body is valid UTF-8 JSON (a lone surrogate would make it unencodable).
    json.dumps(card, ensure_ascii=False).encode("utf-8")
    # The only links are the product's own.
    urls = [a["url"] for a in card["attachments"][0]["content"]["actions"]]
    assert urls == [f"{PAGE}?incident=4711"]


def test_mail_is_html_escaped_and_has_no_unauthenticated_approve_link() -> None:
    notice = hostile_notice(NoticeClass.HELD)
    body = mail_html(notice, PAGE)
    assert "<img" not in body and "<at>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "\ud800" not in body and "\ud800" not in mail_subject(notice)
    assert f'href="{PAGE}?view=approvals"' in body
    assert "approve" not in body.lower().replace("waiting for approval", "")


def test_a_held_card_links_the_approvals_view() -> None:
    card = teams_card(hostile_notice(NoticeClass.HELD), PAGE)
    urls = [a["url"] for a in card["attachments"][0]["content"]["actions"]]
    assert urls == [f"{PAGE}?incident=4711", f"{PAGE}?view=approvals"]


def test_a_card_is_a_workflows_message_with_one_adaptive_card() -> None:
    card = teams_card(hostile_notice(), None)
    assert card["type"] == "message"
    [attachment] = card["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["content"]["type"] == "AdaptiveCard"
    assert "actions" not in attachment["content"]


def test_a_storm_of_one_incident_is_one_notice_per_class() -> None:
    records = [
        executed(i, "block_ip", f"203.0.113.{i % 250}/32", incident_id="9", rule="spray")
        for i in range(1, 313)
    ]
    records.append(
        record(
            313, AuditEvent.ACTION_HELD, kind="disable_account", target="a@b.cd", incident_id="9"
        )
    )
    notices = digest(records, frozenset(NoticeClass), "0-313")
    assert [(n.cls, n.total) for n in notices] == [
        (NoticeClass.EXECUTED, 312),
        (NoticeClass.HELD, 1),
    ]
    card = teams_card(notices[0], PAGE)
    assert "312 addresses blocked" in texts(card)[1]
    assert "and 302 more in the audit trail" in json.dumps(card)
    # Ids depend only on the pass and the group: a rerun of the pass gives the same ones.
    assert [n.id for n in digest(records, frozenset(NoticeClass), "0-313")] == [
        n.id for n in notices
    ]


def test_a_notice_lists_its_records_in_the_order_they_were_made() -> None:
    """Positions order one second's records by lane: the record made first may stand higher.
    The items follow the time each record was made; the range spans the lowest position to
    the highest."""
    made = [
        executed(
            seq, "block_ip", f"203.0.113.{n}/32", incident_id="9", at=T0.replace(microsecond=n)
        )
        for n, seq in enumerate((900, 300, 600), start=1)
    ]
    [notice] = digest(reversed(made), frozenset({NoticeClass.EXECUTED}), "p")
    assert [item.seq for item in notice.items] == [900, 300, 600]
    assert (notice.first_seq, notice.last_seq) == (300, 900)


def test_a_held_action_is_named_by_the_names_the_alert_gave() -> None:
    """A held action has no directory read yet: its notice names the person by the UPN and
    display name recorded from the alert at plan time."""
    params = {"target_upn": "lynne.robbins@contoso.com", "target_name": "Lynne Robbins"}
    held = record(1, AuditEvent.ACTION_HELD, kind="disable_account", target="u-1", params=params)
    [item] = digest([held], frozenset(NoticeClass), "0-1")[0].items
    assert (item.upn, item.display_name) == ("lynne.robbins@contoso.com", "Lynne Robbins")
    [run] = digest(
        [
            executed(
                2, "disable_account", "u-1", params=params, result={"before": {"displayName": "L"}}
            )
        ],
        frozenset(NoticeClass),
        "1-2",
    )[0].items
    assert (run.upn, run.display_name) == ("lynne.robbins@contoso.com", "L")


def test_more_incidents_than_the_cap_fold_into_the_last_notice() -> None:
    records = [executed(i, "disable_account", "a@b.cd", incident_id=str(i)) for i in range(1, 51)]
    notices = capped(digest(records, frozenset(NoticeClass), "p"), 20)
    assert len(notices) == 20
    assert notices[-1].folded == 30 and notices[-1].total == 31
    assert "30 further incidents folded in" in json.dumps(teams_card(notices[-1], None))


def test_classes() -> None:
    assert classify(executed(1, "activate_breakglass", "all")) is NoticeClass.BREAKGLASS
    expiry = executed(2, "unblock_ip", "203.0.113.0/24", reason="temporary block act-1 expired")
    assert classify(expiry) is NoticeClass.BLOCK_EXPIRED
    assert classify(executed(3, "unblock_ip", "203.0.113.0/24")) is NoticeClass.EXECUTED
    readiness = record(4, AuditEvent.ALERT_RAISED, alert_id="responder:readiness")
    assert classify(readiness) is NoticeClass.READINESS
    stuck = record(5, AuditEvent.ALERT_RAISED, action_id="act-9")
    assert classify(stuck) is NoticeClass.FAILED
    assert classify(record(6, AuditEvent.ALERT_RAISED, alert_id="responder:x-new-user")) is None
    assert classify(record(7, AuditEvent.ACTION_PLANNED)) is None
    assert classify(record(8, AuditEvent.NOTIFY_FAILED)) is None


def test_a_comment_names_the_audit_records_and_carries_its_marker() -> None:
    text = comment_text(hostile_notice(), "ntc-abc")
    assert "audit record #7" in text and text.endswith("[ntc-abc]")


BASE = {"RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true", "RESPONDER_QUEUE": "memory"}


@pytest.mark.parametrize(
    "url",
    [
        "http://prod-12.westeurope.logic.azure.com/workflows/1/triggers/manual/paths/invoke",
        "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/def",
        "https://evil.example/logic.azure.com/workflows/1",
        "https://prod-12.westeurope.logic.azure.com.evil.example/workflows/1",
    ],
)
def test_a_webhook_url_off_the_workflows_hosts_is_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match="NOTICE_TEAMS_WEBHOOK_URL") as caught:
        Settings.from_env({**BASE, "NOTICE_TEAMS_WEBHOOK_URL": url})
    assert url not in str(caught.value), "the URL carries its signature: never echoed"


@pytest.mark.parametrize(
    "url",
    [
        "https://prod-12.westeurope.logic.azure.com:443/workflows/1/triggers/manual/paths/invoke?sig=s",
        "https://default1a2b.3c.environment.api.powerplatform.com:443/powerautomate/automations/"
        "direct/workflows/1/triggers/manual/paths/invoke?sig=s",
    ],
)
def test_workflows_urls_are_accepted(url: str) -> None:
    settings = Settings.from_env({**BASE, "NOTICE_TEAMS_WEBHOOK_URL": url})
    assert settings.notice_teams_webhook_url is not None


def test_mail_routes_and_their_mistakes() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "NOTICE_MAIL_SENDER": "responder@contoso.com",
            "NOTICE_MAIL_ROUTES": "held,failed=oncall@contoso.com;*=soc@contoso.com",
        }
    )
    assert settings.mail_routes[NoticeClass.HELD] == ("oncall@contoso.com", "soc@contoso.com")
    assert settings.mail_routes[NoticeClass.EXECUTED] == ("soc@contoso.com",)
    for routes, problem in (
        ("paused=a@contoso.com", "paused"),
        ("held=not-an-address", "not-an-address"),
        ("held", "classes=addresses"),
    ):
        with pytest.raises(ConfigError, match="NOTICE_MAIL_ROUTES") as caught:
            Settings.from_env(
                {**BASE, "NOTICE_MAIL_SENDER": "r@contoso.com", "NOTICE_MAIL_ROUTES": routes}
            )
        assert problem in str(caught.value)
    with pytest.raises(ConfigError, match="NOTICE_MAIL_SENDER and NOTICE_MAIL_ROUTES"):
        Settings.from_env({**BASE, "NOTICE_MAIL_ROUTES": "held=a@contoso.com"})
    with pytest.raises(ConfigError, match="NOTICE_TEAMS_EVENTS"):
        Settings.from_env({**BASE, "NOTICE_TEAMS_EVENTS": "held,everything"})


# --- the sender, with fakes that record --------------------------------------------------


class MemoryRows:
    def __init__(self) -> None:
        self.states: dict[str, DeliveryState] = {}
        self.stored: DispatchCursor | None = None
        self.version = 0

    async def cursor(self) -> DispatchCursor | None:
        return self.stored

    async def save_cursor(self, cursor: DispatchCursor) -> str | None:
        if (self.stored.etag if self.stored else "") != cursor.etag:
            return None
        self.version += 1
        self.stored = DispatchCursor(cursor.done, cursor.planned, str(self.version))
        return str(self.version)

    async def delivery(self, task_id: str) -> DeliveryState | None:
        return self.states.get(task_id)

    async def claim(self, task_id: str) -> Claim | None:
        before = self.states.get(task_id)
        if before not in (None, DeliveryState.RETRY):
            return None
        self.states[task_id] = DeliveryState.SENDING
        return Claim.FIRST if before is None else Claim.AGAIN

    async def settle(self, task_id: str, state: DeliveryState) -> None:
        self.states[task_id] = state


class MemoryQueue:
    def __init__(self) -> None:
        self.sent: list[NoticeTask] = []
        self.scheduled: list[tuple[datetime, NoticeTask]] = []

    async def send(self, tasks: list[NoticeTask]) -> None:
        self.sent += tasks

    async def schedule(self, tasks: list[NoticeTask], at: datetime) -> None:
        self.scheduled += [(at, t) for t in tasks]


class Teams:
    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.posted: list[dict[str, Any]] = []

    async def post(self, card: dict[str, Any]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.posted.append(card)

    async def close(self) -> None:
        return None


def sender(
    teams: Teams, rows: MemoryRows, queue: MemoryQueue, now: list[datetime]
) -> tuple[NoticeSender, MemoryAuditStore]:
    store = MemoryAuditStore()
    config = NoticeConfig(teams_events=frozenset(NoticeClass), give_up_after=timedelta(minutes=10))
    return NoticeSender(
        Channels(teams=teams), rows, queue, AuditChain(store), config, lambda: now[0]
    ), store


def teams_task() -> NoticeTask:
    return NoticeTask(id="ntc-1", channel=Channel.TEAMS, notice=hostile_notice())


async def test_a_throttled_post_is_retried_after_retry_after_then_sent_once() -> None:
    teams, rows, queue, now = (
        Teams(TransientError("429", status=429, retry_after=42.0)),
        MemoryRows(),
        MemoryQueue(),
        [T0],
    )
    notices, store = sender(teams, rows, queue, now)
    assert await notices.deliver(teams_task()) == "retrying"
    [(at, retry)] = queue.scheduled
    assert at == T0 + timedelta(seconds=42) and retry.retry == 1
    assert await notices.deliver(retry) == "sent"
    # A redelivery of either message sends nothing more.
    assert await notices.deliver(retry) == "duplicate"
    assert await notices.deliver(teams_task()) == "duplicate"
    assert len(teams.posted) == 1 and store.records == {}


async def test_a_notice_failing_past_the_give_up_time_is_audited_not_raised() -> None:
    teams = Teams(*[TransientError("503", status=503)] * 10)
    rows, queue, now = MemoryRows(), MemoryQueue(), [T0]
    notices, store = sender(teams, rows, queue, now)
    task = teams_task()
    outcomes = []
    while True:
        outcome = await notices.deliver(task)
        outcomes.append(outcome)
        if outcome != "retrying":
            break
        at, task = queue.scheduled[-1]
        now[0] = at
    assert outcomes[-1] == "failed" and teams.posted == []
    [failed] = store.records.values()
    assert failed.entry.event is AuditEvent.NOTIFY_FAILED
    assert failed.entry.result["channel"] == "teams" and "gave up" in failed.entry.result["error"]
    assert rows.states["ntc-1"] is DeliveryState.FAILED


async def test_a_refused_post_is_audited_at_once() -> None:
    teams, rows, queue, now = (
        Teams(PermanentError("400", status=400)),
        MemoryRows(),
        MemoryQueue(),
        [T0],
    )
    notices, store = sender(teams, rows, queue, now)
    assert await notices.deliver(teams_task()) == "failed"
    assert queue.scheduled == [] and len(store.records) == 1


async def test_a_post_cut_off_mid_send_is_not_repeated() -> None:
    teams, rows, queue, now = Teams(), MemoryRows(), MemoryQueue(), [T0]
    notices, store = sender(teams, rows, queue, now)
    rows.states["ntc-1"] = DeliveryState.SENDING  # an earlier worker died while posting
    assert await notices.deliver(teams_task()) == "failed"
    assert teams.posted == []
    [failed] = store.records.values()
    assert "stopped while sending" in failed.entry.result["error"]


async def test_the_dispatcher_starts_at_the_present_and_repeats_an_interrupted_pass_exactly() -> (
    None
):
    store, rows, queue = MemoryAuditStore(), MemoryRows(), MemoryQueue()
    chain = AuditChain(store)
    await chain.append(
        AuditEntry(
            event=AuditEvent.ACTION_EXECUTED,
            actor=Actor(),
            kind="disable_account",
            target="old@b.cd",
        )
    )
    config = NoticeConfig(teams_events=frozenset(NoticeClass))
    dispatcher = NoticeDispatcher(store, rows, queue, config)
    await dispatcher.run()
    assert queue.sent == []  # history is not notified
    await chain.append(
        AuditEntry(
            event=AuditEvent.ACTION_EXECUTED,
            actor=Actor(),
            kind="disable_account",
            target="new@b.cd",
            incident_id="1",
        )
    )
    # A pass planned (2..2) and interrupted before it finished: the rerun covers exactly it,
    # even though the trail grew meanwhile, so its ids come out the same.
    assert rows.stored is not None
    rows.stored = DispatchCursor({"chain": 1}, {"chain": 2}, rows.stored.etag)
    await chain.append(
        AuditEntry(
            event=AuditEvent.ACTION_EXECUTED,
            actor=Actor(),
            kind="disable_account",
            target="later@b.cd",
            incident_id="2",
        )
    )
    report = await dispatcher.run()
    assert report.as_dict()["range"] == [2, 2]
    [first] = queue.sent
    assert first.notice.items[0].target == "new@b.cd"
    report = await dispatcher.run()
    assert report.as_dict()["range"] == [3, 3]
    assert queue.sent[-1].notice.items[0].target == "later@b.cd"
    assert await dispatcher.run() and len(queue.sent) == 2


async def test_a_folded_mail_reaches_the_recipients_of_every_class_it_stands_for() -> None:
    store, rows, queue = MemoryAuditStore(), MemoryRows(), MemoryQueue()
    routes = {NoticeClass.EXECUTED: ("soc@contoso.com",), NoticeClass.HELD: ("oncall@contoso.com",)}
    config = NoticeConfig(mail_routes=routes, max_per_minute=2)
    dispatcher = NoticeDispatcher(store, rows, queue, config)
    records = [executed(i, "disable_account", "a@b.cd", incident_id=str(i)) for i in range(1, 4)]
    records.append(
        record(4, AuditEvent.ACTION_HELD, kind="disable_account", target="a@b.cd", incident_id="4")
    )
    tasks = dispatcher.tasks_for(records, "0-4")
    assert [t.recipients for t in tasks] == [
        ("soc@contoso.com",),
        ("soc@contoso.com", "oncall@contoso.com"),
    ]


async def test_without_any_channel_the_dispatcher_keeps_up_without_reading() -> None:
    store, rows, queue = MemoryAuditStore(), MemoryRows(), MemoryQueue()
    chain = AuditChain(store)
    dispatcher = NoticeDispatcher(store, rows, queue, NoticeConfig())
    await dispatcher.run()
    await chain.append(AuditEntry(event=AuditEvent.ACTION_FAILED, actor=Actor(), kind="block_ip"))
    report = await dispatcher.run()
    assert report.records == 0 and queue.sent == []
    assert rows.stored is not None and rows.stored.done == {"chain": 1}


async def test_a_record_of_a_lower_chain_in_the_same_second_is_not_left_behind() -> None:
    """Positions order chains only to the second: a record another writer appends to a lower
    chain in the second of the last pass's head has a lower position than that head. The
    cursor counts each chain on its own, so the next pass still finds it."""
    store, rows, queue = MemoryAuditStore(chains=("c01", "c05")), MemoryRows(), MemoryQueue()
    config = NoticeConfig(teams_events=frozenset(NoticeClass))
    dispatcher = NoticeDispatcher(store, rows, queue, config)
    await dispatcher.run()  # starts at the present: an empty trail
    second = 220_000_000

    async def land(chain: str, lane: int, target: str) -> None:
        entry = AuditEntry(
            event=AuditEvent.ACTION_EXECUTED,
            actor=Actor(),
            kind="disable_account",
            target=target,
            incident_id=target,
        )
        position = lane_position(second, lane, 1)
        await store.insert_all([chain_entry(1, GENESIS_HASH, entry, chain, position)], [])

    await land("c05", 5, "first@b.cd")
    await dispatcher.run()
    await land("c01", 1, "behind@b.cd")  # lower position than the head the pass saw
    await dispatcher.run()
    assert [t.notice.items[0].target for t in queue.sent] == ["first@b.cd", "behind@b.cd"]
