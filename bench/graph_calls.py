"""Benchmark: what one Graph call costs this process, through the adapter and as raw HTTP.

Reads one user N times through `GraphDirectory.get_user` (msgraph-sdk's request adapter and
middleware, the raw JSON read) and then as a plain httpx GET of the same URL, against the
simulated tenant in this process, warm, one call at a time; then the other calls of a
containment through the adapter, N times each: the account write (enabling the enabled user,
which Graph takes as any write), the sign-out, and a user's roles (two calls). Reports wall
time per call (p50), CPU per call (`time.process_time`; the simulator's server thread is
included, so the difference between adapter and raw HTTP is the adapter's own) and the event
loop's CPU per call (`time.thread_time`: this side alone).

Prints one JSON object. Usage: python bench/graph_calls.py [--calls 300]
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

WARMUP = 20


async def timed(call: Callable[[], Awaitable[Any]], calls: int) -> dict[str, float]:
    for _ in range(WARMUP):
        await call()
    walls: list[float] = []
    cpu_started, loop_started = time.process_time(), time.thread_time()
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - started)
    cpu, loop = time.process_time() - cpu_started, time.thread_time() - loop_started
    return {
        "p50_ms": round(statistics.median(walls) * 1000, 2),
        "cpu_ms_per_call": round(cpu / calls * 1000, 2),
        "event_loop_cpu_ms_per_call": round(loop / calls * 1000, 2),
    }


async def run(calls: int) -> dict[str, Any]:
    import httpx

    from shared.adapters.credentials import build_credential
    from shared.adapters.graph import USER_FIELDS, GraphDirectory, build_graph_client
    from shared.config import Settings
    from shared.simulator import SimulatedTenant, SimUser

    user = SimUser(
        id="00000000-0000-4000-8000-000000000001",
        user_principal_name="user1@contoso.onmicrosoft.com",
        display_name="User 1",
    )
    with SimulatedTenant() as sim:
        sim.add_user(user)
        settings = Settings.model_validate(
            {
                "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
                "GRAPH_BASE_URL": sim.base_url,
                "RESPONDER_CREDENTIAL": "simulator",
                "SIMULATOR_TOKEN": sim.token,
                "RESPONDER_QUEUE": "memory",
            }
        )
        graph = GraphDirectory(build_graph_client(settings, build_credential(settings)))
        adapter = await timed(lambda: graph.get_user(user.id), calls)
        writes = {
            "adapter_set_account_enabled": await timed(
                lambda: graph.set_account_enabled(user.id, True), calls
            ),
            "adapter_revoke_sign_in_sessions": await timed(
                lambda: graph.revoke_sign_in_sessions(user.id), calls
            ),
            "adapter_roles_of_two_calls": await timed(lambda: graph.roles_of(user.id), calls),
        }
        headers = {"Authorization": f"Bearer {sim.token}"}
        url = f"/users/{user.id}?$select={','.join(USER_FIELDS)}"
        async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as client:

            async def raw() -> None:
                response = await client.get(url)
                response.raise_for_status()
                response.json()

            baseline = await timed(raw, calls)
    return {
        "benchmark": "graph_calls",
        "python": sys.version.split()[0],
        "calls": calls,
        "adapter_get_user": adapter,
        "baseline_raw_httpx_get": baseline,
        **writes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.calls))))


if __name__ == "__main__":
    main()
