"""Benchmark: an alert storm against the IP blocklist.

10,000 alerts over 500 attacker addresses (the exchange-dos drill, scaled up) go through the
real function handlers — the poller and the webhook — while the Service Bus-triggered executor
delivers the queue as the host would, against the simulated tenant and Azurite. Reports alerts
per second, the Exchange calls made, the transport rule shards used, the time from the first
alert to the last address blocked, and peak memory.

By default 4 webhook POSTs are under way at once, as many as one instance takes as deployed
(infra: `httpPerInstanceConcurrency`); `--in-flight 1` sends one at a time.

Prints one JSON object. Usage: python bench/storm.py [--alerts 10000] [--addresses 500]
[--per-post 25] [--in-flight 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drill.exchange_dos import ExchangeDos  # noqa: E402
from drill.runner import run_scenario  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--addresses", type=int, default=500)
    parser.add_argument(
        "--per-post", type=int, default=25, help="alerts per webhook POST (1: one at a time)"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=4,
        help="webhook POSTs under way at once (4: what one instance takes as deployed)",
    )
    args = parser.parse_args()
    scenario = ExchangeDos(
        alerts=args.alerts,
        addresses=args.addresses,
        per_post=args.per_post,
        in_flight=args.in_flight,
    )
    report = asyncio.run(run_scenario(scenario))
    summary = report.summary()
    contained_ms = summary["time_to_contain_ms"] or 0.0
    storm_ms = max(
        (m.at - report.started).total_seconds() * 1000
        for m in report.marks
        if m.text == "storm over"
    )
    result = {
        "benchmark": "storm",
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "ok": report.ok,
        "alerts": summary["alerts_sent"],
        "attacker_addresses": args.addresses,
        "alerts_per_webhook_post": args.per_post,
        "webhook_posts_in_flight": args.in_flight,
        "alerts_per_second": round(summary["alerts_sent"] / (storm_ms / 1000), 1),
        "time_first_alert_to_last_address_blocked_ms": contained_ms,
        "exchange_calls": summary["exchange_calls"],
        "exchange_calls_by_cmdlet": summary["exchange_calls_by_cmdlet"],
        "exchange_writes_per_shard": summary["exchange_writes_per_shard"],
        "transport_rule_shards": summary["transport_rule_shards"],
        "addresses_blocked": summary["addresses_blocked"],
        "audit_records": summary["audit_records"],
        "audit_verified": summary["audit_verified"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "checks_failed": [name for name, passed in report.checks.items() if not passed],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
