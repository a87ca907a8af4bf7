"""Round trips per contained alert, counted on the wire: every Table Storage response the
container's clients see, and every request the simulated tenant serves. A change that adds a
storage or Graph call to the warm path shows here (docs/performance.md)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from drill.azurite import Azurite
from drill.host import LocalHost
from functions.http import KEY_HEADER
from shared import container
from shared.ingest import normalize
from shared.models import ActionKind
from shared.simulator import SimulatedTenant, SimUser
from tests.conftest import ADELE, WEBHOOK_SECRET, installed, settings_for
from tests.trail import oldest_first

MEGAN = SimUser(
    id="7c1e4b2a-9d3f-4a6e-8b5c-3f2a1d9e8c02",
    user_principal_name="megan.bowen@contoso.onmicrosoft.com",
    display_name="Megan Bowen",
)

# Per alert naming one compromised user (revoke sessions, then disable the account):
# intake: handled check, budget query and spend, one transaction claiming both actions, one
# writing both sent marks with the alert's handled mark; executor, per action: intent (with
# the recording mark, on the claim's ETag the message carries: no ledger read), finish.
STATE_TRIPS = 9
# Per action the user before, the write and the user after; the disable also lists the user's
# role assignments and role-assignable groups (the lockout guards).
GRAPH_CALLS = 8
# The audit's share: one transaction for both decisions, one per outcome, each record with
# its index rows in the same transaction. Besides, a writer reads a chain's head once, the
# first time it writes there: when the two outcomes overlap, the second takes a chain of its
# own, which the warm-up alert may not have needed.
AUDIT_WRITES = 3


def compromised(n: int, user: SimUser) -> dict[str, Any]:
    return {
        "id": f"round-trips-{n}",
        "title": "Token replay from an anonymising proxy",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "user_id": user.id, "roles": ["compromised"]}],
    }


async def test_round_trips_per_contained_alert(sim: SimulatedTenant, azurite: Azurite) -> None:
    sim.add_user(SimUser(**vars(MEGAN)))
    settings = settings_for(sim, azurite)
    state_table = settings.state_table
    trips: list[str] = []

    def count(response: Any) -> None:
        request = response.http_request
        where = request.url if "$batch" not in request.url else str(request.body)
        if f"/{state_table}" in where:
            trips.append("state")
        else:
            trips.append("audit write" if request.method == "POST" else "audit read")

    services = container.Container(settings, storage_hook=count)
    container.install(services)
    try:
        await services.prepare()
        host = LocalHost()
        # A first alert warms the caches (the audit head, tokens); the second is counted.
        for n, user in enumerate((ADELE, MEGAN)):
            trips.clear()
            graph_before = len(sim.requests)
            response = await host.post_json(
                "ingest_alert", "alerts", compromised(n, user), {KEY_HEADER: WEBHOOK_SECRET}
            )
            assert response.status_code == 202
            assert await host.pump(services.queue) == 2
        counted = Counter(trips)
        graph = sim.requests[graph_before:]
        chains: dict[str, set[str]] = {}
        for record in await oldest_first(services.audit_store):
            chains.setdefault(record.entry.alert_id or "", set()).add(record.chain)
    finally:
        container.install(None)
        await services.close()
    assert not sim.user(MEGAN.id).account_enabled
    assert counted["state"] == STATE_TRIPS, counted
    assert len(graph) == GRAPH_CALLS, graph
    assert counted["audit write"] == AUDIT_WRITES, counted
    warm, counted_alert = (chains[a] for a in sorted(a for a in chains if "round-trips" in a))
    assert counted["audit read"] == len(counted_alert - warm), (counted, chains)


async def test_a_batch_of_alerts_is_checked_and_marked_handled_in_two_round_trips(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    """30 new alerts in one body: their handled checks are one transaction of pending marks,
    their handled marks a second one; no read of each."""
    settings = settings_for(sim, azurite)
    requests: list[str] = []

    def count(response: Any) -> None:
        requests.append(f"{response.http_request.method} {response.http_request.url}")

    services = container.Container(settings, storage_hook=count)
    container.install(services)
    try:
        await services.prepare()
        quiet = [
            {
                "@odata.type": "#microsoft.graph.security.alert",
                "id": f"quiet-{n}",
                "title": "Nothing to contain",
                "severity": "low",
                "evidence": [],
            }
            for n in range(30)
        ]
        requests.clear()
        response = await LocalHost().post_json(
            "ingest_alert", "alerts", {"value": quiet}, {KEY_HEADER: WEBHOOK_SECRET}
        )
        assert response.status_code == 202
        check, mark = requests
        assert check.startswith("POST ") and check.endswith("/$batch")
        assert mark.startswith("POST ") and mark.endswith("/$batch")
        again = await LocalHost().post_json(
            "ingest_alert", "alerts", {"value": quiet}, {KEY_HEADER: WEBHOOK_SECRET}
        )
        answered = json.loads(again.get_body())["alerts"]
        assert [a["duplicate_alert"] for a in answered] == [True] * 30
    finally:
        container.install(None)
        await services.close()


async def test_a_batch_counts_the_budget_once(sim: SimulatedTenant, azurite: Azurite) -> None:
    """Three alerts in one submission, each naming another user, against a budget of two:
    the budget is read once for the batch (beside the handled checks), each disable let
    through counts on top, and the third waits for an engineer."""
    users = [
        SimUser(
            id=f"7c1e4b2a-9d3f-4a6e-8b5c-3f2a1d9e8c1{n}",
            user_principal_name=f"budget{n}@contoso.onmicrosoft.com",
            display_name=f"Budget {n}",
        )
        for n in range(3)
    ]
    for user in users:
        sim.add_user(user)
    settings = settings_for(sim, azurite, AUTO_DISABLE_BUDGET=2)
    budget_reads: list[str] = []

    def count(response: Any) -> None:
        request = response.http_request
        if request.method == "GET" and "budget" in request.url:
            budget_reads.append(request.url)

    services = container.Container(settings, storage_hook=count)
    container.install(services)
    try:
        await services.prepare()
        # One submission of three alerts, as a list page or an incident's alerts arrive.
        alerts = [normalize(compromised(10 + n, user))[0] for n, user in enumerate(users)]
        results = await services.intake.handle_many(alerts)
        decisions = [
            [str(a.decision) for a in r.plan.actions if a.kind is ActionKind.DISABLE_ACCOUNT]
            for r in results
        ]
        await LocalHost().pump(services.queue)
    finally:
        container.install(None)
        await services.close()
    assert len(budget_reads) == 1, budget_reads
    assert decisions == [["execute"], ["execute"], ["needs_approval"]]
    assert [sim.user(u.id).account_enabled for u in users] == [False, False, True]


async def test_an_account_named_by_several_alerts_of_a_batch_counts_once(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    """Five alerts in one submission about the same user and one about another, against a
    budget of two: the budget counts accounts, so both accounts are disabled."""
    other = SimUser(
        id="7c1e4b2a-9d3f-4a6e-8b5c-3f2a1d9e8c20",
        user_principal_name="other@contoso.onmicrosoft.com",
        display_name="Other",
    )
    sim.add_user(SimUser(**vars(MEGAN)))
    sim.add_user(other)
    settings = settings_for(sim, azurite, AUTO_DISABLE_BUDGET=2)
    async with installed(settings) as services:
        named = [MEGAN] * 5 + [other]
        alerts = [normalize(compromised(20 + n, user))[0] for n, user in enumerate(named)]
        results = await services.intake.handle_many(alerts)
        await LocalHost().pump(services.queue)
    decisions = {
        str(a.decision)
        for r in results
        for a in r.plan.actions
        if a.kind is ActionKind.DISABLE_ACCOUNT
    }
    assert decisions == {"execute"}
    assert not sim.user(MEGAN.id).account_enabled and not sim.user(other.id).account_enabled
