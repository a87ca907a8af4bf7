"""Benchmark: the paged audit export and the offline check of an exported file.

Builds trails of N records in memory (a realistic entry each, about 700 bytes of body), then
exports each whole as JSON Lines page by page into a file, the way `responder audit export`
does, with every page also joined into one response body, the way `GET /api/audit/export`
answers. Reports the peak memory the export allocated (tracemalloc; the trail itself is built
before tracing starts) for each N, so a flat peak from 10,000 to 100,000 records shows that
memory is bounded by the page, not the trail; and the records per second `verify_export`
checks reading the largest file back, by the wall clock and by the process's CPU time (on a
busy machine the wall-clock figure is a lower bound). No storage, no network.

Prints one JSON object. Usage: python bench/export.py [--records 10000,100000] [--page 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.audit import GENESIS_HASH, chain_entry  # noqa: E402
from shared.audit_export import AuditExport, verify_export  # noqa: E402
from shared.audit_query import AuditFilter, AuditQuery  # noqa: E402
from shared.models import LEGACY_CHAIN, Actor, AuditEntry, AuditEvent, AuditRecord  # noqa: E402
from shared.ports import ChainHead, IndexDimension, IndexEntry, NoCheckpoints  # noqa: E402

START = datetime(2026, 3, 14, 8, 0, tzinfo=UTC)


class ListStore:
    """An `AuditStore` over a list built up front (record n at index n - 1)."""

    chains: tuple[str, ...] = (LEGACY_CHAIN,)

    def __init__(self, records: list[AuditRecord]) -> None:
        self._records = records

    async def head(self) -> AuditRecord | None:
        return self._records[-1] if self._records else None

    async def chain_head(self, chain: str) -> ChainHead | None:
        top = self._records[-1] if self._records and chain == LEGACY_CHAIN else None
        return ChainHead(chain, top.seq, top.hash, top.seq) if top else None

    async def heads(self) -> dict[str, ChainHead]:
        head = await self.chain_head(LEGACY_CHAIN)
        return {LEGACY_CHAIN: head} if head else {}

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        raise NotImplementedError("the benchmark trail is read-only")

    async def get(self, seq: int) -> AuditRecord | None:
        return self._records[seq - 1] if 1 <= seq <= len(self._records) else None

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        top = len(self._records) if before_seq is None else min(before_seq - 1, len(self._records))
        for seq in range(top, 0, -1):
            yield self._records[seq - 1]

    def chain_newest_first(self, chain: str, whole: bool = False) -> AsyncIterator[AuditRecord]:
        return self.newest_first()


class NoIndex:
    """Unfiltered exports never read the index."""

    async def add(self, entries: list[IndexEntry]) -> None:
        return None

    def seqs(
        self,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> AsyncIterator[int]:
        raise NotImplementedError("an unfiltered export reads no index")


def build(count: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev = GENESIS_HASH
    for n in range(1, count + 1):
        entry = AuditEntry(
            event=AuditEvent.ACTION_EXECUTED,
            actor=Actor(),
            action_id=f"act-{n:032x}",
            kind="disable_account",
            target=f"user{n % 997}@contoso.onmicrosoft.com",
            params={"ttl_minutes": 240},
            alert_id=f"graph_alerts_v2:da6375512276775{n:05d}",
            incident_id=str(n % 211),
            rule="contain-compromised-user",
            reason="rule contain-compromised-user: Anmeldung aus Köln – verdächtig",
            result={
                "status": "executed",
                "before": {"accountEnabled": True},
                "after": {"accountEnabled": False},
                "request_ids": [f"7f0c2c2e-0d4b-4b7a-9d1e-{n:012x}"],
            },
            at=START + timedelta(seconds=n),
        )
        record = chain_entry(n, prev, entry)
        records.append(record)
        prev = record.hash
    return records


async def export_to(path: Path, export: AuditExport, page_size: int) -> tuple[int, int]:
    """The whole trail into `path`, page by page; the pages and the largest response body."""
    pages = largest = 0
    continuation: str | None = None
    with path.open("w", encoding="utf-8", newline="") as out:
        while True:
            page = await export.page(AuditFilter(), "jsonl", page_size, continuation)
            body = "".join(page.lines)  # what the HTTP route answers with
            largest = max(largest, len(body.encode()))
            out.write(body)
            pages += 1
            if page.continuation is None:
                return pages, largest
            continuation = page.continuation


def measure(count: int, page_size: int, folder: Path) -> dict[str, float | int]:
    records = build(count)
    export = AuditExport(
        AuditQuery(ListStore(records), NoIndex(), b"k" * 32),
        NoCheckpoints(),
        b"k" * 32,
        lambda: datetime.now(UTC),
    )
    path = folder / f"trail-{count}.jsonl"
    start, cpu = time.perf_counter(), time.process_time()
    asyncio.run(export_to(path, export, page_size))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tracemalloc.start()
    pages, largest = asyncio.run(export_to(path, export, page_size))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "records": count,
        "pages": pages,
        "largest_response_bytes": largest,
        "file_bytes": path.stat().st_size,
        "export_seconds": round(seconds, 2),
        "export_records_per_s": round(count / seconds),
        "export_records_per_cpu_s": round(count / cpu),
        "peak_traced_mib": round(peak / 2**20, 2),
    }


def verify_speed(path: Path) -> dict[str, float | int | bool]:
    start, cpu = time.perf_counter(), time.process_time()
    with path.open(encoding="utf-8", newline="\n") as lines:
        verdict = verify_export(lines)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "verified": verdict.ok,
        "records": verdict.records_checked,
        "seconds": round(seconds, 2),
        "records_per_s": round(verdict.records_checked / seconds),
        "records_per_cpu_s": round(verdict.records_checked / cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", default="10000,100000", help="trail sizes, comma-separated")
    parser.add_argument("--page", type=int, default=5000, help="lines per page")
    args = parser.parse_args()
    sizes = [int(size) for size in args.records.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        runs = [measure(count, args.page, Path(folder)) for count in sizes]
        check = verify_speed(Path(folder) / f"trail-{max(sizes)}.jsonl")
    peaks = [float(run["peak_traced_mib"]) for run in runs]
    print(
        json.dumps(
            {
                "benchmark": "audit export",
                "page_size": args.page,
                "exports": runs,
                "peak_ratio_largest_to_smallest": round(peaks[-1] / peaks[0], 2),
                "offline_verify": check,
                "verify_target_records_per_s": 20_000,
                "verify_target_met": check["records_per_s"] >= 20_000,
                "verify_target_met_in_cpu_time": check["records_per_cpu_s"] >= 20_000,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
