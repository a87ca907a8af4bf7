"""Audit exports page by page, and the offline check of an exported trail.

An export is read in pages of at most `EXPORT_PAGE` lines, each answer holding a signed,
expiring continuation for the next, so neither the app nor the command line ever holds more
than one page. The JSON-lines export carries everything an offline check needs, one object per
line, each with a `type`:

- `{"type": "export", "version": 1, "exported_at", "filter", "whole_trail"}` first;
- `{"type": "checkpoint", "seq", "hash", "at", …}` for every checkpoint of the trail, oldest
  first (whole-trail exports only);
- `{"type": "record", "seq", "prev_hash", "hash", "body"}` for every record, newest first,
  `body` being the exact text the hash covers;
- `{"type": "end", "records", "checkpoints"}` last, so a file cut off anywhere is noticed.

The CSV export is for reading in a spreadsheet: one flat row per record with the action id,
its parameters and the record hash, defused for a `,` as well as a `;` reading.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from shared.audit import GENESIS_HASH, AuditChain, canonical_json, checkpoint_json, record_hash
from shared.audit_query import AuditFilter, AuditQuery
from shared.errors import InvalidInput
from shared.models import LEGACY_CHAIN, AuditRecord
from shared.ports import AuditCheckpoints
from shared.signed_token import TokenSigner

EXPORT_VERSION = 1
EXPORT_PAGE = 5_000  # lines per answer, the default and the most a caller may ask for
CONTINUATION_TTL = timedelta(hours=1)
MAX_CONTINUATION_CHARS = 512
FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}  # the media types (UTF-8)

CSV_FIELDS = (
    "seq",
    "at",
    "event",
    "actor",
    "actor_kind",
    "actor_object_id",
    "action_id",
    "kind",
    "target",
    "params",
    "alert_id",
    "incident_id",
    "rule",
    "reason",
    "result",
    "hash",
    "prev_hash",
)
# A spreadsheet reads a cell starting with one of these as a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Where a reading with another separator, or one confused by a quoted line break, starts a new
# cell: inside a cell, a formula character right after one of these is defused as well.
CELL_BREAKS = (",", ";", "\n", "\r", "\t", '"')
_NEEDS_QUOTES = frozenset(',;"\r\n')


@dataclass(frozen=True)
class ExportPage:
    """One answer: its lines (each ending in a line feed, CSV's in CRLF), how many of them are
    records, how many records the export held so far, and the continuation for the next answer
    (None on the last)."""

    lines: list[str]
    records: int
    total: int
    continuation: str | None


@dataclass(frozen=True)
class _Cursor:
    phase: str  # "c": checkpoints, "r": records
    checkpoints: int  # checkpoints exported so far
    last_seq: int  # the last record exported (0: none yet)
    records: int  # records exported so far


class AuditExport:
    """Pages of an export. A continuation names where the export stands, the filter and format
    it belongs to and when it expires (`CONTINUATION_TTL`), signed with HMAC-SHA256; an edited,
    foreign or expired one is refused with `InvalidInput`."""

    def __init__(
        self,
        query: AuditQuery,
        checkpoints: AuditCheckpoints,
        key: bytes,
        clock: Callable[[], datetime],
    ) -> None:
        self._query = query
        self._checkpoints = checkpoints
        own_key = hmac.new(key, b"audit export continuation", hashlib.sha256).digest()
        self._signer = TokenSigner(own_key)
        self._clock = clock

    async def page(
        self,
        flt: AuditFilter,
        export_format: str,
        limit: int = EXPORT_PAGE,
        continuation: str | None = None,
    ) -> ExportPage:
        if export_format not in FORMATS:
            raise InvalidInput("format must be csv or jsonl")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= EXPORT_PAGE:
            raise InvalidInput(f"limit must be a whole number from 1 to {EXPORT_PAGE}")
        jsonl = export_format == "jsonl"
        whole = not any(asdict(flt).values())
        scope = _scope(flt, export_format)
        if continuation:
            cursor = self._resume(scope, continuation)
            lines: list[str] = []
        else:
            cursor = _Cursor("c" if jsonl and whole else "r", 0, 0, 0)
            lines = [self._header(flt, whole) if jsonl else _csv_line(CSV_FIELDS)]
        budget = limit
        phase, checkpoints, more = cursor.phase, cursor.checkpoints, False
        if phase == "c":
            seen = 0
            async for checkpoint in self._checkpoints.checkpoints():
                seen += 1
                if seen <= checkpoints:
                    continue
                if budget == 0:
                    more = True
                    break
                lines.append(_json_line({**checkpoint, "type": "checkpoint"}))
                checkpoints, budget = checkpoints + 1, budget - 1
            phase = "c" if more else "r"
        records, last_seq = 0, cursor.last_seq
        if not more:
            walk = self._query.matching(flt, before_seq=last_seq or None)
            try:
                async for record in walk:
                    if budget == 0:
                        more = True
                        break
                    lines.append(jsonl_record(record) if jsonl else csv_record(record))
                    records, last_seq, budget = records + 1, record.seq, budget - 1
            finally:
                await walk.aclose()
        total = cursor.records + records
        if not more:
            if jsonl:
                lines.append(
                    _json_line({"type": "end", "records": total, "checkpoints": checkpoints})
                )
            return ExportPage(lines, records, total, None)
        token = self._token(scope, _Cursor(phase, checkpoints, last_seq, total))
        return ExportPage(lines, records, total, token)

    def _header(self, flt: AuditFilter, whole: bool) -> str:
        chosen = {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in asdict(flt).items()
            if value is not None
        }
        return _json_line(
            {
                "type": "export",
                "version": EXPORT_VERSION,
                "exported_at": _utc_text(self._clock()),
                "filter": chosen,
                "whole_trail": whole,
            }
        )

    def _token(self, scope: str, cursor: _Cursor) -> str:
        expires = int((self._clock() + CONTINUATION_TTL).timestamp())
        state = [scope, cursor.phase, cursor.checkpoints, cursor.last_seq, cursor.records, expires]
        return self._signer.seal(state)

    def _resume(self, scope: str, token: str) -> _Cursor:
        invalid = InvalidInput("invalid continuation; start the export again")
        state = self._signer.open(token, MAX_CONTINUATION_CHARS)
        if not isinstance(state, list) or len(state) != 6 or state[0] != scope:
            raise invalid
        _, phase, checkpoints, last_seq, records, expires = state
        numbers = (checkpoints, last_seq, records, expires)
        if phase not in ("c", "r") or not all(_count(n) for n in numbers):
            raise invalid
        if self._clock().timestamp() >= expires:
            raise InvalidInput("the continuation has expired; start the export again")
        return _Cursor(phase, checkpoints, last_seq, records)


def _scope(flt: AuditFilter, export_format: str) -> str:
    return f"{export_format}:{flt.fingerprint()}"


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


def jsonl_record(record: AuditRecord) -> str:
    """A record line: its chain, its number there (`seq`, which the hash covers), its position
    in the whole trail, and the body: the exact text the hash covers."""
    return _json_line(
        {
            "type": "record",
            "chain": record.chain,
            "seq": record.chain_seq,
            "position": record.seq,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
            "body": record.body,
        }
    )


class ChainCheckpoints:
    """`AuditCheckpoints` from the trail's anchor: each checkpoint as `checkpoint_json` writes
    it (`at`, `count`, and per chain the head's `seq`, `hash` and `position`)."""

    def __init__(self, chain: AuditChain) -> None:
        self._chain = chain

    async def checkpoints(self) -> AsyncIterator[dict[str, Any]]:
        for point in await self._chain.checkpoints():
            yield checkpoint_json(point)


# --- CSV -------------------------------------------------------------------------------------


def csv_cell(text: str) -> str:
    """A cell no spreadsheet runs as a formula, read with `,` or `;` as the separator: a
    formula character at the start, or right after a separator, quote or line break inside the
    text, gets an apostrophe before it; a cell holding a separator, quote or line break is
    quoted (RFC 4180)."""
    if any(mark in text for mark in CELL_BREAKS):
        out = []
        for index, char in enumerate(text):
            if index and char.startswith(FORMULA_STARTS) and text[index - 1] in CELL_BREAKS:
                out.append("'")
            out.append(char)
        text = "".join(out)
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    if _NEEDS_QUOTES.intersection(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_line(cells: Iterable[str]) -> str:
    return ",".join(csv_cell(cell) for cell in cells) + "\r\n"


def csv_row(record: AuditRecord) -> dict[str, str]:
    """One record as flat text, in CSV_FIELDS order; times in UTC with an explicit zone."""
    entry = record.entry
    return {
        "seq": str(record.seq),
        "at": _utc_text(entry.at),
        "event": str(entry.event),
        "actor": entry.actor.name,
        "actor_kind": entry.actor.kind,
        "actor_object_id": entry.actor.object_id or "",
        "action_id": entry.action_id or "",
        "kind": entry.kind or "",
        "target": entry.target or "",
        "params": canonical_json(entry.params),
        "alert_id": entry.alert_id or "",
        "incident_id": entry.incident_id or "",
        "rule": entry.rule or "",
        "reason": entry.reason,
        "result": canonical_json(entry.result),
        "hash": record.hash,
        "prev_hash": record.prev_hash,
    }


def csv_record(record: AuditRecord) -> str:
    return _csv_line(csv_row(record).values())


# --- the offline check -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportVerdict:
    """The offline check of an export file. `first_broken_seq` names the first record found
    broken or missing (None when all holds); `problem` says what, and on which line."""

    records_checked: int
    checkpoints_checked: int
    whole_trail: bool
    head_seq: int | None
    head_hash: str | None
    first_broken_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {"verified": self.ok, **asdict(self)}


class _Broken(Exception):
    def __init__(self, seq: int | None, problem: str, fatal: bool = False) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem
        self.fatal = fatal


@dataclass
class _Chain:
    """Where the check stands in one chain: the record read last (the newer neighbour of the
    next one, newest first): its number, back-link and position."""

    seq: int
    prev_hash: str
    position: int


class _ExportCheck:
    """Reads an export line by line (newest record first, by position), in memory bounded by
    the checkpoints and the number of chains. Each chain is checked on its own: hashes over the
    bodies, canonical bodies, and for a whole-trail export the links down to its record 1 and
    every checkpoint's head. A problem is raised as `_Broken` once the line's record is
    accounted for, so reading can go on and the lowest broken record be named."""

    def __init__(self) -> None:
        self.records = 0
        self.checkpoints = 0
        # chain -> number -> (hash, checkpoint time, position) of the heads checkpoints saw.
        self.expected: dict[str, dict[int, tuple[str, str, int]]] = {}
        self.whole = False
        self.head: tuple[int, str] | None = None
        self.chains: dict[str, _Chain] = {}
        self.position: int | None = None  # of the record read last
        self.ended = False
        self.started = False

    def line(self, number: int, text: str) -> None:
        if self.ended:
            raise _Broken(None, f"line {number}: text after the end line", fatal=True)
        try:
            item = json.loads(text)
        except ValueError:
            problem = f"line {number} is not JSON (cut off or edited)"
            raise _Broken(self._next_position(), problem) from None
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "record" and self.started:
            self._record(number, item)
            return
        where = f"line {number}"
        if not self.started:
            if kind != "export" or item.get("version") != EXPORT_VERSION:
                problem = f"{where}: not an audit export of version {EXPORT_VERSION}"
                raise _Broken(None, problem, fatal=True)
            self.started, self.whole = True, item.get("whole_trail") is True
        elif kind == "checkpoint":
            self._checkpoint(where, item)
        elif kind == "end":
            self._end(where, item)
        else:
            raise _Broken(self._next_position(), f"{where}: unknown line type {str(kind)[:40]!r}")

    def _next_position(self) -> int | None:
        """The record expected after the one read last, named when a line cannot be read: in
        the single chain the next lower number; a lane chain's next record could be in any
        chain, so none is named there (the problem text says where reading stopped)."""
        last = self.chains.get(LEGACY_CHAIN)
        if last is None or last.position != self.position or last.seq <= 1:
            return None
        return last.seq - 1

    def _checkpoint(self, where: str, item: dict[str, Any]) -> None:
        heads = item.get("heads")
        if self.records or not isinstance(heads, dict):
            raise _Broken(None, f"{where}: a malformed or misplaced checkpoint")
        at = str(item.get("at", ""))[:40]
        for name, head in heads.items():
            if not isinstance(head, dict):
                raise _Broken(None, f"{where}: a malformed checkpoint head")
            seq, digest, position = head.get("seq"), head.get("hash"), head.get("position")
            if not (_count(seq) and isinstance(digest, str) and _count(position)):
                raise _Broken(None, f"{where}: a malformed checkpoint head")
            self.expected.setdefault(str(name), {})[seq] = (digest, at, position)
        self.checkpoints += 1

    def _record(self, number: int, item: dict[str, Any]) -> None:
        chain, seq, position = item.get("chain"), item.get("seq"), item.get("position")
        prev, digest, body = item.get("prev_hash"), item.get("hash"), item.get("body")
        if not (
            isinstance(chain, str)
            and _count(seq)
            and seq
            and _count(position)
            and position
            and isinstance(prev, str)
            and isinstance(digest, str)
        ):
            raise _Broken(self._next_position(), f"line {number}: a malformed record")
        problem = self._problem(number, chain, seq, position, prev, digest, body)
        if self.head is None:
            self.head = (position, digest)
        if chain not in self.chains and problem is None:
            problem = self._newest_missing(chain, seq)
        self.chains[chain] = _Chain(seq, prev, position)
        self.position = position
        self.records += 1
        if problem is not None:
            raise problem

    def _newest_missing(self, chain: str, seq: int) -> _Broken | None:
        """For the newest record of a chain in a whole-trail export: the checkpoints saw no
        newer one (deleting the newest records is noticed)."""
        heads = self.expected.get(chain, {})
        newest = max(heads, default=0)
        if not self.whole or newest <= seq:
            return None
        _, at, position = heads[newest]
        return _Broken(
            position,
            f"{_label(chain, seq + 1)}..{newest} are missing: the checkpoint of {at} holds "
            f"{_label(chain, newest, position)}",
        )

    def _problem(
        self,
        number: int,
        chain: str,
        seq: int,
        position: int,
        prev: str,
        digest: str,
        body: object,
    ) -> _Broken | None:
        label = _label(chain, seq, position)
        if self.position is not None and position >= self.position:
            return _Broken(position, f"line {number}: {label} is out of order")
        newer = self.chains.get(chain)
        if newer is not None:
            if seq >= newer.seq:
                return _Broken(position, f"line {number}: {label} is out of order in its chain")
            if self.whole and seq != newer.seq - 1:
                return _Broken(
                    _missing(chain, seq + 1, newer.position),
                    f"line {number}: {_label(chain, seq + 1)}..{newer.seq - 1} are missing",
                )
        if not isinstance(body, str) or record_hash(seq, prev, body) != digest:
            return _Broken(position, f"line {number}: {label} content does not match its hash")
        try:
            canonical = canonical_json(json.loads(body)) == body
        except ValueError:
            canonical = False
        if not canonical:
            return _Broken(position, f"line {number}: {label} body is not canonical JSON")
        if newer is not None and self.whole and newer.prev_hash != digest:
            return _Broken(
                newer.position,
                f"line {number}: {_label(chain, newer.seq, newer.position)} does not link "
                f"to {label}",
            )
        expected = self.expected.get(chain, {}).get(seq)
        if expected is not None and expected[0] != digest:
            return _Broken(
                position, f"line {number}: {label} differs from the checkpoint of {expected[1]}"
            )
        return None

    def _end(self, where: str, item: dict[str, Any]) -> None:
        self.ended = True
        found: list[_Broken] = []
        if self.whole:
            for chain, last in self.chains.items():
                if last.seq != 1:
                    found.append(
                        _Broken(
                            _missing(chain, 1, last.position),
                            f"{_label(chain, 1)}..{last.seq - 1} are missing",
                        )
                    )
                elif last.prev_hash != GENESIS_HASH:
                    found.append(
                        _Broken(
                            last.position,
                            f"{_label(chain, 1, last.position)} does not start from the "
                            "genesis hash",
                        )
                    )
            for chain, heads in self.expected.items():
                if chain not in self.chains and heads:
                    newest = max(heads)
                    _, at, position = heads[newest]
                    found.append(
                        _Broken(
                            position,
                            f"every record of chain {chain} is missing: the checkpoint of "
                            f"{at} holds {_label(chain, newest, position)}",
                        )
                    )
        if item.get("records") != self.records or item.get("checkpoints") != self.checkpoints:
            found.append(
                _Broken(None, f"{where}: the end line counts other lines than the file holds")
            )
        if found:
            raise min(found, key=lambda b: (b.seq is None, b.seq or 0))

    def _last_label(self) -> str:
        for chain, last in self.chains.items():
            if last.position == self.position:
                return _label(chain, last.seq, last.position)
        return f"position {self.position}"

    def finish(self) -> None:
        if not self.started:
            raise _Broken(None, "the file is empty")
        if not self.ended:
            after = f"after {self._last_label()}" if self.position else "before any record"
            raise _Broken(self._next_position(), f"the file is cut off {after}: it has no end line")


def _missing(chain: str, seq: int, after: int) -> int:
    """How a missing record is named: in the single chain by its number; a lane record has no
    position of its own, so the record after the gap is named."""
    return seq if chain == LEGACY_CHAIN else after


def _label(chain: str, seq: int, position: int | None = None) -> str:
    if chain == LEGACY_CHAIN:
        return f"record {seq}"
    where = f" (position {position})" if position is not None else ""
    return f"record {chain}#{seq}{where}"


def verify_export(lines: Iterable[str]) -> ExportVerdict:
    """Check an export file offline: every record's hash over its body, canonical bodies, for a
    whole-trail export the links from record 1 (genesis) to the newest without a gap, every
    checkpoint against its record, and the end line against what was read. Reading goes on
    after a problem; the verdict names the lowest broken record."""
    check = _ExportCheck()
    found: list[_Broken] = []
    for number, text in enumerate(lines, 1):
        try:
            check.line(number, text)
        except _Broken as broken:
            found.append(broken)
            if broken.fatal:
                break
    try:
        check.finish()
    except _Broken as broken:
        found.append(broken)
    # The lowest record named wins; a problem naming none only when no record is named.
    first = min(found, key=lambda b: (b.seq is None, b.seq or 0), default=None)
    return ExportVerdict(
        records_checked=check.records,
        checkpoints_checked=check.checkpoints,
        whole_trail=check.whole,
        head_seq=check.head[0] if check.head else None,
        head_hash=check.head[1] if check.head else None,
        first_broken_seq=first.seq if first else None,
        problem=first.problem if first else None,
    )


async def export_lines(
    export: AuditExport,
    flt: AuditFilter,
    export_format: str,
    limit: int = EXPORT_PAGE,
    progress: Callable[[ExportPage], None] | None = None,
) -> AsyncIterator[str]:
    """Every line of an export, following the pages; `progress` hears of each page."""
    continuation: str | None = None
    while True:
        page = await export.page(flt, export_format, limit, continuation)
        if progress is not None:
            progress(page)
        for line in page.lines:
            yield line
        if page.continuation is None:
            return
        continuation = page.continuation
