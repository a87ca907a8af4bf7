"""Benchmark: what one Table Storage request costs this process, with and without the
environment's proxy settings looked up per request, against Azurite.

azure-core's aiohttp transport, told to use the environment's settings (its default), looks up
the proxy for each request's URL and reads ~/.netrc on a worker thread of the event loop. The
responder reads the environment once when it builds its storage clients and keeps the
per-request lookup only when a proxy is configured (`shared/adapters/proxy_settings.py`).
This times sequential point reads of one entity both ways, alternating, in one process:
CPU (`time.process_time`, every thread of the process) and wall time per request, median of
the rounds.

Prints one JSON object. Usage: python bench/storage_requests.py [--reads 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.data.tables.aio import TableServiceClient  # noqa: E402

from drill.azurite import Azurite  # noqa: E402
from shared.adapters.proxy_settings import storage_client_options  # noqa: E402

WARMUP = 20


async def point_reads(
    connection: str, table: str, per_request: bool, reads: int
) -> tuple[float, float]:
    """CPU and wall milliseconds per point read."""
    async with TableServiceClient.from_connection_string(
        connection, use_env_settings=per_request
    ) as service:
        client = service.get_table_client(table)
        for _ in range(WARMUP):
            await client.get_entity("p", "r")
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(reads):
            await client.get_entity("p", "r")
        return (
            (time.process_time() - cpu) / reads * 1000,
            (time.perf_counter() - wall) / reads * 1000,
        )


async def measure(reads: int, rounds: int) -> dict[str, Any]:
    samples: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with Azurite() as azurite:
        table = f"BenchRequests{uuid.uuid4().hex[:8]}"
        async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
            client = await service.create_table(table)
            await client.upsert_entity({"PartitionKey": "p", "RowKey": "r", "Value": 1})
        for _ in range(rounds):
            for per_request in (True, False):
                samples[per_request].append(
                    await point_reads(azurite.connection_string, table, per_request, reads)
                )

    def summary(runs: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "cpu_ms_per_request": round(statistics.median(c for c, _ in runs), 2),
            "wall_ms_per_request": round(statistics.median(w for _, w in runs), 2),
        }

    return {
        "benchmark": "storage_requests",
        "reads": reads,
        "rounds": rounds,
        "environment_per_request": summary(samples[True]),
        "environment_once": summary(samples[False]),
        "as_configured_here": storage_client_options(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.reads, args.rounds))))


if __name__ == "__main__":
    main()
