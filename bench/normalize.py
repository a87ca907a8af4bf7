"""Benchmark: alert normalization, the work every ingest path does before planning.

Times `shared.ingest.normalize` on the shipped fixtures and published contract bodies (median
per payload, averaged over the payloads that normalize), and on one Graph list page of N alerts
with an IP evidence each. No storage, no network.

Prints one JSON object. Usage: python bench/normalize.py [--page 2000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.errors import InvalidInput  # noqa: E402
from shared.ingest import normalize  # noqa: E402

PAYLOAD_DIRS = [ROOT / "tests" / "fixtures" / "alerts", ROOT / "tests" / "contracts" / "alerts"]


def median_seconds(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accepted(payload: Any) -> bool:
    try:
        normalize(payload)
    except InvalidInput:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--page", type=int, default=2000, help="alerts in the list page")
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per payload")
    args = parser.parse_args()
    payloads = [
        json.loads(path.read_text(encoding="utf-8"))
        for directory in PAYLOAD_DIRS
        for path in sorted(directory.glob("*.json"))
    ]
    usable = [payload for payload in payloads if accepted(payload)]
    per_payload = [median_seconds(partial(normalize, payload), args.repeat) for payload in usable]
    evidence = {"@odata.type": "#microsoft.graph.security.ipEvidence", "ipAddress": "203.0.113.5"}
    page = {"value": [{"id": f"da6385_{i}", "evidence": [evidence]} for i in range(args.page)]}
    page_seconds = median_seconds(lambda: normalize(page), max(3, args.repeat // 20))
    print(
        json.dumps(
            {
                "payloads": len(usable),
                "payload_median_us": round(statistics.mean(per_payload) * 1e6, 1),
                "page_alerts": args.page,
                "page_median_ms": round(page_seconds * 1e3, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
