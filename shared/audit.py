"""The tamper-evident audit chain: append records with hash links, and verify the chain.

Record n carries the SHA-256 of record n-1, and its own hash covers its sequence number, that
link and a canonical serialization of its content. Appends never update: writers race by
inserting the next sequence number and retry on conflict.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import TransientError
from shared.models import AuditEntry, AuditRecord
from shared.ports import AppendConflict, AuditStore

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
MAX_APPEND_ATTEMPTS = 50
MAX_BATCH = 100
# Table Storage strings hold at most 32K UTF-16 characters; keep well below.
MAX_BODY_CHARS = 30_000

# Called with the records of every successful append (the audit index, for one).
AuditListener = Callable[[list[AuditRecord]], Awaitable[object]]


# One encoder for every call: json.dumps with options builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def entry_body(entry: AuditEntry) -> str:
    """The canonical text of an entry, which is what gets hashed and stored."""
    body = canonical_json(entry.model_dump(mode="json"))
    if len(body) <= MAX_BODY_CHARS:
        return body
    # An oversized result (a huge before/after state) is replaced by its digest, so the
    # record still fits and still proves what was seen.
    result = canonical_json(entry.result)
    slim = entry.model_copy(
        update={
            "result": {
                "truncated": True,
                "chars": len(result),
                "sha256": hashlib.sha256(result.encode()).hexdigest(),
            }
        }
    )
    return canonical_json(slim.model_dump(mode="json"))


def record_hash(seq: int, prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{seq}\n{prev_hash}\n{body}".encode()).hexdigest()


def chain_entry(seq: int, prev_hash: str, entry: AuditEntry) -> AuditRecord:
    body = entry_body(entry)
    stored = AuditEntry.model_validate_json(body)
    digest = record_hash(seq, prev_hash, body)
    return AuditRecord(seq=seq, prev_hash=prev_hash, hash=digest, entry=stored, body=body)


@dataclass(frozen=True)
class VerifyReport:
    """The result of walking the chain. `first_broken_seq` is None when every link holds."""

    records_checked: int
    head_seq: int | None
    head_hash: str | None
    first_broken_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_broken_seq is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "records_checked": self.records_checked,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_broken_seq": self.first_broken_seq,
            "problem": self.problem,
        }


class AuditChain:
    """Appends entries to, and verifies, the chain kept in an `AuditStore`.

    `listeners` hear of every append once it has landed. They keep derived data (the audit
    index) and cannot fail an append: the records are in the chain whatever they do."""

    def __init__(self, store: AuditStore, listeners: Sequence[AuditListener] = ()) -> None:
        self._store = store
        self._listeners = tuple(listeners)
        self._head: AuditRecord | None = None
        self._lock = asyncio.Lock()

    async def append(self, entry: AuditEntry) -> AuditRecord:
        return (await self.append_all([entry]))[0]

    async def append_all(self, entries: list[AuditEntry]) -> list[AuditRecord]:
        """Append entries as consecutive records; retry when another writer wins.

        Each run of up to 100 entries (a Table Storage transaction) lands atomically."""
        records: list[AuditRecord] = []
        async with self._lock:
            for start in range(0, len(entries), MAX_BATCH):
                records += await self._append_batch(entries[start : start + MAX_BATCH])
        await self._notify(records)
        return records

    async def head_seq(self) -> int:
        """The sequence number of the newest record this writer knows of (0: none). May lag
        behind other writers: a lower bound, never ahead of the chain."""
        head = self._head or await self._store.head()
        return head.seq if head else 0

    async def record(self, seq: int) -> AuditRecord | None:
        return await self._store.get(seq)

    async def find(
        self, action_ids: set[str], events: frozenset[str], after_seq: int
    ) -> dict[str, AuditRecord]:
        """The newest record of each of `action_ids` with one of `events`, among the records
        after `after_seq` (read newest first, down to it)."""
        found: dict[str, AuditRecord] = {}
        async for record in self._store.newest_first():
            if record.seq <= after_seq or len(found) == len(action_ids):
                break
            entry = record.entry
            if entry.action_id in action_ids and entry.event in events:
                found.setdefault(entry.action_id, record)
        return found

    async def _notify(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        for listener in self._listeners:
            try:
                await listener(records)
            except Exception:
                logger.exception(
                    "audit listener failed for records %s..%s (the records are appended; "
                    "`responder audit reindex` rebuilds the index)",
                    records[0].seq,
                    records[-1].seq,
                )

    async def _append_batch(self, entries: list[AuditEntry]) -> list[AuditRecord]:
        for _ in range(MAX_APPEND_ATTEMPTS):
            head = self._head or await self._store.head()
            records = self._link(head, entries)
            try:
                await self._store.insert_all(records)
            except AppendConflict:
                logger.debug(
                    "audit append lost a race after seq %s; re-reading head",
                    head.seq if head else 0,
                )
                self._head = await self._store.head()
                continue
            self._head = records[-1]
            return records
        raise TransientError(f"audit append conflicted {MAX_APPEND_ATTEMPTS} times in a row")

    @staticmethod
    def _link(head: AuditRecord | None, entries: list[AuditEntry]) -> list[AuditRecord]:
        seq, prev = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        records = []
        for entry in entries:
            seq += 1
            record = chain_entry(seq, prev, entry)
            records.append(record)
            prev = record.hash
        return records

    async def verify(self) -> VerifyReport:
        """Walk the whole chain (newest first, in constant memory) and report the first
        (lowest-sequence) broken link: a wrong hash, a wrong back-link, or a missing record."""
        checked = 0
        head: AuditRecord | None = None
        newer: AuditRecord | None = None
        broken: tuple[int, str] | None = None
        async for record in self._store.newest_first():
            checked += 1
            head = head or record
            problem = _check_record(record, newer)
            if problem:
                broken = problem
            newer = record
        if newer is not None and newer.seq != 1:
            broken = (1, f"records 1..{newer.seq - 1} are missing")
        elif newer is not None and newer.prev_hash != GENESIS_HASH:
            broken = (1, "record 1 does not start from the genesis hash")
        return VerifyReport(
            records_checked=checked,
            head_seq=head.seq if head else None,
            head_hash=head.hash if head else None,
            first_broken_seq=broken[0] if broken else None,
            problem=broken[1] if broken else None,
        )


def _check_record(record: AuditRecord, newer: AuditRecord | None) -> tuple[int, str] | None:
    """Problems of one record and of its link to the next newer one (newest-first walk)."""
    problem: tuple[int, str] | None = None
    if newer is not None:
        if newer.seq != record.seq + 1:
            problem = (record.seq + 1, f"records {record.seq + 1}..{newer.seq - 1} are missing")
        elif newer.prev_hash != record.hash:
            problem = (newer.seq, f"record {newer.seq} does not link to record {record.seq}")
    # The stored text must hash to the stored hash, and be exactly the canonical text of the
    # content read from it: extra keys or reformatting count as tampering too.
    expected = record_hash(record.seq, record.prev_hash, record.body)
    if expected != record.hash or entry_body(record.entry) != record.body:
        problem = (record.seq, f"record {record.seq} content does not match its hash")
    return problem
