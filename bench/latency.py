"""Benchmark: cold import of the Function App, and warm alert-to-contained latency.

Cold import: `import function_app` in fresh interpreters (what a new worker pays before it can
serve), plus the one-off import of the Graph SDK that the first Graph call pays.
Warm latency: N alerts, one compromised user each, posted to the webhook function; each is
timed from the POST until both its actions have executed and been audited (the executor is
invoked through the in-memory queue). Runs against the simulated tenant and Azurite.

Prints one JSON object. Usage: python bench/latency.py [--alerts 200] [--imports 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drill.azurite import Azurite  # noqa: E402
from drill.host import LocalHost  # noqa: E402
from functions.http import KEY_HEADER  # noqa: E402
from shared import container  # noqa: E402
from shared.adapters.queue import InMemoryActionQueue  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.simulator import SimulatedTenant, SimUser  # noqa: E402

WARMUP = 10


def import_seconds(module: str, runs: int) -> list[float]:
    script = (
        f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    )
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
        )
        samples.append(float(out.stdout.strip()))
    return samples


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def alert_for(n: int, user: SimUser) -> dict[str, Any]:
    return {
        "id": f"bench-{n}",
        "title": "Token replay from an anonymising proxy",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "user_id": user.id, "roles": ["compromised"]}],
    }


async def warm_latency(count: int) -> dict[str, Any]:
    users = [
        SimUser(
            id=f"00000000-0000-4000-8000-{n:012d}",
            user_principal_name=f"user{n}@contoso.onmicrosoft.com",
            display_name=f"User {n}",
        )
        for n in range(count + WARMUP)
    ]
    with SimulatedTenant() as sim, Azurite() as azurite:
        for user in users:
            sim.add_user(user)
        secret = secrets.token_urlsafe(32)
        settings = Settings.model_validate(
            {
                "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
                "RESPONDER_AUDIT_TABLE": f"BenchAudit{secrets.token_hex(4)}",
                "RESPONDER_STATE_TABLE": f"BenchState{secrets.token_hex(4)}",
                "GRAPH_BASE_URL": sim.base_url,
                "RESPONDER_CREDENTIAL": "simulator",
                "SIMULATOR_TOKEN": sim.token,
                "RESPONDER_QUEUE": "memory",
                "RESPONDER_WEBHOOK_SECRET": secret,
                # Every alert must run to containment: the budget would hold all but 10.
                "AUTO_DISABLE_BUDGET": 10_000,
            }
        )
        services = await container.Container(settings).prepare()
        container.install(services)
        queue = services.queue
        assert isinstance(queue, InMemoryActionQueue)
        host = LocalHost()
        samples: list[float] = []
        try:
            for n, user in enumerate(users):
                started = time.perf_counter()
                response = await host.post_json(
                    "ingest_alert", "alerts", alert_for(n, user), {KEY_HEADER: secret}
                )
                if response.status_code != 202:
                    raise RuntimeError(f"webhook answered {response.status_code}")
                if await host.pump(queue) != 2:
                    raise RuntimeError("expected two actions per alert")
                if n >= WARMUP:
                    samples.append((time.perf_counter() - started) * 1000)
            contained = sum(not sim.user(u.id).account_enabled for u in users)
            verification = await services.chain.verify()
        finally:
            container.install(None)
            await services.close()
    if contained != len(users) or not verification.ok:
        raise RuntimeError("benchmark run did not contain every user or verify the chain")
    return {
        "alerts": count,
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
        "mean_ms": round(statistics.fmean(samples), 2),
        "audit_records": verification.records_checked,
        "audit_verified": verification.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--imports", type=int, default=5)
    args = parser.parse_args()
    app_import = import_seconds("function_app", args.imports)
    graph_import = import_seconds("shared.adapters.graph", args.imports)
    latency = asyncio.run(warm_latency(args.alerts))
    result = {
        "benchmark": "latency",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "cold_import_function_app_ms": {
            "median": round(statistics.median(app_import) * 1000, 1),
            "min": round(min(app_import) * 1000, 1),
            "runs": args.imports,
        },
        "cold_import_graph_adapter_ms": {
            "median": round(statistics.median(graph_import) * 1000, 1),
            "min": round(min(graph_import) * 1000, 1),
            "runs": args.imports,
        },
        "warm_alert_to_contained": latency,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
