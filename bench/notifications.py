"""Benchmark: one change-notification POST naming 1,000 unknown subscription ids (a flood Graph
would never send, and an attacker can), answered by the webhook function against Azurite.

Graph wants an answer within 3 seconds. The gate reads the stored subscriptions once per POST
whatever the number of ids; for comparison the bench also times what one table query per id
costs (the gate's former behaviour). Prints one JSON object.

Usage: python bench/notifications.py [--ids 1000] [--rounds 5] [--subscriptions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import azure.functions as func  # noqa: E402

from drill.azurite import Azurite  # noqa: E402
from drill.host import registered_functions  # noqa: E402
from shared import container  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.models import utcnow  # noqa: E402
from shared.watch.ports import SubscriptionSpec, WatchPurpose  # noqa: E402

TENANT = "00000000-0000-0000-0000-0000000000aa"


def request(body: bytes) -> func.HttpRequest:
    return func.HttpRequest(
        method="POST",
        url="http://127.0.0.1/api/notifications",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={},
        body=body,
    )


async def run(ids: int, rounds: int, subscriptions: int) -> dict[str, Any]:
    with Azurite() as azurite:
        settings = Settings.model_validate(
            {
                "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
                "RESPONDER_AUDIT_TABLE": f"BenchAudit{secrets.token_hex(4)}",
                "RESPONDER_STATE_TABLE": f"BenchState{secrets.token_hex(4)}",
                "GRAPH_BASE_URL": "http://127.0.0.1:9/v1.0",
                "RESPONDER_CREDENTIAL": "simulator",
                "SIMULATOR_TOKEN": "unused",
                "RESPONDER_QUEUE": "memory",
                "NOTIFICATION_TENANT_ID": TENANT,
            }
        )
        services = await container.Container(settings).prepare()
        container.install(services)
        try:
            store = services.subscription_store
            for n in range(subscriptions):  # a realistic partition: the configured watches
                spec = SubscriptionSpec(f"users/{uuid.uuid4()}", "updated", WatchPurpose.ALL_USERS)
                claimed = await store.claim(spec, secrets.token_urlsafe(48), utcnow(), None)
                assert claimed is not None
                await store.save(claimed, str(uuid.uuid4()), utcnow() + timedelta(days=n + 1))
            webhook = registered_functions()["notify_changes"].get_user_function()
            answers: list[float] = []
            for _ in range(rounds):
                unknown = [str(uuid.uuid4()) for _ in range(ids)]
                body = {
                    "value": [
                        {
                            "subscriptionId": sub,
                            "changeType": "updated",
                            "resource": f"Users/{uuid.uuid4()}",
                            "clientState": "guess",
                            "tenantId": TENANT,
                        }
                        for sub in unknown
                    ]
                }
                raw = json.dumps(body).encode()
                start = time.perf_counter()
                response = await webhook(request(raw))
                answers.append(time.perf_counter() - start)
                assert response.status_code == 403, response.status_code
            # The former cost: one filtered table query per distinct id.
            start = time.perf_counter()
            for sub in unknown:
                await store.by_subscription_id(sub)
            per_id_queries = time.perf_counter() - start
        finally:
            container.install(None)
            await services.close()
    return {
        "ids_per_post": ids,
        "stored_subscriptions": subscriptions,
        "rounds": rounds,
        "answer_s_median": round(statistics.median(answers), 3),
        "answer_s_max": round(max(answers), 3),
        "one_query_per_id_s": round(per_id_queries, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--subscriptions", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.ids, args.rounds, args.subscriptions))))


if __name__ == "__main__":
    main()
