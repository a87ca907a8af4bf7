"""Benchmark: concurrent writers on one audit trail, against Azurite.

`--writers` independent writers (as separate Function instances would be) each append
`--per-writer` records, one at a time; the same number of plain concurrent inserts of rows of
the same size into another table is measured in the same run, as the baseline. Reported for
the trail's records alone and as the app is wired (each record's index rows in its own
transaction), with failed appends, records that landed, whether each trail verifies, and peak
memory.

Prints one JSON object. Usage: python bench/audit_writers.py [--writers 8] [--per-writer 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.data.tables.aio import TableServiceClient  # noqa: E402

from drill.audit_trail import append_load, plain_inserts  # noqa: E402
from drill.azurite import Azurite  # noqa: E402
from shared.adapters.audit_table import AuditTable  # noqa: E402
from shared.audit import AuditChain  # noqa: E402
from shared.audit_query import index_entries  # noqa: E402


async def measure(writers: int, per_writer: int) -> dict[str, Any]:
    with Azurite() as azurite:
        async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
            suffix = uuid.uuid4().hex[:8]
            trail = await service.create_table(f"BenchTrail{suffix}")
            plain = await service.create_table(f"BenchPlain{suffix}")
            indexed_trail = await service.create_table(f"BenchIndexed{suffix}")
            load = await append_load(trail, writers, per_writer)
            plain_s = await plain_inserts(plain, writers, per_writer)
            indexed = await append_load(indexed_trail, writers, per_writer, index_entries)
            report = await AuditChain(AuditTable(trail)).verify()
            indexed_report = await AuditChain(AuditTable(indexed_trail)).verify()
    plain_per_s = writers * per_writer / plain_s
    appends_per_s = load.records / load.seconds
    indexed_per_s = indexed.records / indexed.seconds
    return {
        "writers": writers,
        "per_writer": per_writer,
        "records": load.records,
        "append_failures": load.failures,
        "appends_per_s": round(appends_per_s, 1),
        "plain_inserts_per_s": round(plain_per_s, 1),
        "ratio": round(appends_per_s / plain_per_s, 3),
        "chains_used": len(report.chains),
        "verified": report.ok,
        "indexed_records": indexed.records,
        "indexed_append_failures": indexed.failures,
        "indexed_verified": indexed_report.ok,
        "indexed_appends_per_s": round(indexed_per_s, 1),
        "indexed_ratio": round(indexed_per_s / plain_per_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--per-writer", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.writers, args.per_writer))))


if __name__ == "__main__":
    main()
