"""The hash chain: appends link records, verification finds the first broken link."""

from __future__ import annotations

import asyncio

import pytest

from shared.audit import GENESIS_HASH, MAX_BODY_CHARS, AuditChain, entry_body, record_hash
from shared.models import Actor, AuditEntry, AuditEvent
from tests.fakes import MemoryAuditStore


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
