"""The hash chain: appends link records, verification finds the first broken link."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import pytest

from shared.audit import (
    GENESIS_HASH,
    LANE_CHAINS,
    MAX_APPEND_ATTEMPTS,
    MAX_BODY_CHARS,
    AuditChain,
    canonical_json,
    chain_entry,
    entry_body,
    record_hash,
)
from shared.errors import TransientError
from shared.models import Actor, AuditEntry, AuditEvent, AuditRecord
from shared.ports import AppendConflict, IndexEntry
from tests.fakes import MemoryAnchor, MemoryAuditStore


def entry(n: int, **extra: object) -> AuditEntry:
    return AuditEntry(
        event=AuditEvent.ACTION_EXECUTED,
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
