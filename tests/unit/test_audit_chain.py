"""The hash chain: appends link records, verification finds the first broken link."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared import audit
from shared.audit import (
    GENESIS_HASH,
    LANE_CHAINS,
    LANE_POSITION_FLOOR,
    LANE_SLOTS,
    MAX_APPEND_ATTEMPTS,
    MAX_BODY_CHARS,
    POSITION_EPOCH_S,
    SEQ_SLOTS,
    AuditChain,
    CheckpointCheck,
    canonical_json,
    chain_entry,
    chain_of_position,
    chain_seq_of,
    checkpoint_from_json,
    checkpoint_json,
    entry_body,
    lane_of,
    lane_position,
    record_hash,
    second_of,
)
from shared.errors import TransientError
from shared.models import LEGACY_CHAIN, Actor, AuditEntry, AuditEvent, AuditRecord
from shared.ports import AppendConflict, ChainHead, Checkpoint, IndexDimension, IndexEntry
from tests.fakes import MemoryAnchor, MemoryAuditStore


def entry(n: int, **extra: object) -> AuditEntry:
    extra.setdefault("event", AuditEvent.ACTION_EXECUTED)
    return AuditEntry(
        actor=Actor(),
        action_id=f"act-{n}",
        kind="disable_account",
        target="adele.vance@contoso.onmicrosoft.com",
        reason="drill",
        **extra,  # type: ignore[arg-type]
    )


async def test_appends_link_each_record_to_the_previous() -> None:
    chain = AuditChain(MemoryAuditStore())
    first = await chain.append(entry(1))
    second, third = await chain.append_all([entry(2), entry(3)])
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash and third.prev_hash == second.hash
    assert first.hash == record_hash(1, GENESIS_HASH, entry_body(first.entry))
    report = await chain.verify()
    assert report.ok and report.records_checked == 3 and report.head_seq == 3


async def test_verify_reports_the_first_record_whose_content_changed() -> None:
    store = MemoryAuditStore()
    chain = AuditChain(store)
    await chain.append_all([entry(n) for n in range(1, 6)])
    changed = store.records[2].entry.model_copy(update={"target": "someone.else@contoso.com"})
    store.records[2] = store.records[2].model_copy(update={"entry": changed})
    report = await AuditChain(store).verify()
    assert not report.ok
    assert report.first_broken_seq == 2
    assert "does not match its hash" in (report.problem or "")


async def test_verify_detects_a_rehashed_record_by_the_broken_back_link() -> None:
    store = MemoryAuditStore()
    chain = AuditChain(store)
    await chain.append_all([entry(n) for n in range(1, 5)])
    forged = store.records[3].entry.model_copy(update={"reason": "nothing to see"})
    rehashed = record_hash(3, store.records[3].prev_hash, entry_body(forged))
    store.records[3] = store.records[3].model_copy(
        update={"entry": forged, "hash": rehashed, "body": entry_body(forged)}
    )
    report = await AuditChain(store).verify()
    assert report.first_broken_seq == 4
    assert "does not link" in (report.problem or "")


@pytest.mark.parametrize(("removed", "broken_at"), [(3, 3), (1, 1)])
async def test_verify_detects_missing_records(removed: int, broken_at: int) -> None:
    store = MemoryAuditStore()
    await AuditChain(store).append_all([entry(n) for n in range(1, 6)])
    del store.records[removed]
    report = await AuditChain(store).verify()
    assert report.first_broken_seq == broken_at
    assert "missing" in (report.problem or "")


async def test_empty_chain_verifies() -> None:
    report = await AuditChain(MemoryAuditStore()).verify()
    assert report.ok and report.records_checked == 0 and report.head_seq is None


async def test_concurrent_writers_race_by_retrying_never_by_overwriting() -> None:
    store = MemoryAuditStore()
    writers = [AuditChain(store) for _ in range(4)]

    async def write(chain: AuditChain, base: int) -> None:
        for n in range(10):
            await chain.append(entry(base + n))
            await asyncio.sleep(0)

    await asyncio.gather(*(write(chain, i * 100) for i, chain in enumerate(writers)))
    assert sorted(store.records) == list(range(1, 41))
    assert store.conflicts > 0
    assert (await AuditChain(store).verify()).ok


async def test_batches_over_one_hundred_are_split_and_stay_in_order() -> None:
    store = MemoryAuditStore()
    records = await AuditChain(store).append_all([entry(n) for n in range(250)])
    assert [r.seq for r in records] == list(range(1, 251))
    assert (await AuditChain(store).verify()).ok


async def test_oversized_results_are_replaced_by_their_digest() -> None:
    huge = entry(1, result={"before": {"blob": "x" * (MAX_BODY_CHARS * 2)}})
    record = await AuditChain(MemoryAuditStore()).append(huge)
    assert record.entry.result["truncated"] is True
    assert len(record.entry.result["sha256"]) == 64
    assert len(entry_body(record.entry)) <= MAX_BODY_CHARS


async def test_verify_detects_stored_text_that_is_not_the_canonical_content() -> None:
    store = MemoryAuditStore()
    await AuditChain(store).append_all([entry(n) for n in range(1, 4)])
    original = store.records[2]
    padded = original.body.replace("{", '{"note":"added later",', 1)
    rehashed = record_hash(2, original.prev_hash, padded)
    store.records[2] = original.model_copy(update={"body": padded, "hash": rehashed})
    report = await AuditChain(store).verify()
    assert report.first_broken_seq == 2


# the verification report, word for word (the CLI and GET /api/audit/verify show it) ---------


async def chain_of(n: int) -> MemoryAuditStore:
    store = MemoryAuditStore()
    await AuditChain(store).append_all([entry(k) for k in range(1, n + 1)])
    return store


def unanchored(head: AuditRecord) -> dict[str, object]:
    """The report's chain and checkpoint part for one legacy chain and no anchor."""
    chains = {"chain": {"seq": head.chain_seq, "hash": head.hash, "position": head.seq}}
    return {"chains": chains, "checkpoints_checked": 0, "checkpoint": None}


async def test_a_verified_chain_reports_its_head() -> None:
    store = await chain_of(3)
    report = await AuditChain(store).verify()
    assert report.as_dict() == {
        "verified": True,
        "records_checked": 3,
        "head_seq": 3,
        "head_hash": store.records[3].hash,
        "first_broken_seq": None,
        "problem": None,
        **unanchored(store.records[3]),
    }


@pytest.mark.parametrize(
    ("removed", "broken_at", "problem"),
    [
        ((3, 4), 3, "records 3..4 are missing"),
        ((1,), 1, "records 1..1 are missing"),
        ((1, 2), 1, "records 1..2 are missing"),
    ],
)
async def test_missing_records_are_named(
    removed: tuple[int, ...], broken_at: int, problem: str
) -> None:
    store = await chain_of(6)
    for seq in removed:
        del store.records[seq]
    report = await AuditChain(store).verify()
    assert report.as_dict() == {
        "verified": False,
        "records_checked": 6 - len(removed),
        "head_seq": 6,
        "head_hash": store.records[6].hash,
        "first_broken_seq": broken_at,
        "problem": problem,
        **unanchored(store.records[6]),
    }


async def test_the_lowest_broken_record_is_reported_and_every_problem_is_worded() -> None:
    store = await chain_of(6)
    for seq in (5, 2):
        changed = store.records[seq].entry.model_copy(update={"reason": "edited"})
        store.records[seq] = store.records[seq].model_copy(update={"entry": changed})
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (
        2,
        "record 2 content does not match its hash",
    )
    assert report.records_checked == 6 and report.head_seq == 6


async def test_a_broken_link_names_both_records() -> None:
    store = await chain_of(4)
    record = store.records[4]
    store.records[4] = record.model_copy(
        update={"prev_hash": "f" * 64, "hash": record_hash(4, "f" * 64, record.body)}
    )
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (4, "record 4 does not link to record 3")


async def test_a_chain_that_does_not_start_from_the_genesis_hash_is_broken() -> None:
    store = MemoryAuditStore()
    first = chain_entry(1, "a" * 64, entry(1))
    store.records[1] = first
    store.records[2] = chain_entry(2, first.hash, entry(2))
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (
        1,
        "record 1 does not start from the genesis hash",
    )


async def test_a_chain_starting_at_a_later_number_is_missing_its_beginning() -> None:
    store = MemoryAuditStore()
    store.records[3] = chain_entry(3, GENESIS_HASH, entry(3))
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (1, "records 1..2 are missing")


# the oversized-result boundary ---------------------------------------------------------------


def padded(total: int) -> AuditEntry:
    """An entry whose canonical text is exactly `total` characters long."""
    base = entry(1, result={"pad": ""})
    short = len(canonical_json(base.model_dump(mode="json")))
    return entry(1, result={"pad": "y" * (total - short)})


def test_a_body_of_exactly_the_limit_is_kept_whole() -> None:
    whole = padded(MAX_BODY_CHARS)
    assert entry_body(whole) == canonical_json(whole.model_dump(mode="json"))


def test_one_character_over_the_limit_keeps_only_the_digest_of_the_result() -> None:
    over = padded(MAX_BODY_CHARS + 1)
    body = json.loads(entry_body(over))
    result = canonical_json(over.result)
    assert body["result"] == {
        "truncated": True,
        "chars": len(result),
        "sha256": hashlib.sha256(result.encode()).hexdigest(),
    }
    assert body["reason"] == over.reason and body["target"] == over.target


# listeners and write races -------------------------------------------------------------------


async def test_listeners_hear_each_append_once_and_cannot_fail_it() -> None:
    heard: list[list[int]] = []

    async def broken(records: list[AuditRecord]) -> None:
        raise RuntimeError("index table down")

    async def listener(records: list[AuditRecord]) -> None:
        heard.append([r.seq for r in records])

    chain = AuditChain(MemoryAuditStore(), listeners=[broken, listener])
    await chain.append_all([entry(1), entry(2)])
    await chain.append(entry(3))
    await chain.append_all([])
    assert heard == [[1, 2], [3]]


class AlwaysTaken(MemoryAuditStore):
    attempts = 0

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        self.attempts += 1
        raise AppendConflict("sequence taken")


async def test_a_writer_that_keeps_losing_gives_up_with_a_transient_error() -> None:
    store = AlwaysTaken()
    with pytest.raises(TransientError, match="conflicted 50 times in a row"):
        await AuditChain(store).append(entry(1))
    assert store.attempts == MAX_APPEND_ATTEMPTS


async def test_a_writer_that_lost_a_race_continues_after_the_winners_records() -> None:
    store = MemoryAuditStore()
    mine, theirs = AuditChain(store), AuditChain(store)
    await mine.append(entry(1))
    await theirs.append_all([entry(2), entry(3)])
    record = await mine.append(entry(4))
    assert (record.seq, record.prev_hash) == (4, store.records[3].hash)
    assert (await AuditChain(store).verify()).ok


async def test_text_that_is_not_unicode_is_refused_and_nothing_is_written() -> None:
    """A lone surrogate has no UTF-8 encoding, so it has no hash: docs/audit.md."""
    store = await chain_of(2)
    with pytest.raises(ValueError):
        await AuditChain(store).append(entry(3, result={"title": "x\ud800y"}))
    assert sorted(store.records) == [1, 2]
    assert (await AuditChain(store).verify()).ok


async def test_a_failed_listener_is_logged_and_the_append_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(records: list[AuditRecord]) -> None:
        raise RuntimeError("index table down")

    with caplog.at_level(logging.ERROR, logger="shared.audit"):
        await AuditChain(MemoryAuditStore(), listeners=[broken]).append_all([entry(1), entry(2)])
    [logged] = caplog.records
    assert logged.getMessage() == (
        "audit listener failed for records 1..2 (the records are appended)"
    )
    assert logged.exc_info is not None


async def test_a_lost_race_is_logged_with_the_chain_it_lost_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryAuditStore()
    mine, theirs = AuditChain(store), AuditChain(store)
    await mine.append(entry(1))
    await theirs.append(entry(2))
    with caplog.at_level(logging.DEBUG, logger="shared.audit"):
        await mine.append(entry(3))
    assert [r.getMessage() for r in caplog.records] == [
        "audit append lost a race on chain chain; moving on"
    ]


# checkpoints ---------------------------------------------------------------------------------


async def test_a_checkpoint_that_fails_is_retried_then_raised_and_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    anchor = MemoryAnchor()
    chain = AuditChain(MemoryAuditStore(chains=LANE_CHAINS[:2]), anchor=anchor)
    await chain.append_all([entry(1), entry(2)])
    anchor.fail = 2
    point = await chain.checkpoint(retry_delay_s=0)
    assert anchor.written == [point] and point.count == 2
    anchor.fail = 3
    with caplog.at_level(logging.ERROR, logger="shared.audit"), pytest.raises(OSError):
        await chain.checkpoint(retry_delay_s=0)
    assert "audit checkpoint could not be written after 3 attempts" in caplog.text
    assert len(anchor.written) == 1


async def test_verify_reports_the_last_checkpoint_and_whether_it_matches() -> None:
    anchor = MemoryAnchor()
    store = MemoryAuditStore(chains=LANE_CHAINS[:2])
    chain = AuditChain(store, anchor=anchor)
    await chain.append_all([entry(n) for n in range(4)])
    point = await chain.checkpoint()
    await chain.append(entry(9))
    report = await chain.verify()
    assert report.ok and report.checkpoints_checked == 1
    assert report.as_dict()["checkpoint"] == {
        "at": point.at.isoformat().replace("+00:00", "Z"),
        "count": 4,
        "matches": True,
    }
    newest = max(store.records)
    del store.records[newest]  # not checkpointed yet: only the links can tell, and cannot
    assert (await chain.verify()).ok
    del store.records[max(store.records)]  # checkpointed: the cut is found
    report = await chain.verify()
    assert not report.ok and report.checkpoint is not None and not report.checkpoint.matches
    assert "missing" in (report.problem or "")


async def test_lane_writers_never_conflict_while_each_has_a_chain_of_its_own() -> None:
    store = MemoryAuditStore(chains=LANE_CHAINS)
    writers = [AuditChain(store) for _ in range(4)]
    for n, writer in enumerate(writers):
        writer._free = [LANE_CHAINS[n], *[c for c in LANE_CHAINS if c != LANE_CHAINS[n]]]

    async def write(chain: AuditChain, base: int) -> None:
        for n in range(10):
            await chain.append(entry(base + n))
            await asyncio.sleep(0)

    await asyncio.gather(*(write(chain, i * 100) for i, chain in enumerate(writers)))
    assert len(store.records) == 40 and store.conflicts == 0
    assert len(await store.heads()) == 4
    assert (await AuditChain(store).verify()).ok


# positions of lane records -------------------------------------------------------------------

T0 = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
SECOND_T0 = int(T0.timestamp()) - POSITION_EPOCH_S


def test_a_lane_position_carries_its_second_lane_and_number() -> None:
    position = lane_position(SECOND_T0, 17, 42)
    assert position == (SECOND_T0 * LANE_SLOTS + 17) * SEQ_SLOTS + 42
    assert (second_of(position), lane_of(position), chain_seq_of(position)) == (SECOND_T0, 17, 42)
    assert chain_of_position(position) == "c17"
    assert lane_of(LANE_POSITION_FLOOR) == 0 and chain_seq_of(LANE_POSITION_FLOOR) == 0


def test_a_position_below_the_floor_is_a_record_of_the_single_chain() -> None:
    legacy = LANE_POSITION_FLOOR - 1
    assert lane_of(legacy) is None and chain_seq_of(legacy) == legacy
    assert chain_seq_of(SEQ_SLOTS + 5) == SEQ_SLOTS + 5
    assert chain_of_position(3) == LEGACY_CHAIN


@pytest.mark.parametrize("chain_seq", [0, SEQ_SLOTS])
def test_a_lane_holds_numbers_1_to_99999999_only(chain_seq: int) -> None:
    assert chain_seq_of(lane_position(SECOND_T0, 3, SEQ_SLOTS - 1)) == SEQ_SLOTS - 1
    with pytest.raises(ValueError) as full:
        lane_position(SECOND_T0, 3, chain_seq)
    assert str(full.value) == "lane 3 is full (99999999 records)"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The wall clock the lane positions are taken from, set by the test (`clock[0]`)."""
    now = [T0.timestamp()]
    monkeypatch.setattr(audit.time, "time", lambda: now[0])
    return now


def lane_writer(*lanes: int, **kwargs: object) -> tuple[AuditChain, MemoryAuditStore]:
    store = MemoryAuditStore(chains=tuple(LANE_CHAINS[n] for n in lanes))
    writer = AuditChain(store, **kwargs)  # type: ignore[arg-type]
    writer._free = list(store.chains)
    return writer, store


async def test_a_lane_record_is_placed_by_the_clock_its_lane_and_number(clock: list[float]) -> None:
    writer, store = lane_writer(17)
    first, second = await writer.append_all([entry(1), entry(2)])
    assert (first.chain, first.chain_seq, second.chain_seq) == ("c17", 1, 2)
    assert first.seq == lane_position(SECOND_T0, 17, 1)
    assert second.seq == lane_position(SECOND_T0, 17, 2)
    assert (await AuditChain(store).verify()).ok


async def test_a_clock_stepping_back_never_moves_a_lane_back(clock: list[float]) -> None:
    writer, _ = lane_writer(4)
    first = await writer.append(entry(1))
    clock[0] -= 10
    second = await AuditChain(writer._store).append(entry(2))
    assert second.seq == lane_position(SECOND_T0, 4, 2) > first.seq


async def test_the_marker_lies_behind_every_later_lane_record(clock: list[float]) -> None:
    writer, _ = lane_writer(0, 1)
    assert await writer.head_seq() == (SECOND_T0 - 5) * LANE_SLOTS * SEQ_SLOTS
    record = await writer.append(entry(1))
    assert record.seq > await writer.head_seq()


async def test_the_marker_of_the_single_chain_is_its_head() -> None:
    chain = AuditChain(MemoryAuditStore())
    assert await chain.head_seq() == 0
    await chain.append_all([entry(1), entry(2), entry(3)])
    assert await chain.head_seq() == 3


# index entries and transactions --------------------------------------------------------------


class Transactions(MemoryAuditStore):
    """Records the records and index entries of every transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        await super().insert_all(records, index)
        self.sizes.append((len(records), len(index)))


def nine_entries(record: AuditRecord) -> list[IndexEntry]:
    return [
        IndexEntry(IndexDimension.TARGET, f"{record.entry.action_id}/{n}", record.seq, T0)
        for n in range(9)
    ]


async def test_each_transaction_holds_at_most_100_operations_with_the_index_entries() -> None:
    store = Transactions()
    records = await AuditChain(store, indexer=nine_entries).append_all(
        [entry(n) for n in range(25)]
    )
    # a record and its nine index entries are ten operations: ten records a transaction
    assert store.sizes == [(10, 90), (10, 90), (5, 45)]
    assert store.index == [e for record in records for e in nine_entries(record)]


# reading the trail ---------------------------------------------------------------------------


class Counted(MemoryAuditStore):
    read = 0

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        async for record in super().newest_first(before_seq):
            self.read += 1
            yield record


async def test_find_gives_the_newest_record_of_each_action_after_a_position() -> None:
    store = Counted()
    chain = AuditChain(store)
    approved = AuditEvent.ACTION_APPROVED
    await chain.append_all(
        [
            entry(1),  # 1
            entry(2),  # 2: at the position searched after, not found
            entry(3),  # 3
            entry(3, event=approved),  # 4: another event
            entry(1),  # 5
            entry(4),  # 6
        ]
    )
    executed = frozenset({AuditEvent.ACTION_EXECUTED})
    found = await chain.find({"act-1", "act-2", "act-3"}, executed, after_seq=2)
    assert {k: v.seq for k, v in found.items()} == {"act-1": 5, "act-3": 3}
    store.read = 0
    assert {k: v.seq for k, v in (await chain.find({"act-4"}, executed, 0)).items()} == {"act-4": 6}
    assert store.read == 2  # stops as soon as every action is found


async def test_a_record_is_read_by_its_position() -> None:
    store = await chain_of(3)
    chain = AuditChain(store)
    assert await chain.record(2) == store.records[2]
    assert await chain.record(4) is None


async def test_the_newest_checkpoint_or_else_the_newest_record_tells_when_it_was_anchored() -> None:
    anchor = MemoryAnchor()
    store = MemoryAuditStore()
    chain = AuditChain(store, anchor=anchor)
    assert await chain.newest_checkpoint_or_record() is None
    await chain.append_all([entry(1, at=T0), entry(2, at=T0 + timedelta(minutes=1))])
    assert await chain.newest_checkpoint_or_record() == ("record", T0 + timedelta(minutes=1))
    for minutes in (5, 7, 9):
        anchor.written.append(Checkpoint(T0 + timedelta(minutes=minutes), {}, 0))
    assert await chain.newest_checkpoint_or_record() == ("checkpoint", T0 + timedelta(minutes=9))
    assert await AuditChain(store).newest_checkpoint_or_record() == (
        "record",
        T0 + timedelta(minutes=1),
    )


# checkpoints, word for word ------------------------------------------------------------------


@pytest.fixture
def east_of_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time three hours east of UTC (a POSIX rule: no zone database)."""
    monkeypatch.setenv("TZ", "XYZ-3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def point() -> Checkpoint:
    heads = {
        "c01": ChainHead("c01", 2, "b" * 64, lane_position(SECOND_T0, 1, 2)),
        "c00": ChainHead("c00", 3, "a" * 64, lane_position(SECOND_T0, 0, 3)),
    }
    return Checkpoint(at=T0.astimezone(timezone(timedelta(hours=-5))), heads=heads, count=5)


def test_a_checkpoint_is_written_in_utc_with_its_heads_sorted(east_of_utc: None) -> None:
    written = checkpoint_json(point())
    assert written == {
        "at": "2026-03-14T09:30:00Z",
        "count": 5,
        "heads": {
            "c00": {"seq": 3, "hash": "a" * 64, "position": lane_position(SECOND_T0, 0, 3)},
            "c01": {"seq": 2, "hash": "b" * 64, "position": lane_position(SECOND_T0, 1, 2)},
        },
    }
    assert list(written["heads"]) == ["c00", "c01"]


def test_a_checkpoint_reads_back_as_written() -> None:
    read = checkpoint_from_json(json.loads(json.dumps(checkpoint_json(point()))))
    assert read == point()
    assert all(type(h.seq) is int and type(h.position) is int for h in read.heads.values())


async def test_a_checkpoint_is_written_with_every_head_and_the_count() -> None:
    anchor = MemoryAnchor()
    chain, store = lane_writer(0, 1, anchor=anchor)
    await chain.append_all([entry(1), entry(2)])
    await AuditChain(store).append(entry(3))
    written = await chain.checkpoint()
    assert written.heads == await store.heads() and written.count == 3
    assert anchor.written == [written]


async def test_without_an_anchor_a_checkpoint_is_refused() -> None:
    with pytest.raises(RuntimeError) as refused:
        await AuditChain(MemoryAuditStore()).checkpoint()
    assert str(refused.value) == (
        "no audit anchor is configured (RESPONDER_AUDIT_ANCHOR_CONTAINER)"
    )


async def test_a_failed_checkpoint_is_retried_later_each_time_and_every_failure_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(audit.asyncio, "sleep", sleep)
    anchor = MemoryAnchor()
    chain = AuditChain(MemoryAuditStore(), anchor=anchor)
    anchor.fail = 3
    with caplog.at_level(logging.WARNING, logger="shared.audit"), pytest.raises(OSError):
        await chain.checkpoint()
    assert delays == [2.0, 4.0]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "audit checkpoint attempt 1 failed: anchor unreachable"),
        ("WARNING", "audit checkpoint attempt 2 failed: anchor unreachable"),
        ("ERROR", "audit checkpoint could not be written after 3 attempts: anchor unreachable"),
    ]


# races between writers of lane chains --------------------------------------------------------


async def test_a_writer_that_lost_a_race_moves_to_another_chain() -> None:
    mine, store = lane_writer(0, 1)
    await mine.append(entry(1))  # mine now knows c00's head
    theirs = AuditChain(store)
    theirs._free = ["c00"]
    await theirs.append(entry(2))
    record = await mine.append(entry(3))
    assert (record.chain, record.chain_seq) == ("c01", 1)
    assert store.conflicts == 1
    assert mine._free == ["c01", "c00"]  # the contended chain is tried last


async def test_a_writer_losing_again_steps_back_a_little_longer_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return 0.0

    monkeypatch.setattr(audit.random, "uniform", uniform)
    with pytest.raises(TransientError):
        await AuditChain(AlwaysTaken()).append(entry(1))
    # no pause after the first loss, none after the last
    assert bounds == [(0, 0.005 * n) for n in range(2, MAX_APPEND_ATTEMPTS)]


# verifying lane chains, word for word --------------------------------------------------------


async def lanes_of(
    per_chain: int, *lanes: int, anchor: MemoryAnchor | None = None
) -> MemoryAuditStore:
    """`per_chain` records on each of `lanes`, one second apart."""
    store = MemoryAuditStore(chains=tuple(LANE_CHAINS[n] for n in lanes))
    for n in lanes:
        writer = AuditChain(store, anchor=anchor)
        writer._free = [LANE_CHAINS[n]]
        for k in range(per_chain):
            await writer.append(entry(100 * n + k))
    return store


def on(store: MemoryAuditStore, chain: str, chain_seq: int) -> AuditRecord:
    [record] = [r for r in store.records.values() if (r.chain, r.chain_seq) == (chain, chain_seq)]
    return record


def put(store: MemoryAuditStore, record: AuditRecord) -> None:
    """Replace the record of the same chain and number."""
    del store.records[on(store, record.chain, record.chain_seq).seq]
    store.records[record.seq] = record


async def test_lane_chains_verify_and_report_their_heads() -> None:
    store = await lanes_of(2, 3, 17)
    report = await AuditChain(store).verify()
    top = on(store, "c17", 2)
    assert report.ok and report.records_checked == 4 and report.checkpoint is None
    assert report.chains == {
        "c03": ChainHead("c03", 2, on(store, "c03", 2).hash, on(store, "c03", 2).seq),
        "c17": ChainHead("c17", 2, top.hash, top.seq),
    }
    assert (report.head_seq, report.head_hash) == (top.seq, top.hash)


async def test_a_lane_record_at_another_lanes_position_is_out_of_position() -> None:
    store = await lanes_of(2, 1)
    first = on(store, "c01", 1)
    moved = first.model_copy(update={"seq": lane_position(second_of(first.seq), 0, 1)})
    put(store, moved)
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (
        moved.seq,
        f"record c01#1 (position {moved.seq}) is out of position",
    )


async def test_a_lane_record_at_another_numbers_position_is_out_of_position() -> None:
    store = await lanes_of(1, 1)
    first = on(store, "c01", 1)
    moved = first.model_copy(update={"seq": first.seq + 5})
    put(store, moved)
    report = await AuditChain(store).verify()
    assert report.problem == f"record c01#1 (position {moved.seq}) is out of position"


async def test_a_lane_record_placed_before_the_one_it_follows_is_out_of_position(
    clock: list[float],
) -> None:
    store = await lanes_of(2, 1)
    second = on(store, "c01", 2)
    earlier = second.model_copy(update={"seq": lane_position(SECOND_T0 - 60, 1, 2)})
    put(store, earlier)
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (
        earlier.seq,
        f"record c01#2 (position {earlier.seq}) is out of position",
    )


async def test_a_record_of_the_single_chain_at_another_position_is_out_of_position() -> None:
    store = await chain_of(1)
    store.records[7] = store.records.pop(1).model_copy(update={"seq": 7})
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (7, "record 7 is out of position")


@pytest.mark.parametrize(("removed", "at", "problem"), [(1, 2, "1..1"), (2, 3, "2..2")])
async def test_records_missing_from_a_lane_chain_are_named_at_the_next_position(
    removed: int, at: int, problem: str
) -> None:
    store = await lanes_of(3, 5)
    after = on(store, "c05", at)
    del store.records[on(store, "c05", removed).seq]
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (
        after.seq,
        f"chain c05: records {problem} are missing",
    )


async def test_a_defect_the_store_found_is_reported() -> None:
    store = await lanes_of(1, 2)
    record = on(store, "c02", 1)
    put(store, record.model_copy(update={"defect": "the index row has no record"}))
    report = await AuditChain(store).verify()
    assert report.problem == f"record c02#1 (position {record.seq}): the index row has no record"


async def test_a_broken_chain_is_reported_whichever_chains_follow_it() -> None:
    store = await lanes_of(2, 0, 1)
    record = on(store, "c00", 2)
    put(store, record.model_copy(update={"entry": entry(999)}))
    report = await AuditChain(store).verify()
    assert (report.first_broken_seq, report.problem) == (
        record.seq,
        f"record c00#2 (position {record.seq}) content does not match its hash",
    )


async def checkpointed(anchor: MemoryAnchor) -> tuple[MemoryAuditStore, Checkpoint]:
    store = await lanes_of(4, 0, 1, anchor=anchor)
    writer = AuditChain(store, anchor=anchor)
    return store, await writer.checkpoint()


async def test_records_cut_off_after_a_checkpoint_are_missing(east_of_utc: None) -> None:
    anchor = MemoryAnchor()
    store, point = await checkpointed(anchor)
    head = on(store, "c00", 4)
    for n in (3, 4):
        del store.records[on(store, "c00", n).seq]
    report = await AuditChain(store, anchor=anchor).verify()
    stamp = point.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert (report.first_broken_seq, report.problem) == (
        head.seq,
        f"chain c00: records 3..4 are missing (the checkpoint of {stamp} saw record 4)",
    )
    assert report.checkpoint == CheckpointCheck(point.at, 8, matches=False)
    assert report.as_dict()["checkpoint"] == {"at": stamp, "count": 8, "matches": False}


async def test_a_checkpointed_chain_removed_whole_is_missing() -> None:
    anchor = MemoryAnchor()
    store, point = await checkpointed(anchor)
    head = on(store, "c01", 4)
    for n in range(1, 5):
        del store.records[on(store, "c01", n).seq]
    report = await AuditChain(store, anchor=anchor).verify()
    stamp = point.at.isoformat().replace("+00:00", "Z")
    assert (report.first_broken_seq, report.problem) == (
        head.seq,
        f"chain c01: records 1..4 are missing (the checkpoint of {stamp} saw record 4)",
    )


async def test_a_lane_chain_rehashed_after_a_checkpoint_differs_from_it(
    east_of_utc: None,
) -> None:
    anchor = MemoryAnchor()
    store, point = await checkpointed(anchor)
    prev = GENESIS_HASH
    for n in range(1, 5):  # c00 forged and re-chained consistently, as an attacker could
        record = on(store, "c00", n)
        forged = record.entry.model_copy(update={"reason": "nothing happened"})
        put(store, chain_entry(n, prev, forged, "c00", record.seq))
        prev = on(store, "c00", n).hash
    report = await AuditChain(store, anchor=anchor).verify()
    head = on(store, "c00", 4)
    stamp = point.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert (report.first_broken_seq, report.problem) == (
        head.seq,
        f"record c00#4 (position {head.seq}) differs from the checkpoint of {stamp}",
    )
    assert report.checkpoint is not None and not report.checkpoint.matches


class LostAnswers(MemoryAuditStore):
    """A store whose next inserts land (or not) and then fail as a lost answer would: the
    connection dropped, or the SDK's resend after a 5xx found its own rows taken."""

    def __init__(
        self, error: Exception, land: bool, unreadable: bool = False, failures: int = 1
    ) -> None:
        super().__init__(LANE_CHAINS)
        self.error, self.land, self.unreadable = error, land, unreadable
        self.failures = failures
        self.attempts = 0

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        self.attempts += 1
        if not self.failures:
            return await super().insert_all(records, index)
        self.failures -= 1
        if self.land:
            await super().insert_all(records, index)
        raise self.error

    async def get(self, seq: int) -> AuditRecord | None:
        if self.unreadable:
            raise OSError("storage unreachable")
        return await super().get(seq)


@pytest.mark.parametrize("error", [OSError("answer lost"), AppendConflict("resent, rows taken")])
async def test_a_transaction_that_landed_without_an_answer_is_not_written_again(
    error: Exception,
) -> None:
    store = LostAnswers(error, land=True)
    chain = AuditChain(store)
    written = await chain.append_all([entry(1), entry(2)])
    assert sorted(store.records) == sorted(r.seq for r in written)
    assert [store.records[r.seq].hash for r in written] == [r.hash for r in written]
    # The chain's head is known: the next record follows on the same chain, no race lost.
    following = await chain.append(entry(3))
    assert following.chain == written[0].chain and following.chain_seq == 3
    assert store.conflicts == 0 and (await chain.verify()).ok


async def test_a_transaction_that_did_not_land_is_sent_once_more_with_the_same_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LostAnswers(OSError("connection reset"), land=False)
    chain = AuditChain(store)
    with caplog.at_level(logging.INFO, logger="shared.audit"):
        written = await chain.append(entry(1))
    assert store.attempts == 2 and list(store.records.values()) == [written]
    assert (await chain.verify()).ok
    [said] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert said.getMessage() == (f"audit transaction at {written.seq} failed; sending it once more")


async def test_a_transaction_that_fails_twice_fails_and_nothing_is_stored() -> None:
    store = LostAnswers(OSError("connection reset"), land=False, failures=2)
    chain = AuditChain(store)
    with pytest.raises(OSError, match="connection reset"):
        await chain.append(entry(1))
    assert store.attempts == 2 and store.records == {}
    await chain.append(entry(2))
    assert len(store.records) == 1 and (await chain.verify()).ok


async def test_a_first_send_that_lands_late_turns_the_second_into_its_confirmation() -> None:
    store = LostAnswers(OSError("timed out"), land=False)
    late = store.insert_all

    async def first_lands_meanwhile(records: list[AuditRecord], index: list[IndexEntry]) -> None:
        if store.attempts == 1:  # the second send: the first one lands just before it
            await MemoryAuditStore.insert_all(store, records, index)
        await late(records, index)

    store.insert_all = first_lands_meanwhile  # type: ignore[method-assign]
    written = await AuditChain(store).append(entry(1))
    assert list(store.records.values()) == [written] and store.conflicts == 1


async def test_an_unreadable_answer_keeps_the_original_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LostAnswers(OSError("connection reset"), land=True, unreadable=True)
    with pytest.raises(OSError, match="connection reset"):
        await AuditChain(store).append(entry(1))
    [stored] = store.records.values()
    [warned] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned.getMessage() == f"could not read audit position {stored.seq} back"
    assert warned.exc_info is not None and "storage unreachable" in str(warned.exc_info[1])


async def test_a_conflict_that_cannot_be_read_back_fails_instead_of_moving_on() -> None:
    store = LostAnswers(AppendConflict("resent, rows taken"), land=True, unreadable=True)
    with pytest.raises(
        TransientError, match="^audit append conflicted and the trail could not be read back$"
    ):
        await AuditChain(store).append(entry(1))
    assert len(store.records) == 1 and store.attempts == 1


async def test_a_long_append_goes_on_after_a_transaction_recognized_as_its_own() -> None:
    store = LostAnswers(AppendConflict("resent, rows taken"), land=True)
    written = await AuditChain(store).append_all([entry(n) for n in range(150)])
    assert len(written) == 150 and sorted(store.records) == sorted(r.seq for r in written)
    assert [r.chain_seq for r in written] == list(range(1, 151))
