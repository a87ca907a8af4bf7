"""Audit queries on in-memory fakes: filters, paging with signed continuation tokens, selective
queries that read one index partition, and the index kept by the chain's listener (exports:
test_audit_export.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.audit import AuditChain
from shared.audit_query import (
    CLOCK_SLACK,
    AuditFilter,
    AuditQuery,
    index_entries,
)
from shared.errors import InvalidInput
from shared.models import Actor, AuditEntry, AuditEvent, AuditRecord
from shared.ports import IndexDimension, IndexEntry
from tests.fakes import MemoryAuditStore

KEY = b"k" * 32
START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
ADELE = "adele.vance@contoso.onmicrosoft.com"
MEGAN = "megan.bowen@contoso.onmicrosoft.com"
ATTACKER = "185.220.101.47/32"


class CountingStore(MemoryAuditStore):
    """The in-memory audit store, with point reads and walks counted."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[int] = []
        self.walked = 0
        self.walks = 0

    async def get(self, seq: int) -> AuditRecord | None:
        self.gets.append(seq)
        return self.records.get(seq)

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        self.walks += 1
        for seq in sorted(self.records, reverse=True):
            if before_seq is None or seq < before_seq:
                self.walked += 1
                yield self.records[seq]

    def reset_counts(self) -> None:
        self.gets, self.walked, self.walks = [], 0, 0


class MemoryIndex:
    """An `AuditIndex` in a dict, remembering which partitions were read."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[IndexDimension, str], set[int]] = {}
        self.read: list[tuple[IndexDimension, str]] = []

    async def add(self, entries: list[IndexEntry]) -> None:
        for entry in entries:
            self.partitions.setdefault((entry.dimension, entry.value), set()).add(entry.seq)

    async def seqs(
        self,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> AsyncIterator[int]:
        self.read.append((dimension, value))
        for seq in sorted(self.partitions.get((dimension, value), ()), reverse=True):
            if (before_seq is None or seq < before_seq) and (after_seq is None or seq > after_seq):
                yield seq


def entry(
    n: int,
    *,
    actor: str = "m365-responder",
    kind: str | None = "disable_account",
    target: str | None = ADELE,
    incident: str | None = None,
    alert: str | None = None,
    event: AuditEvent = AuditEvent.ACTION_EXECUTED,
    reason: str = "drill",
    at: datetime | None = None,
) -> AuditEntry:
    return AuditEntry(
        event=event,
        actor=Actor(kind="app" if actor == "m365-responder" else "engineer", name=actor),
        action_id=f"act-{n}",
        kind=kind,
        target=target,
        incident_id=incident,
        alert_id=alert,
        reason=reason,
        result={"n": n},
        at=at or START + timedelta(minutes=n),
    )


async def trail(
    entries: Iterable[AuditEntry],
) -> tuple[CountingStore, MemoryIndex, AuditQuery]:
    store, index = CountingStore(), MemoryIndex()
    query = AuditQuery(store, index, KEY)
    await AuditChain(store, listeners=[query.index_records]).append_all(list(entries))
    store.reset_counts()
    return store, index, query


async def every_page(
    query: AuditQuery, flt: AuditFilter, limit: int
) -> tuple[list[AuditRecord], int]:
    found: list[AuditRecord] = []
    page = await query.page(flt, limit)
    pages = 1
    found += page.records
    while page.continuation:
        assert len(page.records) == limit
        page = await query.page(flt, limit, page.continuation)
        pages += 1
        found += page.records
    return found, pages


async def collect(records: AsyncIterator[AuditRecord]) -> list[AuditRecord]:
    return [record async for record in records]


# Filters -----------------------------------------------------------------------------------


def test_filters_parse_query_string_values() -> None:
    flt = AuditFilter.from_params(
        {
            "since": "2025-03-01T08:00:00Z",
            "until": "2025-03-02T08:00:00",
            "actor": " SOC.Lead@Contoso.com ",
            "target": "185.220.101.47",
            "outcome": "action.executed",
            "kind": "Disable_Account",
            "incident": "SOC-2024-0511",
            "alert": "",
        }
    )
    assert flt.since == START
    assert flt.until == START + timedelta(days=1)  # no offset given: UTC
    assert flt.actor == "soc.lead@contoso.com"
    assert flt.target == ATTACKER
    assert flt.kind == "disable_account" and flt.outcome == "action.executed"
    assert flt.incident == "SOC-2024-0511"  # ids are compared exactly
    assert flt.alert is None  # empty means unset


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"colour": "red"}, "unknown parameter 'colour'"),
        ({"since": "yesterday"}, "since must be an ISO 8601 date-time"),
        ({"until": "2025-13-01"}, "until must be an ISO 8601 date-time"),
        ({"since": "2025-03-02", "until": "2025-03-01"}, "since must not be later than until"),
        ({"target": "x" * 257}, "target is longer than 256 characters"),
        ({"since": "2" * 300}, "since is longer than 256 characters"),
        ({"kind": "format_disk"}, "unknown kind 'format_disk'"),
        ({"outcome": "succeeded"}, "unknown outcome 'succeeded'"),
    ],
)
def test_bad_filters_are_refused_with_a_clear_message(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        AuditFilter.from_params(params)


def test_the_filter_matches_the_records_content() -> None:
    record = entry(1, actor="Soc.Lead@contoso.com", target=ADELE, incident="INC-1")
    assert AuditFilter(actor="soc.lead@CONTOSO.com", incident="INC-1").matches(record)
    assert not AuditFilter(incident="inc-1").matches(record)
    assert AuditFilter(since=record.at, until=record.at + timedelta(seconds=1)).matches(record)
    assert not AuditFilter(until=record.at).matches(record)  # until is exclusive


def test_index_entries_cover_each_dimension_the_record_has() -> None:
    [record] = asyncio.run(AuditChain(MemoryAuditStore()).append_all([entry(1, actor="A@B.com")]))
    filed = {(e.dimension, e.value) for e in index_entries(record)}
    assert filed == {
        (IndexDimension.ACTOR, "a@b.com"),
        (IndexDimension.KIND, "disable_account"),
        (IndexDimension.TARGET, ADELE),
        (IndexDimension.OUTCOME, "action.executed"),
    }


# Paging and continuation tokens ------------------------------------------------------------


async def test_pages_run_newest_first_and_end_without_a_token() -> None:
    _, _, query = await trail(entry(n) for n in range(1, 8))
    first = await query.page(AuditFilter(), limit=3)
    assert [r.seq for r in first.records] == [7, 6, 5] and first.continuation
    second = await query.page(AuditFilter(), 3, first.continuation)
    third = await query.page(AuditFilter(), 3, second.continuation)
    assert [r.seq for r in second.records] == [4, 3, 2]
    assert [r.seq for r in third.records] == [1] and third.continuation is None


@pytest.mark.parametrize("limit", [0, 201, -1])
async def test_the_page_size_is_bounded(limit: int) -> None:
    _, _, query = await trail([entry(1)])
    with pytest.raises(InvalidInput, match="limit must be a whole number from 1 to 200"):
        await query.page(AuditFilter(), limit)


def _reencoded(token: str, **changes: object) -> str:
    payload, signature = token.split(".")
    state = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    state.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(state).encode()).rstrip(b"=").decode()
    return f"{raw}.{signature}"


def _flipped(token: str, at: int) -> str:
    char = "A" if token[at] != "A" else "B"
    return token[:at] + char + token[at + 1 :]


async def test_tampered_foreign_and_garbage_tokens_are_refused() -> None:
    _, _, query = await trail(entry(n, target=ADELE if n % 2 else MEGAN) for n in range(1, 30))
    flt = AuditFilter(target=ADELE)
    token = (await query.page(flt, 2)).continuation
    assert token is not None
    assert (await query.page(flt, 2, token)).records  # the genuine token works
    dot = token.index(".")
    bad = [
        _reencoded(token, s=29),  # an earlier position, signature kept
        _reencoded(token, f="0" * 32),
        _flipped(token, 1),
        _flipped(token, dot + 2),
        token + "A",
        token.replace(".", ""),
        "garbage",
        "a.b.c",
        ".",
        "ü.ü",
        "x" * 5000,
        "%%%.%%%",
    ]
    for candidate in bad:
        with pytest.raises(InvalidInput, match="^invalid continuation token$"):
            await query.page(flt, 2, candidate)
    with pytest.raises(InvalidInput, match="invalid continuation token"):
        await query.page(AuditFilter(target=MEGAN), 2, token)  # another filter's token
    with pytest.raises(InvalidInput, match="invalid continuation token"):
        await AuditQuery(CountingStore(), MemoryIndex(), b"other").page(flt, 2, token)


# Paging covers every match exactly once: a property -----------------------------------------

ACTORS = ["m365-responder", "Soc.Lead@contoso.com", "ana@contoso.com"]
TARGETS = [ADELE, MEGAN, ATTACKER, None]
INCIDENTS = ["INC-1", "INC-2", None]
ALERTS = ["a-1", "a-2", None]
KINDS = ["disable_account", "revoke_sessions", "block_ip", None]
EVENTS = list(AuditEvent)

random_entry = st.builds(
    dict,
    actor=st.sampled_from(ACTORS),
    target=st.sampled_from(TARGETS),
    incident=st.sampled_from(INCIDENTS),
    alert=st.sampled_from(ALERTS),
    kind=st.sampled_from(KINDS),
    event=st.sampled_from(EVENTS),
    # seconds: appends land out of time order (within CLOCK_SLACK)
    jitter=st.sampled_from(range(-150, 151, 30)),
)


CHOICES: dict[str, list[str]] = {
    "actor": [a.upper() for a in ACTORS],
    "target": [t for t in TARGETS if t],
    "incident": [i for i in INCIDENTS if i],
    "alert": [a for a in ALERTS if a],
    "kind": [k for k in KINDS if k],
    "outcome": [str(e) for e in EVENTS],
}


@st.composite
def random_filter(draw: st.DrawFn) -> dict[str, object]:
    """Up to two value filters (more rarely match anything) and an optional time range."""
    names = draw(st.lists(st.sampled_from(sorted(CHOICES)), max_size=2, unique=True))
    raw: dict[str, object] = dict.fromkeys(CHOICES)
    raw.update({name: draw(st.sampled_from(CHOICES[name])) for name in names})
    bounds = sorted(draw(st.lists(st.integers(-5, 65), min_size=2, max_size=2)))
    raw["since"] = draw(st.sampled_from([None, bounds[0]]))
    raw["until"] = draw(st.sampled_from([None, bounds[1]]))
    return raw


def _expected(records: list[AuditRecord], raw: dict[str, object]) -> list[int]:
    """The matches, worked out independently of the service, newest first."""

    def keep(e: AuditEntry) -> bool:
        checks = [
            raw["actor"] is None or e.actor.name.lower() == str(raw["actor"]).lower(),
            raw["target"] is None or e.target == raw["target"],
            raw["incident"] is None or e.incident_id == raw["incident"],
            raw["alert"] is None or e.alert_id == raw["alert"],
            raw["kind"] is None or e.kind == raw["kind"],
            raw["outcome"] is None or str(e.event) == raw["outcome"],
            raw["since"] is None or e.at >= START + timedelta(minutes=int(str(raw["since"]))),
            raw["until"] is None or e.at < START + timedelta(minutes=int(str(raw["until"]))),
        ]
        return all(checks)

    return [r.seq for r in sorted(records, key=lambda r: -r.seq) if keep(r.entry)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(random_entry, min_size=5, max_size=60),
    raw=random_filter(),
    limit=st.integers(1, 9),
)
def test_paging_returns_every_match_exactly_once(
    entries: list[dict[str, object]], raw: dict[str, object], limit: int
) -> None:
    async def run() -> None:
        made = [
            entry(
                n,
                actor=str(e["actor"]),
                target=e["target"],  # type: ignore[arg-type]
                incident=e["incident"],  # type: ignore[arg-type]
                alert=e["alert"],  # type: ignore[arg-type]
                kind=e["kind"],  # type: ignore[arg-type]
                event=e["event"],  # type: ignore[arg-type]
                at=START + timedelta(minutes=n, seconds=int(str(e["jitter"]))),
            )
            for n, e in enumerate(entries, start=1)
        ]
        store, _, query = await trail(made)
        times = {
            name: START + timedelta(minutes=int(str(raw[name])))
            for name in ("since", "until")
            if raw[name] is not None
        }
        values = {k: v for k, v in raw.items() if k not in ("since", "until") and v is not None}
        flt = AuditFilter(**values, **times)  # type: ignore[arg-type]
        expected = _expected(list(store.records.values()), raw)
        found, pages = await every_page(query, flt, limit)
        assert [r.seq for r in found] == expected
        assert pages <= len(expected) // limit + 1
        assert [r.seq for r in await collect(query.matching(flt))] == expected

    asyncio.run(run())


# Selective queries read their partition only ------------------------------------------------


def _busy_trail() -> list[AuditEntry]:
    """1,000 records; Megan is the target of three, incident INC-9 has five."""
    made = []
    for n in range(1, 1001):
        target = MEGAN if n in (10, 500, 990) else ADELE
        incident = "INC-9" if n in (11, 12, 501, 502, 991) else f"INC-{n % 7}"
        made.append(entry(n, target=target, incident=incident))
    return made


async def test_a_target_query_reads_only_its_partition_and_those_records() -> None:
    store, index, query = await trail(_busy_trail())
    page = await query.page(AuditFilter(target=MEGAN.upper()))
    assert [r.seq for r in page.records] == [990, 500, 10] and page.continuation is None
    # Read twice: first for the account's other names (there are none here), then walked.
    assert set(index.read) == {(IndexDimension.TARGET, MEGAN)}
    assert sorted(store.gets) == [10, 500, 990] and store.walks == 0


async def test_an_incident_query_with_more_filters_reads_the_incident_partition() -> None:
    store, index, query = await trail(_busy_trail())
    flt = AuditFilter(incident="INC-9", actor="M365-Responder", outcome="action.executed")
    found = await collect(query.matching(flt))
    assert [r.seq for r in found] == [991, 502, 501, 12, 11]
    assert index.read == [(IndexDimension.INCIDENT, "INC-9")]
    assert len(store.gets) == 5 and store.walks == 0


async def test_a_page_of_a_large_partition_reads_about_one_page_of_records() -> None:
    store, _, query = await trail(_busy_trail())
    page = await query.page(AuditFilter(actor="m365-responder"), limit=20)
    assert [r.seq for r in page.records] == list(range(1000, 980, -1))
    assert len(store.gets) == 20 and store.walks == 0


async def test_a_time_range_stops_the_walk_instead_of_reading_the_whole_trail() -> None:
    store, _, query = await trail(entry(n) for n in range(1, 1001))
    since, until = START + timedelta(minutes=100), START + timedelta(minutes=110)
    found = await collect(query.matching(AuditFilter(since=since, until=until)))
    assert [r.seq for r in found] == list(range(109, 99, -1))
    slack = CLOCK_SLACK // timedelta(minutes=1)
    # A bisection (a few point reads) finds where the range ends; the walk stops past its start.
    assert len(store.gets) <= 12
    assert store.walked <= 10 + 2 * slack + 2


async def test_records_landing_slightly_out_of_time_order_are_still_found() -> None:
    # Record 2 was stamped before record 1 but appended after it (concurrent writers).
    late = [entry(1, at=START + timedelta(minutes=2)), entry(2, at=START)]
    _, _, query = await trail(late + [entry(n) for n in range(3, 40)])
    since = await collect(query.matching(AuditFilter(since=START + timedelta(minutes=1))))
    assert [r.seq for r in since][-2:] == [3, 1]
    until = await collect(query.matching(AuditFilter(until=START + timedelta(minutes=1))))
    assert [r.seq for r in until] == [2]


async def test_the_index_is_only_a_pointer_the_content_decides() -> None:
    store, index, query = await trail([entry(1, target=ADELE), entry(2, target=ADELE)])
    # A wrong entry (record 2 is not Megan's) and one pointing at a record that does not exist.
    await index.add(
        [IndexEntry(IndexDimension.TARGET, MEGAN, seq, START) for seq in (2, 77)]
        + [IndexEntry(IndexDimension.TARGET, ADELE, 77, START)]
    )
    assert (await query.page(AuditFilter(target=MEGAN))).records == []
    assert [r.seq for r in (await query.page(AuditFilter(target=ADELE))).records] == [2, 1]


# The index is kept by the chain and rebuilt from it -----------------------------------------


async def test_an_index_failure_never_fails_the_append(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(records: list[AuditRecord]) -> None:
        raise ConnectionError("index table unreachable")

    heard: list[int] = []

    async def listener(records: list[AuditRecord]) -> None:
        heard.extend(r.seq for r in records)

    store = MemoryAuditStore()
    chain = AuditChain(store, listeners=[broken, listener])
    with caplog.at_level(logging.ERROR, logger="shared.audit"):
        records = await chain.append_all([entry(1), entry(2)])
    assert [r.seq for r in records] == [1, 2] and sorted(store.records) == [1, 2]
    assert heard == [1, 2]
    assert "audit listener failed for records 1..2" in caplog.text
    assert (await chain.verify()).ok


async def test_reindex_rebuilds_the_same_answers_from_the_chain() -> None:
    store, index, query = await trail(_busy_trail()[:300])
    flt = AuditFilter(incident="INC-3")
    before = [r.seq for r in await collect(query.matching(flt))]
    index.partitions.clear()
    assert await collect(query.matching(flt)) == []
    rebuilt = await query.reindex()
    assert rebuilt.records == 300 and rebuilt.entries == 300 * 5
    assert [r.seq for r in await collect(query.matching(flt))] == before and before
