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

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from shared.audit import GENESIS_HASH, canonical_json, record_hash
from shared.audit_query import AuditFilter, AuditQuery
from shared.errors import InvalidInput
from shared.models import AuditRecord
from shared.ports import AuditCheckpoints

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
        self._key = hmac.new(key, b"audit export continuation", hashlib.sha256).digest()
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
        payload = _b64(json.dumps(state, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._sign(payload))}"

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()

    def _resume(self, scope: str, token: str) -> _Cursor:
        invalid = InvalidInput("invalid continuation; start the export again")
        if len(token) > MAX_CONTINUATION_CHARS or not token.isascii() or token.count(".") != 1:
            raise invalid
        payload, signature = token.split(".")
        try:
            signed = hmac.compare_digest(_unb64(signature), self._sign(payload))
            state = json.loads(_unb64(payload)) if signed else None
        except (ValueError, binascii.Error):
            raise invalid from None
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_line(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


def jsonl_record(record: AuditRecord) -> str:
    """A record line: the body is the exact text the hash covers."""
    return _json_line(
        {
            "type": "record",
            "seq": record.seq,
            "prev_hash": record.prev_hash,
            "hash": record.hash,
            "body": record.body,
        }
    )


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


class _ExportCheck:
    """Reads an export line by line (newest record first), in constant memory but for the
    checkpoints. A problem is raised as `_Broken` once the line's record is accounted for, so
    reading can go on and the lowest broken record be named."""

    def __init__(self) -> None:
        self.records = 0
        self.checkpoints: dict[int, tuple[str, str]] = {}
        self.whole = False
        self.head: tuple[int, str] | None = None
        # The record read last (newer than the one being read): seq, prev_hash.
        self.last: tuple[int, str] | None = None
        self.ended = False
        self.started = False

    def line(self, number: int, text: str) -> None:
        if self.ended:
            raise _Broken(None, f"line {number}: text after the end line", fatal=True)
        try:
            item = json.loads(text)
        except ValueError:
            problem = f"line {number} is not JSON (cut off or edited)"
            raise _Broken(self._next_seq(), problem) from None
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
            raise _Broken(self._next_seq(), f"{where}: unknown line type {str(kind)[:40]!r}")

    def _next_seq(self) -> int | None:
        """The record expected next (newest first), named when a line cannot be read."""
        if self.last is None:
            return None
        return self.last[0] - 1 if self.last[0] > 1 else None

    def _checkpoint(self, where: str, item: dict[str, Any]) -> None:
        seq, digest = item.get("seq"), item.get("hash")
        if self.records or not _count(seq) or not isinstance(digest, str):
            raise _Broken(None, f"{where}: a malformed or misplaced checkpoint")
        self.checkpoints[seq] = (digest, str(item.get("at", "")))

    def _record(self, number: int, item: dict[str, Any]) -> None:
        seq, prev, digest, body = (
            item.get("seq"),
            item.get("prev_hash"),
            item.get("hash"),
            item.get("body"),
        )
        if not (_count(seq) and seq and isinstance(prev, str) and isinstance(digest, str)):
            raise _Broken(self._next_seq(), f"line {number}: a malformed record")
        problem = self._problem(number, seq, prev, digest, body)
        if self.head is None:
            self.head = (seq, digest)
            newest = max(self.checkpoints, default=0)
            if self.whole and newest > seq and problem is None:
                problem = _Broken(
                    seq + 1,
                    f"records {seq + 1}..{newest} are missing: "
                    f"the checkpoint of {self.checkpoints[newest][1]} holds {newest}",
                )
        self.last = (seq, prev)
        self.records += 1
        if problem is not None:
            raise problem

    def _problem(
        self, number: int, seq: int, prev: str, digest: str, body: object
    ) -> _Broken | None:
        if self.last is not None:
            newer_seq, newer_prev = self.last
            if seq >= newer_seq:
                return _Broken(
                    seq, f"line {number}: record {seq} is out of order after {newer_seq}"
                )
            if self.whole and seq != newer_seq - 1:
                return _Broken(
                    seq + 1, f"line {number}: records {seq + 1}..{newer_seq - 1} are missing"
                )
        if not isinstance(body, str) or record_hash(seq, prev, body) != digest:
            return _Broken(seq, f"line {number}: record {seq} content does not match its hash")
        try:
            canonical = canonical_json(json.loads(body)) == body
        except ValueError:
            canonical = False
        if not canonical:
            return _Broken(seq, f"line {number}: record {seq} body is not canonical JSON")
        if self.last is not None and self.whole and self.last[1] != digest:
            return _Broken(
                self.last[0], f"line {number}: record {self.last[0]} does not link to {seq}"
            )
        if seq in self.checkpoints and self.checkpoints[seq][0] != digest:
            at = self.checkpoints[seq][1]
            return _Broken(seq, f"line {number}: record {seq} differs from the checkpoint of {at}")
        return None

    def _end(self, where: str, item: dict[str, Any]) -> None:
        self.ended = True
        if self.whole and self.last is not None:
            if self.last[0] != 1:
                raise _Broken(1, f"records 1..{self.last[0] - 1} are missing")
            if self.last[1] != GENESIS_HASH:
                raise _Broken(1, "record 1 does not start from the genesis hash")
        if item.get("records") != self.records or item.get("checkpoints") != len(self.checkpoints):
            raise _Broken(None, f"{where}: the end line counts other lines than the file holds")

    def finish(self) -> None:
        if not self.started:
            raise _Broken(None, "the file is empty")
        if not self.ended:
            after = f"after record {self.last[0]}" if self.last else "before any record"
            raise _Broken(self._next_seq(), f"the file is cut off {after}: it has no end line")


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
        checkpoints_checked=len(check.checkpoints),
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
