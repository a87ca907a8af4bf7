"""`make bench`: every speed figure of the product beside a baseline measured in the same run,
with the peak memory of each, as one JSON document (docs/performance.md explains each figure).

Each part runs in a process of its own, so that cold-start figures start from a fresh
interpreter and every part's peak memory is its own:

- cold: `import function_app` against `import azure.functions` alone, and the Graph SDK's
  import choices, each in fresh interpreters;
- first: first containment in a fresh process (alert to both actions executed) against a
  fresh process making the same two Graph writes with raw HTTP;
- warm: alert to contained in a warm process, storage and Graph round trips per alert, with
  and without 150 ms of simulated Graph latency, against raw HTTP calls to the same simulated
  endpoints and a plain azure-data-tables insert loop; the simulated tenant runs in a process
  of its own (bench/sim_process.py), and the alerts are timed again with it in this process;
- verify: `audit verify` against reading the same records without verifying;
- storm, notifications, normalize, export: the scripts of the same name in bench/.

Usage: python bench/run.py [--quick] [--part NAME]   (--part runs one part and prints it)
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
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Imported lazily by the parts that need them: the cold-start figures are taken in children of
# this process, and the orchestrator itself stays light.

IMPORT_CHOICES = {
    "azure_functions_alone": "import azure.functions",
    "function_app": "import function_app",
    "graph_request_adapter_only": "import msgraph_core, kiota_http.httpx_request_adapter",
    "graph_service_client": "from msgraph import GraphServiceClient",
    "graph_one_request_builder": (
        "from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder"
    ),
    "graph_adapter_as_used": "import shared.adapters.graph",
    "composition_root": "import shared.container",
}
IMPORT_PROBE = """
import resource, sys, time
wall, cpu = time.perf_counter(), time.process_time()
{statement}
print(time.perf_counter() - wall, time.process_time() - cpu, len(sys.modules),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
WARMUP = 5
GRAPH_LATENCY_S = 0.150


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(samples: list[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "samples": len(ms),
    }


def child_env(extra: dict[str, str] | None = None, bytecode: str = "") -> dict[str, str]:
    """The environment of a child interpreter. With `bytecode` (a directory) it reads and
    writes compiled modules there (as a deployment whose .pyc files are cached); without, it
    inherits this process's setting (PYTHONDONTWRITEBYTECODE=1 compiles the project's modules
    from source at every fresh start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPONDER_", "GRAPH_"))}
    env["PYTHONPATH"] = str(ROOT)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = bytecode
    env.update(extra or {})
    return env


BYTECODE_MODES = {
    "bytecode_cached": True,
    "compiled_at_import" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "as_configured": False,
}


def bytecode_dir(cached: bool) -> str:
    """A cache of compiled modules outside the repository, filled by one untimed import."""
    if not cached:
        return ""
    directory = tempfile.mkdtemp(prefix="bench-pyc-")
    warm_up = "import function_app, shared.container, shared.adapters.graph, drill.host, httpx"
    subprocess.run(
        [sys.executable, "-c", warm_up], cwd=ROOT, env=child_env(bytecode=directory), check=True
    )
    return directory


# cold --------------------------------------------------------------------------------------


def cold(runs: int) -> dict[str, Any]:
    """Each import in `runs` fresh interpreters, with and without cached bytecode."""
    return {
        mode: cold_imports(runs, bytecode_dir(cached)) for mode, cached in BYTECODE_MODES.items()
    }


def cold_imports(runs: int, bytecode: str) -> dict[str, Any]:
    """Each import in `runs` fresh interpreters: wall and CPU time (CPU is the steadier figure
    on a shared machine), modules loaded, and the interpreter's peak memory."""
    results: dict[str, Any] = {}
    for name, statement in IMPORT_CHOICES.items():
        walls, cpus, modules, rss = [], [], 0, 0
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", IMPORT_PROBE.format(statement=statement)],
                cwd=ROOT,
                env=child_env(bytecode=bytecode),
                capture_output=True,
                text=True,
                check=True,
            )
            wall, cpu, loaded, maxrss = out.stdout.split()
            walls.append(float(wall))
            cpus.append(float(cpu))
            modules, rss = int(loaded), max(rss, int(maxrss))
        results[name] = {
            "statement": statement,
            "wall_ms_median": round(statistics.median(walls) * 1000, 1),
            "wall_ms_min": round(min(walls) * 1000, 1),
            "cpu_ms_median": round(statistics.median(cpus) * 1000, 1),
            "modules": modules,
            "peak_rss_mib": round(rss / 1024, 1),
        }
    base, app = results["azure_functions_alone"], results["function_app"]
    return {
        "runs": runs,
        "function_app_over_azure_functions": {
            "wall_ms_median": round(app["wall_ms_median"] - base["wall_ms_median"], 1),
            "wall_ms_min": round(app["wall_ms_min"] - base["wall_ms_min"], 1),
            "cpu_ms_median": round(app["cpu_ms_median"] - base["cpu_ms_median"], 1),
            "goal_ms": 150,
        },
        "imports": results,
    }


# first -------------------------------------------------------------------------------------

FIRST_CHILD = """
import time
start_wall, start_cpu = time.perf_counter(), time.process_time()
import asyncio, json, resource, sys

async def contain():
    from drill.host import LocalHost
    from functions.http import KEY_HEADER
    from shared import worker
    host = LocalHost()
    imported = time.perf_counter()
    response = await host.post_json("ingest_alert", "alerts", json.loads(sys.argv[1]),
                                    {KEY_HEADER: sys.argv[2]})
    assert response.status_code == 202, response.status_code
    services = await worker.services()
    executed = await host.pump(services.queue)
    assert executed == 2, executed
    return imported

imported = asyncio.run(contain())
print(json.dumps({
    "import_ms": (imported - start_wall) * 1000,
    "alert_to_contained_ms": (time.perf_counter() - imported) * 1000,
    "total_ms": (time.perf_counter() - start_wall) * 1000,
    "cpu_ms": (time.process_time() - start_cpu) * 1000,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

RAW_CHILD = """
import time
start_wall, start_cpu = time.perf_counter(), time.process_time()
import json, resource, sys
import httpx
base, token, user = sys.argv[1:4]
headers = {"Authorization": f"Bearer {token}"}
with httpx.Client(base_url=base, headers=headers) as client:
    client.post(f"/users/{user}/revokeSignInSessions").raise_for_status()
    client.patch(f"/users/{user}", json={"accountEnabled": False}).raise_for_status()
print(json.dumps({
    "total_ms": (time.perf_counter() - start_wall) * 1000,
    "cpu_ms": (time.process_time() - start_cpu) * 1000,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def compromised(n: int, user_id: str) -> dict[str, Any]:
    return {
        "id": f"bench-{n}-{secrets.token_hex(4)}",
        "title": "Token replay from an anonymising proxy",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "user_id": user_id, "roles": ["compromised"]}],
    }


def first(runs: int) -> dict[str, Any]:
    """First containment with and without cached bytecode."""
    return {mode: first_runs(runs, bytecode_dir(cached)) for mode, cached in BYTECODE_MODES.items()}


def first_runs(runs: int, bytecode: str) -> dict[str, Any]:
    """Fresh processes against one Azurite and one simulated tenant started beforehand."""
    from sim_process import sim_user

    from drill.azurite import Azurite
    from shared.simulator import SimulatedTenant

    app_runs: list[dict[str, float]] = []
    raw_runs: list[dict[str, float]] = []
    with SimulatedTenant() as sim, Azurite() as azurite:
        for n in range(runs):
            user, raw_user = sim_user(2 * n), sim_user(2 * n + 1)
            sim.add_user(user)
            sim.add_user(raw_user)
            secret = secrets.token_urlsafe(32)
            env = child_env(
                {
                    "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
                    "RESPONDER_AUDIT_TABLE": f"BenchAudit{secrets.token_hex(4)}",
                    "RESPONDER_STATE_TABLE": f"BenchState{secrets.token_hex(4)}",
                    "RESPONDER_AUDIT_INDEX_TABLE": f"BenchIndex{secrets.token_hex(4)}",
                    "GRAPH_BASE_URL": sim.base_url,
                    "RESPONDER_CREDENTIAL": "simulator",
                    "SIMULATOR_TOKEN": sim.token,
                    "RESPONDER_QUEUE": "memory",
                    "RESPONDER_WEBHOOK_SECRET": secret,
                },
                bytecode,
            )
            alert = json.dumps(compromised(n, user.id))
            out = subprocess.run(
                [sys.executable, "-c", FIRST_CHILD, alert, secret],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise RuntimeError(f"first containment failed: {out.stderr[-2000:]}")
            app_runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if sim.user(user.id).account_enabled:
                raise RuntimeError("the fresh process did not disable the account")
            raw = subprocess.run(
                [sys.executable, "-c", RAW_CHILD, sim.base_url, sim.token, raw_user.id],
                cwd=ROOT,
                env=child_env(bytecode=bytecode),
                capture_output=True,
                text=True,
                check=True,
            )
            raw_runs.append(json.loads(raw.stdout))

    def median(runs: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 1)

    return {
        "runs": runs,
        "first_containment": {
            key: median(app_runs, key)
            for key in ("import_ms", "alert_to_contained_ms", "total_ms", "cpu_ms", "peak_rss_mib")
        }
        | {"min_total_ms": round(min(r["total_ms"] for r in app_runs), 1), "goal_ms": 1000},
        "baseline_fresh_process_raw_http": {
            key: median(raw_runs, key) for key in ("total_ms", "cpu_ms", "peak_rss_mib")
        },
    }


# warm --------------------------------------------------------------------------------------


def table_of(response: Any, tables: dict[str, str]) -> str:
    """Which of our tables a storage response belongs to (a batch names it in its body)."""
    request = response.http_request
    text = request.url
    if "$batch" in text:
        body = request.body
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    for name, role in tables.items():
        if f"/{name}" in text:
            return role
    return "other"


async def warm(
    alerts: int, slow_alerts: int, inserts: int, simulator_in_process: bool = False
) -> dict[str, Any]:
    import httpx
    from sim_process import InProcessTenant, SimulatedTenantProcess, sim_user

    from drill.azurite import Azurite
    from drill.host import LocalHost
    from functions.http import KEY_HEADER
    from shared import container
    from shared.adapters.queue import InMemoryActionQueue
    from shared.config import Settings

    total = WARMUP + alerts + slow_alerts
    tenant = InProcessTenant if simulator_in_process else SimulatedTenantProcess
    with tenant(2 * total) as sim, Azurite() as azurite:
        users = [sim_user(n) for n in range(2 * total)]
        secret = secrets.token_urlsafe(32)
        names = {role: f"Bench{role}{secrets.token_hex(4)}" for role in ("Audit", "State", "Index")}
        settings = Settings.model_validate(
            {
                "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
                "RESPONDER_AUDIT_TABLE": names["Audit"],
                "RESPONDER_STATE_TABLE": names["State"],
                "RESPONDER_AUDIT_INDEX_TABLE": names["Index"],
                "GRAPH_BASE_URL": sim.base_url,
                "RESPONDER_CREDENTIAL": "simulator",
                "SIMULATOR_TOKEN": sim.token,
                "RESPONDER_QUEUE": "memory",
                "RESPONDER_WEBHOOK_SECRET": secret,
                # Every alert must run to containment: the budget would hold all but 10.
                "AUTO_DISABLE_BUDGET": 10_000,
            }
        )
        roles = {
            names["Audit"]: "audit_chain",
            names["Index"]: "audit_index",
            names["State"]: "state",
        }
        trips: list[str] = []
        services = container.Container(
            settings, storage_hook=lambda r: trips.append(table_of(r, roles))
        )
        await services.prepare()
        container.install(services)
        queue = services.queue
        assert isinstance(queue, InMemoryActionQueue)
        host = LocalHost()

        cpu: list[float] = []
        loop_cpu: list[float] = []

        async def contain(n: int) -> tuple[float, Counter[str], int]:
            trips.clear()
            graph_before = sim.requests()
            started, cpu_started = time.perf_counter(), time.process_time()
            loop_started = time.thread_time()
            response = await host.post_json(
                "ingest_alert", "alerts", compromised(n, users[n].id), {KEY_HEADER: secret}
            )
            if response.status_code != 202 or await host.pump(queue) != 2:
                raise RuntimeError("an alert did not run to containment")
            seconds = time.perf_counter() - started
            cpu.append(time.process_time() - cpu_started)
            loop_cpu.append(time.thread_time() - loop_started)
            return seconds, Counter(trips), sim.requests() - graph_before

        async def raw(client: httpx.AsyncClient, user_id: str) -> float:
            started = time.perf_counter()
            await asyncio.gather(
                client.post(f"/users/{user_id}/revokeSignInSessions"),
                client.patch(f"/users/{user_id}", json={"accountEnabled": False}),
            )
            return time.perf_counter() - started

        try:
            fast: list[float] = []
            slow: list[float] = []
            counted: Counter[str] = Counter()
            graph_calls: set[int] = set()
            for n in range(WARMUP + alerts):
                seconds, counts, graph = await contain(n)
                if n >= WARMUP:
                    fast.append(seconds)
                    counted, graph_calls = counts, graph_calls | {graph}
            cpu_per_alert = statistics.median(cpu[WARMUP:])
            loop_cpu_per_alert = statistics.median(loop_cpu[WARMUP:])
            sim.slow_down(GRAPH_LATENCY_S)
            for n in range(WARMUP + alerts, total):
                slow.append((await contain(n))[0])
            raw_slow: list[float] = []
            raw_fast: list[float] = []
            headers = {"Authorization": f"Bearer {sim.token}"}
            async with httpx.AsyncClient(base_url=sim.base_url, headers=headers) as client:
                for n in range(total, total + min(slow_alerts, 20)):
                    raw_slow.append(await raw(client, users[n].id))
                sim.clear_faults()
                for n in range(total + 20, total + 20 + alerts):
                    raw_fast.append(await raw(client, users[n % len(users)].id))
            insert_seconds = await insert_loop(services.tables, inserts)
            contained = total - sim.still_enabled(total)
            verification = await services.chain.verify()
        finally:
            container.install(None)
            await services.close()
    if contained != total or not verification.ok:
        raise RuntimeError("the warm run did not contain every user or verify the chain")
    storage = sum(counted.values())
    return {
        "alert_to_contained": summary_ms(fast)
        | {
            "goal_p50_ms": 40,
            "goal_p99_ms": 100,
            # This process's CPU per alert (neither Azurite's nor, unless it runs in this
            # process, the simulated tenant's): steadier than wall time on a shared machine.
            "cpu_ms_median": round(cpu_per_alert * 1000, 1),
            # The event loop's thread alone: the responder's own CPU.
            "event_loop_cpu_ms_median": round(loop_cpu_per_alert * 1000, 1),
            "simulated_tenant": "this process" if simulator_in_process else "a process of its own",
        },
        "alert_to_contained_with_graph_latency": summary_ms(slow)
        | {"graph_latency_ms": GRAPH_LATENCY_S * 1000, "goal_p99_ms": 1000},
        "baseline_raw_http_two_writes": summary_ms(raw_fast),
        "baseline_raw_http_two_writes_with_graph_latency": summary_ms(raw_slow),
        "round_trips_per_contained_alert": {
            "storage": storage,
            "storage_by_table": dict(sorted(counted.items())),
            "storage_outside_the_audit": counted["state"],
            "graph": sorted(graph_calls),
            "goal_storage": 12,
        },
        "baseline_plain_table_insert": {
            "inserts": inserts,
            "ms_per_insert": round(insert_seconds / inserts * 1000, 2),
            "inserts_per_second": round(inserts / insert_seconds, 1),
        },
        "audit_verified": verification.ok,
        "peak_rss_mib": peak_rss_mib(),
    }


async def insert_loop(service: Any, count: int) -> float:
    """The baseline for one storage round trip: a plain azure-data-tables insert loop."""
    name = f"BenchPlain{secrets.token_hex(4)}"
    table = await service.create_table(name)
    started = time.perf_counter()
    for n in range(count):
        await table.create_entity({"PartitionKey": "p", "RowKey": f"{n:08d}", "Value": n})
    seconds = time.perf_counter() - started
    await service.delete_table(name)
    return seconds


# verify ------------------------------------------------------------------------------------


async def verify(records: int) -> dict[str, Any]:
    import tracemalloc

    from drill.azurite import Azurite
    from shared.adapters.audit_table import AuditTable
    from shared.adapters.table_service import ensure_tables, table_service
    from shared.audit import AuditChain
    from shared.config import Settings
    from shared.models import Actor, AuditEntry, AuditEvent

    with Azurite() as azurite:
        name = f"BenchVerify{secrets.token_hex(4)}"
        settings = Settings.model_validate(
            {
                "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
                "GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0",
                "RESPONDER_CREDENTIAL": "simulator",
                "SIMULATOR_TOKEN": "unused",
                "RESPONDER_QUEUE": "memory",
            }
        )
        service = table_service(settings, None)
        try:
            await ensure_tables(service, name)
            store = AuditTable(service.get_table_client(name))
            chain = AuditChain(store)
            for start in range(0, records, 100):
                await chain.append_all(
                    [
                        AuditEntry(
                            event=AuditEvent.ACTION_PLANNED,
                            actor=Actor(),
                            action_id=f"act-{n}",
                            reason="benchmark record",
                        )
                        for n in range(start, min(records, start + 100))
                    ]
                )

            async def read() -> int:
                return len([r async for r in store.newest_first()])

            measured: dict[str, Any] = {}
            for label, call in (("read_without_verifying", read), ("verify", chain.verify)):
                # Timed without tracemalloc (which slows every allocation several times over),
                # then run again under it for the heap peak.
                started = time.perf_counter()
                result = await call()
                seconds = time.perf_counter() - started
                tracemalloc.start()
                await call()
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                measured[label] = {
                    "records_per_second": round(records / seconds, 1),
                    "seconds": round(seconds, 3),
                    "python_heap_peak_mib": round(peak / 2**20, 2),
                    "result": result if isinstance(result, int) else result.ok,
                }
        finally:
            await service.close()
    measured["verify"]["goal_records_per_second"] = 20_000
    return {"records": records, **measured, "peak_rss_mib": peak_rss_mib()}


# orchestration -----------------------------------------------------------------------------


def script(name: str, *args: str) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / name), *args],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
        document: dict[str, Any] = json.loads(out.stdout)
        return document

    return run


def part(name: str, quick: bool) -> dict[str, Any]:
    if name == "cold":
        return cold(3 if quick else 7)
    if name == "first":
        return first(2 if quick else 5)
    if name == "warm":
        alerts = 30 if quick else 200
        measured = asyncio.run(warm(alerts, 10 if quick else 40, 200 if quick else 1000))
        # The same alerts with the simulated tenant in this process, as measured until the
        # seventh round (bench/sim_process.py says why it moved out).
        beside = asyncio.run(warm(alerts, 5, 100, simulator_in_process=True))
        measured["alert_to_contained_simulator_in_process"] = beside["alert_to_contained"]
        return measured
    if name == "verify":
        return asyncio.run(verify(1000 if quick else 10_000))
    raise ValueError(f"unknown part {name}")


def in_child(name: str, quick: bool) -> dict[str, Any]:
    args = [sys.executable, str(Path(__file__).resolve()), "--part", name]
    out = subprocess.run(
        [*args, *(["--quick"] if quick else [])],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-3:] or ["failed"]}
    document: dict[str, Any] = json.loads(out.stdout)
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cold", "first", "warm", "verify"])
    parser.add_argument("--quick", action="store_true", help="fewer runs and alerts")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(part(args.part, args.quick)))
        return
    from drill.azurite import ENV_ENDPOINT, Azurite

    with Azurite() as azurite:
        # One Azurite for every part (each uses tables of its own): started once, not per part.
        os.environ[ENV_ENDPOINT] = azurite.endpoint
        document = run_all(args.quick)
    print(json.dumps(document, indent=2))


def run_all(quick: bool) -> dict[str, Any]:
    storm_args = ["--alerts", "2000", "--addresses", "100"] if quick else []
    started = time.perf_counter()
    document: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for name in ("cold", "first", "warm", "verify"):
        document[name] = in_child(name, quick)
    # As deployed (infra: 4 HTTP invocations per instance at once), and one POST at a time.
    document["storm"] = script("storm.py", *storm_args)()
    document["storm_one_post_at_a_time"] = script("storm.py", *storm_args, "--in-flight", "1")()
    document["notifications"] = script("notifications.py")()
    document["normalize"] = script("normalize.py")()
    document["graph_calls"] = script("graph_calls.py", *(["--calls", "100"] if quick else []))()
    document["export"] = script("export.py", *(["--records", "2000,20000"] if quick else []))()
    document["retry_lookup"] = script("retry_lookup.py")()
    document["storage_requests"] = script("storage_requests.py")()
    document["http_clients"] = script(
        "http_clients.py", *(["--requests", "300"] if quick else [])
    )()
    document["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document["seconds"] = round(time.perf_counter() - started, 1)
    return document


if __name__ == "__main__":
    main()
