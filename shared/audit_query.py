"""Audit queries: who did what, when and why, filtered, newest first, in pages (and walked
whole for exports, shared/audit_export.py); and the derived index that keeps selective queries
cheap.

A query with a target, incident, alert, actor, kind or outcome reads one index partition and
point-reads the records it names; without one it walks the chain from the newest record. Either
way every filter is checked against the record's hashed content (`entry`), never against the
index or the audit table's copy columns, so a stale or tampered index can cost reads but cannot
put a wrong record into an answer.

A user target is found by any name the trail knows it by: the target as requested, the UPN the
alert named (`params.target_upn`), and the object id and UPN the directory returned when the
action ran (`result.before`). A query for one name also finds the records filed under the
account's other names, as far as the newest records under the asked name link them.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from shared.errors import InvalidInput
from shared.models import ActionKind, AuditEntry, AuditEvent, AuditRecord, validate_ip_target
from shared.ports import AuditIndex, AuditStore, IndexDimension, IndexEntry
from shared.signed_token import TokenSigner

MAX_VALUE_CHARS = 256
DEFAULT_PAGE = 50
MAX_PAGE = 200
MAX_TOKEN_CHARS = 512
READ_AHEAD = 25  # records point-read at the same time
REINDEX_BATCH = 500
# Records under an asked target read to learn the account's other names (object id, UPN).
IDENTITY_READS = 20
USER_KINDS = frozenset(
    str(kind) for kind in ActionKind if not kind.targets_ip and not kind.targets_breakglass
)
# Entries are stamped when they are made, a moment before they land, so concurrent writers can
# append them slightly out of time order. A walk stops only this far beyond the time range.
CLOCK_SLACK = timedelta(minutes=5)
# The index partition a query reads: the first dimension it filters on, most selective first.
SELECTIVITY = (
    IndexDimension.TARGET,
    IndexDimension.INCIDENT,
    IndexDimension.ALERT,
    IndexDimension.ACTOR,
    IndexDimension.KIND,
    IndexDimension.OUTCOME,
)
_CASE_FOLDED = frozenset({IndexDimension.ACTOR, IndexDimension.KIND, IndexDimension.OUTCOME})


def normalized(dimension: IndexDimension, value: str) -> str:
    """The form a value is indexed and compared in: UPNs and GUIDs lower-cased, addresses in
    canonical CIDR form (`185.220.101.47` is `185.220.101.47/32`), ids exactly as given."""
    text = value.strip()
    if dimension is IndexDimension.TARGET:
        try:
            return validate_ip_target(text)
        except ValueError:
            return text.lower()
    return text.lower() if dimension in _CASE_FOLDED else text


def entry_values(entry: AuditEntry) -> dict[IndexDimension, str]:
    """The values an entry is filed under, normalized; dimensions it has no value for are left
    out."""
    raw = {
        IndexDimension.ACTOR: entry.actor.name,
        IndexDimension.KIND: entry.kind,
        IndexDimension.TARGET: entry.target,
        IndexDimension.INCIDENT: entry.incident_id,
        IndexDimension.ALERT: entry.alert_id,
        IndexDimension.OUTCOME: str(entry.event),
    }
    return {dim: normalized(dim, value) for dim, value in raw.items() if value}


def identities(entry: AuditEntry) -> frozenset[str]:
    """The names a record knows its target by, normalized: the target, and for a user action
    the UPN the alert named and the object id and UPN the directory returned."""
    names: list[object] = [entry.target]
    if entry.kind in USER_KINDS:
        before = entry.result.get("before")
        seen = before if isinstance(before, dict) else {}
        names += [entry.params.get("target_upn"), seen.get("id"), seen.get("userPrincipalName")]
    return frozenset(
        normalized(IndexDimension.TARGET, name)
        for name in names
        if isinstance(name, str) and name.strip() and len(name) <= MAX_VALUE_CHARS
    )


def index_entries(record: AuditRecord) -> list[IndexEntry]:
    values = entry_values(record.entry)
    filed = [(dimension, value) for dimension, value in values.items()]
    filed += [
        (IndexDimension.TARGET, name)
        for name in sorted(identities(record.entry))
        if name != values.get(IndexDimension.TARGET)
    ]
    return [IndexEntry(dimension, value, record.seq, record.entry.at) for dimension, value in filed]


@dataclass(frozen=True)
class AuditFilter:
    """What a query asks for. Times are a half-open range: `since` <= at < `until`. Values are
    normalized on construction; bad ones raise `InvalidInput`."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    kind: str | None = None
    target: str | None = None
    incident: str | None = None
    alert: str | None = None
    outcome: str | None = None

    TIMES: ClassVar[tuple[str, ...]] = ("since", "until")

    def __post_init__(self) -> None:
        for name in self.TIMES:
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        for dimension in IndexDimension:
            value = getattr(self, dimension.value)
            if value is None:
                continue
            if len(value) > MAX_VALUE_CHARS:
                raise InvalidInput(f"{dimension} is longer than {MAX_VALUE_CHARS} characters")
            text = normalized(dimension, value)
            object.__setattr__(self, dimension.value, text or None)
        if self.outcome is not None and "." not in self.outcome:
            # `executed` for `action.executed`: the action outcomes are asked for most.
            shorthand = f"action.{self.outcome}"
            if shorthand in {str(event) for event in AuditEvent}:
                object.__setattr__(self, "outcome", shorthand)
        _check_known("kind", self.kind, [str(kind) for kind in ActionKind])
        _check_known("outcome", self.outcome, [str(event) for event in AuditEvent])
        if self.since and self.until and self.since > self.until:
            raise InvalidInput("since must not be later than until")

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> AuditFilter:
        """A filter from query-string (or command-line) values; empty values count as unset."""
        known = cls.parameter_names()
        unknown = sorted(name for name in params if name not in known)
        if unknown:
            shown = ", ".join(repr(name[:40]) for name in unknown[:5])
            raise InvalidInput(f"unknown parameter {shown}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, raw in params.items():
            if len(raw) > MAX_VALUE_CHARS:
                raise InvalidInput(f"{name} is longer than {MAX_VALUE_CHARS} characters")
            text = raw.strip()
            if text:
                values[name] = _parse_time(name, text) if name in cls.TIMES else text
        return cls(**values)

    def indexed(self) -> dict[IndexDimension, str]:
        values = {dimension: getattr(self, dimension.value) for dimension in IndexDimension}
        return {dimension: value for dimension, value in values.items() if value is not None}

    def matches(self, entry: AuditEntry, targets: frozenset[str] | None = None) -> bool:
        """Whether `entry` is asked for; `targets` are the names of the asked target's account
        (the asked name alone when not given)."""
        if self.since is not None and entry.at < self.since:
            return False
        if self.until is not None and entry.at >= self.until:
            return False
        wanted = self.indexed()
        if not wanted:
            return True
        found = entry_values(entry)
        for dimension, value in wanted.items():
            if dimension is IndexDimension.TARGET:
                if not identities(entry) & (targets or {value}):
                    return False
            elif found.get(dimension) != value:
                return False
        return True

    def fingerprint(self) -> str:
        values = {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in asdict(self).items()
        }
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _parse_time(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{name} must be an ISO 8601 date-time such as 2025-01-31T08:00:00Z"
        ) from None
    # Far-off dates would overflow the clock-slack arithmetic; no audit record is that old.
    if not 2000 <= value.year <= 9000:
        raise InvalidInput(f"{name} must lie between the years 2000 and 9000")
    return value


def _check_known(name: str, value: str | None, known: list[str]) -> None:
    if value is not None and value not in known:
        raise InvalidInput(f"unknown {name} {value[:60]!r}; known: {', '.join(known)}")


@dataclass
class AuditPage:
    records: list[AuditRecord]
    continuation: str | None


@dataclass(frozen=True)
class IndexRebuild:
    records: int
    entries: int


class AuditQuery:
    """Pages and streams of audit records matching a filter, newest first.

    Continuation tokens are opaque: the last sequence number returned and the filter's
    fingerprint, signed with `cursor_key` (HMAC-SHA256), so a token is refused when it was
    edited or belongs to another filter."""

    def __init__(self, store: AuditStore, index: AuditIndex, cursor_key: bytes) -> None:
        self._store = store
        self._index = index
        self._signer = TokenSigner(cursor_key)

    async def page(
        self, flt: AuditFilter, limit: int = DEFAULT_PAGE, continuation: str | None = None
    ) -> AuditPage:
        """Up to `limit` matches, and a continuation token when more may follow (the last
        page a token leads to can be empty)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_PAGE}")
        before = self._resume(flt, continuation) if continuation else None
        records: list[AuditRecord] = []
        walk = self._walk(flt, before, min(limit, READ_AHEAD))
        try:
            async for record in walk:
                records.append(record)
                if len(records) == limit:
                    break
        finally:
            await walk.aclose()
        more = len(records) == limit and records[-1].seq > 1
        return AuditPage(records, self._token(flt, records[-1].seq) if more else None)

    def matching(
        self, flt: AuditFilter, before_seq: int | None = None
    ) -> AsyncGenerator[AuditRecord, None]:
        """Every match (with `before_seq`, those below it), newest first, read as it is
        consumed (for exports)."""
        return self._walk(flt, before_seq, READ_AHEAD)

    async def index_records(self, records: list[AuditRecord]) -> int:
        """File records in the index (the audit chain's listener); returns the entries written."""
        entries = [entry for record in records for entry in index_entries(record)]
        if entries:
            await self._index.add(entries)
        return len(entries)

    async def reindex(self) -> IndexRebuild:
        """Rebuild the index by walking the whole chain. Entries are upserts, so this is safe
        while the app appends."""
        records = entries = 0
        batch: list[AuditRecord] = []
        async for record in self._store.newest_first():
            batch.append(record)
            if len(batch) == REINDEX_BATCH:
                entries += await self.index_records(batch)
                records, batch = records + len(batch), []
        entries += await self.index_records(batch)
        return IndexRebuild(records + len(batch), entries)

    async def _walk(
        self, flt: AuditFilter, before: int | None, read_ahead: int
    ) -> AsyncGenerator[AuditRecord, None]:
        if flt.until is not None and before is None:
            before = await self._skip_newer_than(flt.until)
        floor = flt.since - CLOCK_SLACK if flt.since is not None else None
        targets: frozenset[str] | None = None
        known: dict[int, AuditRecord] = {}
        if flt.target is not None:
            targets, known = await self._account_names(flt.target)
        candidates = self._candidates(flt, before, read_ahead, targets, known)
        try:
            async for record in candidates:
                if floor is not None and record.entry.at < floor:
                    return
                if flt.matches(record.entry, targets):
                    yield record
        finally:
            await candidates.aclose()

    async def _account_names(self, target: str) -> tuple[frozenset[str], dict[int, AuditRecord]]:
        """Every name of the asked target's account that its newest records link to it (a
        record of a run action carries the object id and UPN together), and those records."""
        seqs: list[int] = []
        source = self._index.seqs(IndexDimension.TARGET, target)
        try:
            async for seq in source:
                seqs.append(seq)
                if len(seqs) == IDENTITY_READS:
                    break
        finally:
            await _close(source)
        records = await self._read(seqs, {})
        names = {target}
        for record in records:
            found = identities(record.entry)
            if target in found:
                names |= found
        return frozenset(names), {record.seq: record for record in records}

    async def _candidates(
        self,
        flt: AuditFilter,
        before: int | None,
        read_ahead: int,
        targets: frozenset[str] | None,
        known: dict[int, AuditRecord],
    ) -> AsyncGenerator[AuditRecord, None]:
        """Records that may match, newest first: the index partitions' of the most selective
        filter (one per name of an asked target), or the whole chain's."""
        indexed = flt.indexed()
        source: AsyncIterator[Any]
        if not indexed:
            source = self._store.newest_first(before)
            try:
                async for record in source:
                    yield record
            finally:
                await _close(source)
            return
        dimension = next(dim for dim in SELECTIVITY if dim in indexed)
        values = sorted(targets) if targets and dimension is IndexDimension.TARGET else []
        if len(values) > 1:
            source = _merged([self._index.seqs(dimension, value, before) for value in values])
        else:
            source = self._index.seqs(dimension, indexed[dimension], before)
        try:
            batch: list[int] = []
            async for seq in source:
                batch.append(seq)
                if len(batch) == read_ahead:
                    for record in await self._read(batch, known):
                        yield record
                    batch = []
            for record in await self._read(batch, known):
                yield record
        finally:
            await _close(source)

    async def _read(self, seqs: list[int], known: dict[int, AuditRecord]) -> list[AuditRecord]:
        found = await asyncio.gather(
            *(_known(known[seq]) if seq in known else self._store.get(seq) for seq in seqs)
        )
        # An index entry without its record (a rebuilt or edited trail) points nowhere.
        return [record for record in found if record is not None]

    async def _skip_newer_than(self, until: datetime) -> int | None:
        """A sequence number below which every record of the range lies: bisects the chain,
        which is in time order up to CLOCK_SLACK, in a few point reads."""
        head = await self._store.head()
        if head is None or head.entry.at < until + CLOCK_SLACK:
            return None
        low, high = 1, head.seq
        while low < high:
            middle = (low + high) // 2
            record = await self._store.get(middle)
            if record is None:
                break  # a gap in the chain: keep the bound found so far
            if record.entry.at >= until + CLOCK_SLACK:
                high = middle
            else:
                low = middle + 1
        return high

    def _token(self, flt: AuditFilter, last_seq: int) -> str:
        return self._signer.seal({"s": last_seq, "f": flt.fingerprint()})

    def _resume(self, flt: AuditFilter, token: str) -> int:
        invalid = InvalidInput("invalid continuation token")
        state = self._signer.open(token, MAX_TOKEN_CHARS)
        if not isinstance(state, dict) or state.get("f") != flt.fingerprint():
            raise invalid
        last_seq = state.get("s")
        if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 1:
            raise invalid
        return last_seq


async def _close(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def _known(record: AuditRecord) -> AuditRecord:
    return record


async def _merged(sources: list[AsyncIterator[int]]) -> AsyncGenerator[int, None]:
    """The sequence numbers of several newest-first streams, newest first, each once."""
    heads: list[tuple[int, int]] = []
    try:
        for number, source in enumerate(sources):
            seq = await anext(source, None)
            if seq is not None:
                heapq.heappush(heads, (-seq, number))
        last = None
        while heads:
            negated, number = heapq.heappop(heads)
            if -negated != last:
                last = -negated
                yield last
            seq = await anext(sources[number], None)
            if seq is not None:
                heapq.heappush(heads, (-seq, number))
    finally:
        for source in sources:
            await _close(source)


# --- rows --------------------------------------------------------------------------------

ROW_FIELDS = (
    "seq",
    "at",
    "event",
    "actor",
    "actor_kind",
    "kind",
    "target",
    "alert_id",
    "incident_id",
    "rule",
    "reason",
    "result",
    "hash",
    "prev_hash",
)


def to_row(record: AuditRecord) -> dict[str, str]:
    """One record as a flat row of text, in ROW_FIELDS order."""
    entry = record.entry
    return {
        "seq": str(record.seq),
        "at": entry.at.isoformat(),
        "event": str(entry.event),
        "actor": entry.actor.name,
        "actor_kind": entry.actor.kind,
        "kind": entry.kind or "",
        "target": entry.target or "",
        "alert_id": entry.alert_id or "",
        "incident_id": entry.incident_id or "",
        "rule": entry.rule or "",
        "reason": entry.reason,
        "result": json.dumps(
            entry.result, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        "hash": record.hash,
        "prev_hash": record.prev_hash,
    }


def page_row(record: AuditRecord) -> dict[str, str]:
    """One record as the audit page shows it: the flat row, plus the action id, the
    parameters and the names of the target as the trail recorded them at the time (from the
    alert, or from the directory when the action ran)."""
    entry = record.entry
    before = entry.result.get("before")
    seen = before if isinstance(before, dict) and entry.kind in USER_KINDS else {}
    upn = entry.params.get("target_upn") or seen.get("userPrincipalName")
    name = entry.params.get("target_name") or seen.get("displayName")
    return {
        **to_row(record),
        "action_id": entry.action_id or "",
        "params": json.dumps(
            entry.params, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        "target_upn": upn if isinstance(upn, str) else "",
        "target_name": name if isinstance(name, str) else "",
    }
