"""The tamper-evident audit trail: records appended to several hash chains at once, and
verified against the chains' own links and against checkpoints kept outside the table.

Within a chain, record n carries the SHA-256 of record n-1, and its own hash covers its number
in the chain, that link and a canonical serialization of its content (docs/audit.md). Appends
never update. A writer keeps to one chain (a lane) while nobody else writes there and moves to
another when it loses a race, so concurrent writers rarely meet. Every record also has a
position in the whole trail, from the time of its append, by which the app refers to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.audit_query import normalized
from shared.concurrency import gather_bounded
from shared.errors import TransientError
from shared.models import LEGACY_CHAIN, AuditEntry, AuditRecord, utcnow
from shared.ports import (
    AppendConflict,
    AuditAnchor,
    AuditIndex,
    AuditStore,
    ChainHead,
    Checkpoint,
    IndexDimension,
    IndexEntry,
)

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
MAX_APPEND_ATTEMPTS = 50
MAX_BATCH = 100
# Table Storage's limit of operations in one entity group transaction: a record costs one
# plus one per index entry.
MAX_OPERATIONS = 100
# Table Storage strings hold at most 32K UTF-16 characters; keep well below.
MAX_BODY_CHARS = 30_000
LANES = 32
# A lane record's position: ((seconds since POSITION_EPOCH) * LANE_SLOTS + lane) * SEQ_SLOTS
# + its number in the chain. Time first, so positions follow the clock to the second; the
# number last, so a position names its row. Fits a signed 64-bit integer until 2049.
LANE_SLOTS = 100
SEQ_SLOTS = 10**8
POSITION_EPOCH_S = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())
# Positions below this belong to the single chain of earlier versions (its sequence numbers).
LANE_POSITION_FLOOR = 10**12
# A marker (`head_seq`) lies this far behind the clock, against the clock stepping back.
MARKER_SLACK_S = 5
# `find` looks up through the index by target up to this many targets; beyond, one walk of the
# trail down to the marker costs fewer reads than a lookup in every lane per target.
INDEXED_FIND_TARGETS = 4
CHECKPOINT_ATTEMPTS = 3

# Called with the records of every successful append.
AuditListener = Callable[[list[AuditRecord]], Awaitable[object]]
# The index entries of one record, written in the same transaction as the record.
Indexer = Callable[[AuditRecord], list[IndexEntry]]


def lane_chain(lane: int) -> str:
    return f"c{lane:02d}"


LANE_CHAINS = tuple(lane_chain(n) for n in range(LANES))


def lane_of(position: int) -> int | None:
    """The lane a position belongs to; None for a record of the single-chain layout."""
    if position < LANE_POSITION_FLOOR:
        return None
    return (position // SEQ_SLOTS) % LANE_SLOTS


def chain_seq_of(position: int) -> int:
    return position % SEQ_SLOTS if position >= LANE_POSITION_FLOOR else position


def lane_position(second: int, lane: int, chain_seq: int) -> int:
    if not 0 < chain_seq < SEQ_SLOTS:
        raise ValueError(f"lane {lane} is full ({SEQ_SLOTS - 1} records)")
    return (second * LANE_SLOTS + lane) * SEQ_SLOTS + chain_seq


def second_of(position: int) -> int:
    return position // (LANE_SLOTS * SEQ_SLOTS)


def chain_of_position(position: int) -> str:
    lane = lane_of(position)
    return LEGACY_CHAIN if lane is None else lane_chain(lane)


def _now_second() -> int:
    return int(time.time()) - POSITION_EPOCH_S


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


def chain_entry(
    seq: int,
    prev_hash: str,
    entry: AuditEntry,
    chain: str = LEGACY_CHAIN,
    position: int | None = None,
) -> AuditRecord:
    """Record `seq` of `chain`; its position is `seq` in the single-chain layout."""
    body = entry_body(entry)
    stored = AuditEntry.model_validate_json(body)
    digest = record_hash(seq, prev_hash, body)
    return AuditRecord(
        seq=seq if position is None else position,
        prev_hash=prev_hash,
        hash=digest,
        entry=stored,
        body=body,
        chain=chain,
        chain_seq=seq,
    )


def checkpoint_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """A checkpoint as the anchor and the export carry it."""
    return {
        "at": checkpoint.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "count": checkpoint.count,
        "heads": {
            name: {"seq": head.seq, "hash": head.hash, "position": head.position}
            for name, head in sorted(checkpoint.heads.items())
        },
    }


def checkpoint_from_json(value: dict[str, Any]) -> Checkpoint:
    heads = {
        str(name): ChainHead(str(name), int(h["seq"]), str(h["hash"]), int(h["position"]))
        for name, h in value["heads"].items()
    }
    at = datetime.fromisoformat(str(value["at"]))  # Python 3.11 reads the "Z" itself
    return Checkpoint(at=at, heads=heads, count=int(value["count"]))


@dataclass(frozen=True)
class CheckpointCheck:
    """How the trail compares with the newest checkpoint."""

    at: datetime
    count: int
    matches: bool

    def as_dict(self) -> dict[str, Any]:
        at = self.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {"at": at, "count": self.count, "matches": self.matches}


@dataclass(frozen=True)
class VerifyReport:
    """The result of walking every chain. `first_broken_seq` (a position) is None when every
    link holds and every checkpoint matches."""

    records_checked: int
    head_seq: int | None
    head_hash: str | None
    first_broken_seq: int | None = None
    problem: str | None = None
    chains: dict[str, ChainHead] = field(default_factory=dict)
    checkpoints_checked: int = 0
    checkpoint: CheckpointCheck | None = None

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
            "chains": {
                name: {"seq": head.seq, "hash": head.hash, "position": head.position}
                for name, head in sorted(self.chains.items())
            },
            "checkpoints_checked": self.checkpoints_checked,
            "checkpoint": self.checkpoint.as_dict() if self.checkpoint else None,
        }


class AuditChain:
    """Appends entries to, and verifies, the chains kept in an `AuditStore`.

    `indexer` gives each record's index entries, stored in the record's own transaction;
    `index` reads them back (`find`). `listeners` hear of every append once it has landed and
    cannot fail it. `anchor`, when given, holds the checkpoints `checkpoint()` writes and
    `verify()` checks against."""

    def __init__(
        self,
        store: AuditStore,
        listeners: Sequence[AuditListener] = (),
        indexer: Indexer | None = None,
        anchor: AuditAnchor | None = None,
        index: AuditIndex | None = None,
    ) -> None:
        self._store = store
        self._listeners = tuple(listeners)
        self._indexer = indexer
        self._index = index if indexer is not None else None
        self.anchor = anchor
        # Heads this writer knows (None: the chain is empty); a chain absent is unknown.
        self._heads: dict[str, ChainHead | None] = {}
        free = list(store.chains)
        random.shuffle(free)
        self._free = free  # chains no append of this writer holds, preferred first
        self._freed = asyncio.Condition()
        self._timed = any(chain != LEGACY_CHAIN for chain in store.chains)

    async def append(self, entry: AuditEntry) -> AuditRecord:
        return (await self.append_all([entry]))[0]

    async def append_all(self, entries: list[AuditEntry]) -> list[AuditRecord]:
        """Append entries as consecutive records, in as few transactions as they fit in.

        An append holds one chain; when another writer took the next number there, it moves
        to another chain. A run of records that lands in one transaction lands atomically.

        A transaction whose answer was lost (the connection dropped, or the SDK resent it after
        a 5xx and the resend found the rows taken) may have landed all the same: the record at
        its last position is read, and when it is this one, the run counts as written instead
        of being written again on another chain."""
        records: list[AuditRecord] = []
        chain = await self._take()
        attempts = 0
        try:
            while len(records) < len(entries):
                head = await self._head_of(chain)
                batch, index = self._link(chain, head, entries[len(records) :])
                try:
                    await self._insert(batch, index)
                except AppendConflict:
                    landed = await self._landed(batch[-1])
                    if landed is None:
                        raise TransientError(
                            "audit append conflicted and the trail could not be read back"
                        ) from None
                    if landed:
                        self._keep(chain, batch, records)
                        continue
                    attempts += 1
                    logger.debug("audit append lost a race on chain %s; moving on", chain)
                    self._heads.pop(chain, None)
                    if attempts >= MAX_APPEND_ATTEMPTS:
                        raise TransientError(
                            f"audit append conflicted {MAX_APPEND_ATTEMPTS} times in a row"
                        ) from None
                    await self._give(chain, contended=True)
                    if attempts > 1:
                        # Losing again: step back a random moment so racers spread out.
                        await asyncio.sleep(random.uniform(0, 0.005 * attempts))
                    chain = await self._take()
                    continue
                self._keep(chain, batch, records)
        finally:
            await self._give(chain, contended=False)
        await self._notify(records)
        return records

    def _keep(self, chain: str, batch: list[AuditRecord], records: list[AuditRecord]) -> None:
        last = batch[-1]
        self._heads[chain] = ChainHead(chain, last.chain_seq, last.hash, last.seq)
        records += batch

    async def _insert(self, batch: list[AuditRecord], index: list[IndexEntry]) -> None:
        """One transaction. One that failed without landing (a connection the server had just
        closed, say) is sent once more with the very same rows: their keys let at most one of
        the two land, and a late first one makes the second an `AppendConflict` that
        `_landed` recognizes. When the trail cannot be read back, the error stands."""
        for attempt in (1, 2):
            try:
                await self._store.insert_all(batch, index)
                return
            except AppendConflict:
                raise
            except Exception:
                landed = await self._landed(batch[-1])
                if landed:
                    return
                if landed is None or attempt == 2:
                    raise
            logger.info("audit transaction at %s failed; sending it once more", batch[-1].seq)

    async def _landed(self, record: AuditRecord) -> bool | None:
        """Whether `record` itself is stored at its position; None when that cannot be read."""
        try:
            found = await self._store.get(record.seq)
        except Exception:
            logger.warning("could not read audit position %s back", record.seq, exc_info=True)
            return None
        return found is not None and found.hash == record.hash

    async def _take(self) -> str:
        async with self._freed:
            await self._freed.wait_for(lambda: bool(self._free))
            return self._free.pop(0)

    async def _give(self, chain: str, contended: bool) -> None:
        async with self._freed:
            if chain not in self._free:
                # A chain someone else writes to goes to the back: the others are tried first.
                self._free.insert(len(self._free) if contended else 0, chain)
            self._freed.notify()

    async def _head_of(self, chain: str) -> ChainHead | None:
        if chain not in self._heads:
            self._heads[chain] = await self._store.chain_head(chain)
        return self._heads[chain]

    def _link(
        self, chain: str, head: ChainHead | None, entries: list[AuditEntry]
    ) -> tuple[list[AuditRecord], list[IndexEntry]]:
        """The records (and their index entries) that fit one transaction, linked to `head`."""
        seq, prev = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        second = second_of(head.position) if head and chain != LEGACY_CHAIN else 0
        records: list[AuditRecord] = []
        index: list[IndexEntry] = []
        operations = 0
        for entry in entries[:MAX_BATCH]:
            seq += 1
            position = None
            if chain != LEGACY_CHAIN:
                second = max(_now_second(), second)
                position = lane_position(second, int(chain[1:]), seq)
            record = chain_entry(seq, prev, entry, chain, position)
            filed = self._indexer(record) if self._indexer else []
            operations += 1 + len(filed)
            if records and operations > MAX_OPERATIONS:
                break
            records.append(record)
            index += filed
            prev = record.hash
        return records, index

    async def head_seq(self) -> int:
        """A marker: every record appended after this call has a higher position (0: none).
        Lane positions come from the clock, so the marker is the clock's, less a slack."""
        if self._timed:
            return max(0, (_now_second() - MARKER_SLACK_S) * LANE_SLOTS * SEQ_SLOTS)
        head = await self._head_of(LEGACY_CHAIN)
        return head.position if head else 0

    async def record(self, seq: int) -> AuditRecord | None:
        return await self._store.get(seq)

    async def find(
        self,
        action_ids: set[str],
        events: frozenset[str],
        after_seq: int,
        targets: Mapping[str, str] | None = None,
        accept: Callable[[AuditRecord], bool] | None = None,
    ) -> dict[str, AuditRecord]:
        """The newest record of each of `action_ids` with one of `events` (and that `accept`
        takes, when given), among the records after `after_seq`. With `targets` (each
        action's target), a few targets and a lane marker, through the index: the records
        filed under those targets after the marker, however much of the trail lies between;
        otherwise the trail is read newest first, down to the marker.

        Positions order the records of one second by lane, not by time: "newest" is by
        position, so a caller that must tell an action's records apart says which it takes
        with `accept` rather than judging the one returned."""
        wanted = _wanted(action_ids, events, accept)
        if (
            self._index is not None
            and targets is not None
            and action_ids <= targets.keys()
            and after_seq >= LANE_POSITION_FLOOR
            and len({targets[i] for i in action_ids}) <= INDEXED_FIND_TARGETS
        ):
            return await self._find_indexed(self._index, action_ids, wanted, after_seq, targets)
        found: dict[str, AuditRecord] = {}
        async for record in self._store.newest_first():
            if record.seq <= after_seq or len(found) == len(action_ids):
                break
            if (action_id := wanted(record)) is not None:
                found.setdefault(action_id, record)
        return found

    async def _find_indexed(
        self,
        index: AuditIndex,
        action_ids: set[str],
        wanted: Callable[[AuditRecord], str | None],
        after_seq: int,
        targets: Mapping[str, str],
    ) -> dict[str, AuditRecord]:
        # A lane record's index rows land in its own transaction: no record is missing here.
        values = {normalized(IndexDimension.TARGET, targets[i]) for i in action_ids}

        async def filed(value: str) -> list[int]:
            return [s async for s in index.seqs(IndexDimension.TARGET, value, after_seq=after_seq)]

        seqs = {seq for found in await asyncio.gather(*map(filed, values)) for seq in found}
        records = await gather_bounded(self._store.get(seq) for seq in sorted(seqs, reverse=True))
        found: dict[str, AuditRecord] = {}
        for record in records:
            if record is not None and (action_id := wanted(record)) is not None:
                found.setdefault(action_id, record)
        return found

    async def _notify(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        for listener in self._listeners:
            try:
                await listener(records)
            except Exception:
                logger.exception(
                    "audit listener failed for records %s..%s (the records are appended)",
                    records[0].seq,
                    records[-1].seq,
                )

    async def checkpoint(self, retry_delay_s: float = 2.0) -> Checkpoint:
        """Write every chain's head to the anchor. Retried; a checkpoint that still cannot be
        written is logged as an error and raised, never skipped."""
        if self.anchor is None:
            raise RuntimeError("no audit anchor is configured (RESPONDER_AUDIT_ANCHOR_CONTAINER)")
        heads = await self._store.heads()
        point = Checkpoint(at=utcnow(), heads=heads, count=sum(head.seq for head in heads.values()))
        for attempt in range(1, CHECKPOINT_ATTEMPTS + 1):
            try:
                await self.anchor.append(point)
                return point
            except Exception as exc:
                if attempt == CHECKPOINT_ATTEMPTS:
                    logger.error(
                        "audit checkpoint could not be written after %s attempts: %s",
                        attempt,
                        exc,
                    )
                    raise
                logger.warning("audit checkpoint attempt %s failed: %s", attempt, exc)
                await asyncio.sleep(retry_delay_s * attempt)
        raise AssertionError("unreachable")

    async def newest_checkpoint_or_record(self) -> tuple[str, datetime] | None:
        """When the newest checkpoint was written (`checkpoint`); with none yet, the newest
        record's time (`record`): a trail idle that long was never anchored. None: empty."""
        points = await self.checkpoints()
        if points:
            return "checkpoint", points[-1].at
        head = await self._store.head()
        return ("record", head.entry.at) if head else None

    async def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint the anchor holds, oldest first (none without an anchor)."""
        return await self.anchor.checkpoints() if self.anchor else []

    async def verify(self) -> VerifyReport:
        """Walk every chain (newest first, in memory bounded by the checkpoints) and report
        the first (lowest-position) problem: a wrong hash, a wrong back-link, a missing
        record, a stored copy that differs, or a record that differs from a checkpoint."""
        checkpoints = await self.checkpoints()
        expected: dict[str, dict[int, tuple[ChainHead, datetime]]] = {}
        for point in checkpoints:
            for name, head in point.heads.items():
                expected.setdefault(name, {})[head.seq] = (head, point.at)
        heads = await self._store.heads()
        problems: list[tuple[int, str]] = []
        failed_at: set[datetime] = set()
        checked = 0
        found: dict[str, ChainHead] = {}
        newest: AuditRecord | None = None
        for chain in sorted(set(heads) | set(expected)):
            walk = _ChainWalk(chain, expected.get(chain, {}))
            async for record in self._store.chain_newest_first(chain, whole=True):
                checked += 1
                walk.step(record)
            problems += walk.finish()
            failed_at |= walk.failed_at
            if walk.newest is not None:
                top = walk.newest
                found[chain] = ChainHead(chain, top.chain_seq, top.hash, top.seq)
                if newest is None or top.seq > newest.seq:
                    newest = top
        broken = min(problems) if problems else None
        last = None
        if checkpoints:
            point = checkpoints[-1]
            last = CheckpointCheck(point.at, point.count, point.at not in failed_at)
        return VerifyReport(
            records_checked=checked,
            head_seq=newest.seq if newest else None,
            head_hash=newest.hash if newest else None,
            first_broken_seq=broken[0] if broken else None,
            problem=broken[1] if broken else None,
            chains=found,
            checkpoints_checked=len(checkpoints),
            checkpoint=last,
        )


def _wanted(
    action_ids: set[str], events: frozenset[str], accept: Callable[[AuditRecord], bool] | None
) -> Callable[[AuditRecord], str | None]:
    """The test `find` puts each record to: the record's action id if it is one looked for,
    else None."""

    def wanted(record: AuditRecord) -> str | None:
        entry = record.entry
        if entry.action_id not in action_ids or entry.event not in events:
            return None
        return entry.action_id if accept is None or accept(record) else None

    return wanted


def _label(record: AuditRecord) -> str:
    if record.chain == LEGACY_CHAIN:
        return f"record {record.seq}"
    return f"record {record.chain}#{record.chain_seq} (position {record.seq})"


def _in(chain: str) -> str:
    return "" if chain == LEGACY_CHAIN else f"chain {chain}: "


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _ChainWalk:
    """Checks one chain, newest record first, against its links and the checkpoints."""

    def __init__(self, chain: str, expected: dict[int, tuple[ChainHead, datetime]]) -> None:
        self.chain = chain
        self.expected = expected
        self.lane = None if chain == LEGACY_CHAIN else int(chain[1:])
        self.newest: AuditRecord | None = None
        self.oldest: AuditRecord | None = None
        self.problems: list[tuple[int, str]] = []
        self.failed_at: set[datetime] = set()

    def step(self, record: AuditRecord) -> None:
        if self.newest is None:
            self.newest = record
            self._missing_after(record.chain_seq)
        problem = _check_record(record, self.oldest, self.lane)
        if problem:
            self.problems.append(problem)
        mark = self.expected.get(record.chain_seq)
        if mark is not None and mark[0].hash != record.hash:
            self.problems.append(
                (record.seq, f"{_label(record)} differs from the checkpoint of {_stamp(mark[1])}")
            )
            self.failed_at.add(mark[1])
        self.oldest = record

    def _missing_after(self, chain_seq: int) -> None:
        """Checkpointed records beyond the newest one found: the end was cut off."""
        beyond = sorted(seq for seq in self.expected if seq > chain_seq)
        if not beyond:
            return
        first, last = self.expected[beyond[0]], self.expected[beyond[-1]]
        self.failed_at.update(self.expected[seq][1] for seq in beyond)
        self.problems.append(
            (
                first[0].position,
                f"{_in(self.chain)}records {chain_seq + 1}..{beyond[-1]} are missing "
                f"(the checkpoint of {_stamp(last[1])} saw record {beyond[-1]})",
            )
        )

    def finish(self) -> list[tuple[int, str]]:
        oldest = self.oldest
        if oldest is None:
            self._missing_after(0)
        elif oldest.chain_seq != 1:
            at = 1 if self.lane is None else oldest.seq
            self.problems.append(
                (at, f"{_in(self.chain)}records 1..{oldest.chain_seq - 1} are missing")
            )
        elif oldest.prev_hash != GENESIS_HASH:
            self.problems.append(
                (oldest.seq, f"{_label(oldest)} does not start from the genesis hash")
            )
        return self.problems


def _check_record(
    record: AuditRecord, newer: AuditRecord | None, lane: int | None
) -> tuple[int, str] | None:
    """Problems of one record and of its link to the next newer one (newest-first walk)."""
    problems: list[tuple[int, str]] = []
    if newer is not None:
        if newer.chain_seq != record.chain_seq + 1:
            at = record.seq + 1 if lane is None else newer.seq
            gap = f"{record.chain_seq + 1}..{newer.chain_seq - 1}"
            problems.append((at, f"{_in(record.chain)}records {gap} are missing"))
        elif newer.prev_hash != record.hash:
            problems.append((newer.seq, f"{_label(newer)} does not link to {_label(record)}"))
        elif newer.seq <= record.seq:
            problems.append((newer.seq, f"{_label(newer)} is out of position"))
    # The stored text must hash to the stored hash, and be exactly the canonical text of the
    # content read from it: extra keys or reformatting count as tampering too.
    expected = record_hash(record.chain_seq, record.prev_hash, record.body)
    if expected != record.hash or entry_body(record.entry) != record.body:
        problems.append((record.seq, f"{_label(record)} content does not match its hash"))
    if (lane is None and record.seq != record.chain_seq) or (
        lane is not None
        and (lane_of(record.seq) != lane or chain_seq_of(record.seq) != record.chain_seq)
    ):
        problems.append((record.seq, f"{_label(record)} is out of position"))
    if record.defect:
        problems.append((record.seq, f"{_label(record)}: {record.defect}"))
    return min(problems) if problems else None
