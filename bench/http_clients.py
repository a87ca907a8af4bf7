"""Benchmark: what one HTTP request costs this process through each client the adapters could
use, against Azurite's table endpoint.

The Graph, Exchange and REST adapters are written against httpx (msgraph-sdk's request adapter
needs it); they send through `shared/adapters/http_transport.py`, an httpx transport over
aiohttp. This times sequential GETs of one URL (Azurite answers 403 to an unsigned request:
one full round trip with a body) through plain aiohttp (the floor), httpx with its own
transport (httpcore), and httpx over the aiohttp transport, alternating in one process: CPU
(`time.process_time`, every thread of the process) and wall time per request, median of the
rounds.

Prints one JSON object. Usage: python bench/http_clients.py [--requests 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from drill.azurite import Azurite  # noqa: E402
from shared.adapters.http_transport import http_client  # noqa: E402

WARMUP = 50
HEADERS = {"x-ms-version": "2019-02-02"}


async def timed(call: Callable[[], Awaitable[int]], count: int) -> tuple[float, float]:
    """CPU and wall milliseconds per request."""
    for _ in range(WARMUP):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        if await call() != 403:
            raise RuntimeError("Azurite did not answer the unsigned request with 403")
    return (
        (time.process_time() - cpu) / count * 1000,
        (time.perf_counter() - wall) / count * 1000,
    )


async def measure(count: int, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[tuple[float, float]]] = {}
    with Azurite() as azurite:
        url = azurite.connection_string.split("TableEndpoint=")[1].split(";")[0]
        url = url.rstrip("/") + "/Tables"
        async with (
            aiohttp.ClientSession() as session,
            httpx.AsyncClient() as plain,
            http_client(30.0) as ours,
        ):

            async def with_aiohttp() -> int:
                async with session.get(url, headers=HEADERS) as response:
                    await response.read()
                    return response.status

            async def with_httpx() -> int:
                return (await plain.get(url, headers=HEADERS)).status_code

            async def with_httpx_over_aiohttp() -> int:
                return (await ours.get(url, headers=HEADERS)).status_code

            clients = {
                "aiohttp": with_aiohttp,
                "httpx_own_transport": with_httpx,
                "httpx_over_aiohttp_as_the_adapters_use_it": with_httpx_over_aiohttp,
            }
            for _ in range(rounds):
                for name, call in clients.items():
                    samples.setdefault(name, []).append(await timed(call, count))

    def summary(runs: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "cpu_ms_per_request": round(statistics.median(c for c, _ in runs), 3),
            "wall_ms_per_request": round(statistics.median(w for _, w in runs), 3),
        }

    return {
        "benchmark": "http_clients",
        "requests": count,
        "rounds": rounds,
        **{name: summary(runs) for name, runs in samples.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.requests, args.rounds))))


if __name__ == "__main__":
    main()
