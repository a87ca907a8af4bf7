"""Benchmark: what a retried action pays to look for an outcome its earlier delivery may have
audited, against Azurite.

A later delivery of an action whose ledger row carries a recording mark (a retry after
throttling or a lost answer, a give-up) looks for its outcome among the records appended
after the mark. The trail holds the action's outcome and then `--records` records of other
targets (the traffic of the minutes between two deliveries); the lookup runs through the
index by the action's target, and, as the baseline, by walking the trail newest first down to
the mark. Reports wall time and Table requests of each, for each trail size.

Prints one JSON object. Usage: python bench/retry_lookup.py [--records 200,2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.data.tables.aio import TableServiceClient  # noqa: E402

from drill.azurite import Azurite  # noqa: E402
from shared.actions.runner import OUTCOME_RECORDS  # noqa: E402
from shared.adapters.audit_index_table import AuditIndexTable  # noqa: E402
from shared.adapters.audit_table import AuditTable  # noqa: E402
from shared.audit import AuditChain  # noqa: E402
from shared.audit_query import index_entries  # noqa: E402
from shared.models import Actor, AuditEntry, AuditEvent  # noqa: E402

TARGET = "adele.vance@contoso.onmicrosoft.com"
ROUNDS = 5


def entry(n: int, target: str) -> AuditEntry:
    return AuditEntry(
        event=AuditEvent.ACTION_EXECUTED,
        actor=Actor(),
        action_id=f"act-{n}",
        kind="disable_account",
        target=target,
        result={"status": "executed", "before": {"accountEnabled": True}},
    )


class Counter:
    """Counts the Table responses the service client sees (retries included)."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, _: Any) -> None:
        self.requests += 1


async def lookup(service: TableServiceClient, counter: Counter, records: int) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    table = await service.create_table(f"BenchRetry{suffix}")
    legacy = await service.create_table(f"BenchRetryIndex{suffix}")
    store = AuditTable(table)
    chain = AuditChain(store, indexer=index_entries, index=AuditIndexTable(legacy, table))
    [outcome] = await chain.append_all([entry(0, TARGET)])
    mark = outcome.seq - 1
    for start in range(1, records + 1, 50):
        batch = range(start, min(start + 50, records + 1))
        await chain.append_all([entry(n, f"user{n}@contoso.com") for n in batch])
    results: dict[str, Any] = {"records_after_mark": records + 1}
    for name, targets in (("index", {"act-0": TARGET}), ("walk", None)):
        walls: list[float] = []
        counter.requests = 0
        for _ in range(ROUNDS):
            started = time.perf_counter()
            found = await chain.find({"act-0"}, OUTCOME_RECORDS, mark, targets)
            walls.append(time.perf_counter() - started)
            if found["act-0"].seq != outcome.seq:
                raise RuntimeError(f"{name}: the outcome was not found")
        results[name] = {
            "ms": round(sorted(walls)[ROUNDS // 2] * 1000, 1),
            "table_requests": counter.requests // ROUNDS,
        }
    return results


async def measure(sizes: list[int]) -> dict[str, Any]:
    counter = Counter()
    with Azurite() as azurite:
        async with TableServiceClient.from_connection_string(
            azurite.connection_string, raw_response_hook=counter
        ) as service:
            runs = [await lookup(service, counter, size) for size in sizes]
    return {"benchmark": "retry_lookup", "rounds": ROUNDS, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", default="200,2000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.records.split(",")]
    print(json.dumps(asyncio.run(measure(sizes))))


if __name__ == "__main__":
    main()
