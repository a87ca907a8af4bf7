"""Approvals: automatic disables beyond the blast-radius budget wait for an engineer, who
approves or rejects them over HTTP with four eyes and before they expire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import azure.functions as func
import pytest

from drill.azurite import Azurite
from drill.context import DrillClock
from drill.host import LocalHost, registered_functions
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.identity import ROLE_ACT, ROLE_APPROVE
from shared.models import ActionKind, ActionRequest, Actor, Decision, utcnow
from shared.simulator import SimulatedTenant, SimUser
from tests.conftest import ADELE, API_AUDIENCE, installed, settings_for

pytestmark = pytest.mark.integration

GRADY = SimUser(
    id="8c1e7a52-3f9b-4d26-a0e4-6b5d9c2f7a13",
    user_principal_name="grady.archie@contoso.onmicrosoft.com",
    display_name="Grady Archie",
)
APPROVER = "lead@contoso.onmicrosoft.com"


@pytest.fixture
async def responder(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[Container]:
    sim.add_user(GRADY)
    settings = settings_for(sim, azurite, AUTO_DISABLE_BUDGET=1, APPROVAL_TTL_MINUTES=30)
    async with installed(settings, clock) as built:
        yield built


def compromised(alert_id: str, user: str) -> dict[str, Any]:
    return {
        "id": alert_id,
        "title": "Token theft",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "user", "user_id": user, "roles": ["compromised"]}],
    }


async def held_disable(responder: Container) -> str:
    await responder.intake.handle_payload(compromised("a-1", ADELE.id))
    [result] = await responder.intake.handle_payload(compromised("a-2", GRADY.id))
    [held] = [a for a in result.plan.actions if a.decision is Decision.NEEDS_APPROVAL]
    assert held.kind is ActionKind.DISABLE_ACCOUNT and held.target == GRADY.id
    assert held.id not in result.queued
    return held.id


async def decide(
    sim: SimulatedTenant,
    verb: str,
    action_id: str,
    roles: tuple[str, ...] = (ROLE_APPROVE,),
    upn: str | None = APPROVER,
    body: bytes = b"",
) -> func.HttpResponse:
    bearer = sim.issue_token(audience=API_AUDIENCE, roles=roles, upn=upn, app_id="automation-app")
    return await decide_with(bearer, verb, action_id, body)


async def decide_with(
    bearer: str, verb: str, action_id: str, body: bytes = b""
) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url=f"http://127.0.0.1/api/actions/{action_id}/{verb}",
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        params={},
        route_params={"action_id": action_id},
        body=body,
    )
    function = registered_functions()[f"{verb}_action"].get_user_function()
    response: func.HttpResponse = await function(request)
    return response


async def events(responder: Container) -> list[tuple[str, str | None, str]]:
    records = [r async for r in responder.audit_store.newest_first()]
    return [(str(r.entry.event), r.entry.target, r.entry.actor.name) for r in reversed(records)]


def queue_of(responder: Container) -> InMemoryActionQueue:
    assert isinstance(responder.queue, InMemoryActionQueue)
    return responder.queue


async def test_disables_beyond_the_budget_are_held_and_audited(
    responder: Container, sim: SimulatedTenant
) -> None:
    await held_disable(responder)
    await LocalHost().pump(queue_of(responder))
    assert not sim.user(ADELE.id).account_enabled
    assert sim.user(GRADY.id).account_enabled, "held, not executed"
    assert sim.user(GRADY.id).revocations == 1, "revoking sessions is not budgeted"
    assert ("action.held", GRADY.id, "m365-responder") in await events(responder)


async def test_an_approved_action_runs_and_names_its_approver(
    responder: Container, sim: SimulatedTenant
) -> None:
    action_id = await held_disable(responder)
    response = await decide(sim, "approve", action_id, body=b'{"note": "confirmed by SOC"}')
    assert response.status_code == 200, response.get_body()
    await LocalHost().pump(queue_of(responder))
    assert not sim.user(GRADY.id).account_enabled
    audit = await events(responder)
    assert ("action.approved", GRADY.id, APPROVER) in audit
    assert (
        audit[-1][0] == "action.executed"
        or ("action.executed", GRADY.id, "m365-responder") in audit
    )


async def test_a_rejected_action_never_runs(responder: Container, sim: SimulatedTenant) -> None:
    action_id = await held_disable(responder)
    assert (await decide(sim, "reject", action_id)).status_code == 200
    await LocalHost().pump(queue_of(responder))
    assert sim.user(GRADY.id).account_enabled
    assert ("action.rejected", GRADY.id, APPROVER) in await events(responder)
    state = await responder.state.get(action_id)
    assert state is not None and state.state == "rejected"


async def test_a_replayed_decision_is_a_conflict(
    responder: Container, sim: SimulatedTenant
) -> None:
    action_id = await held_disable(responder)
    assert (await decide(sim, "approve", action_id)).status_code == 200
    again = await decide(sim, "approve", action_id)
    assert again.status_code == 409
    assert (await decide(sim, "reject", action_id)).status_code == 409
    # Two actions for each user from intake, less the held one, plus the approved one.
    assert await LocalHost().pump(queue_of(responder)) == 4


async def test_an_approval_after_the_window_is_gone_and_audited_as_expired(
    responder: Container, sim: SimulatedTenant, clock: DrillClock
) -> None:
    action_id = await held_disable(responder)
    clock.advance(timedelta(minutes=31))
    response = await decide(sim, "approve", action_id)
    assert response.status_code == 410
    assert ("action.expired", GRADY.id, "m365-responder") in await events(responder)
    assert sim.user(GRADY.id).account_enabled


async def test_the_requester_cannot_approve_their_own_request(
    responder: Container, sim: SimulatedTenant
) -> None:
    own = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, GRADY.id, "engineer:own"),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=GRADY.id,
        decision=Decision.NEEDS_APPROVAL,
        requested_by=Actor(kind="engineer", name=APPROVER),
    )
    await responder.approval_store.hold(own, utcnow() + timedelta(hours=1))
    response = await decide(sim, "approve", own.id)
    assert response.status_code == 403
    assert "own request" in json.loads(response.get_body())["detail"]


async def test_a_renamed_or_aliased_requester_is_still_the_requester(
    responder: Container, sim: SimulatedTenant
) -> None:
    """Four eyes compares the token's object id and tenant, not its names."""
    oid = "3f2a1b0c-9d8e-4f7a-8b6c-5d4e3f2a1b0c"
    own = ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, GRADY.id, "engineer:renamed"),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=GRADY.id,
        decision=Decision.NEEDS_APPROVAL,
        requested_by=Actor(kind="engineer", name=APPROVER, object_id=oid, tenant_id=sim.tenant_id),
    )
    await responder.approval_store.hold(own, utcnow() + timedelta(hours=1))
    for claims in (
        {"oid": oid, "upn": "lead.renamed@contoso.onmicrosoft.com"},
        {"oid": oid, "upn": None, "preferred_username": "lead@contoso.de"},
    ):
        bearer = sim.issue_token(
            audience=API_AUDIENCE, roles=(ROLE_APPROVE,), upn=APPROVER, extra_claims=claims
        )
        response = await decide_with(bearer, "approve", own.id)
        assert response.status_code == 403, response.get_body()
        assert "own request" in json.loads(response.get_body())["detail"]
    # Someone else (another object id) under the requester's old name is refused too.
    other = sim.issue_token(
        audience=API_AUDIENCE, roles=(ROLE_APPROVE,), upn="someone@contoso.onmicrosoft.com"
    )
    assert (await decide_with(other, "approve", own.id)).status_code == 200
    [record] = [r async for r in responder.audit_store.newest_first()][:1]
    assert record.entry.event == "action.approved"
    assert record.entry.actor.object_id and record.entry.actor.object_id != oid
    assert record.entry.actor.tenant_id == sim.tenant_id


@pytest.mark.parametrize(
    ("roles", "upn", "status"),
    [((ROLE_ACT,), APPROVER, 403), ((ROLE_APPROVE,), None, 403)],
    ids=["without-the-approver-role", "an-app-not-an-engineer"],
)
async def test_only_engineers_with_the_role_decide(
    responder: Container,
    sim: SimulatedTenant,
    roles: tuple[str, ...],
    upn: str | None,
    status: int,
) -> None:
    action_id = await held_disable(responder)
    response = await decide(sim, "approve", action_id, roles=roles, upn=upn)
    assert response.status_code == status
    assert sim.user(GRADY.id).account_enabled


async def test_unknown_actions_and_bad_notes_are_refused(
    responder: Container, sim: SimulatedTenant
) -> None:
    assert (await decide(sim, "approve", "act-" + "0" * 32)).status_code == 404
    action_id = await held_disable(responder)
    bad = await decide(sim, "approve", action_id, body=b'{"note": 5, "extra": true}')
    assert bad.status_code == 400
