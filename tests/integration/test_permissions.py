"""Each grant the deployment makes is needed: remove any one from the simulated tenant, run the
action that needs it through the real path (intake or runner, msgraph-sdk or the Exchange
adapter over HTTP, the audit trail), and the action fails once, audited, not retried, with a
reason that names the missing permission."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.host import LocalHost
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.errors import MissingPermission
from shared.models import ActionKind, ActionRequest, AuditEvent, AuditRecord
from shared.permissions import EXCHANGE_AUDIENCE, FEATURES, GRAPH_AUDIENCE, manifest
from shared.simulator import SimulatedTenant, SimUser
from shared.simulator.access import GLOBAL_ADMINISTRATOR
from tests.conftest import ADELE, installed, settings_for
from tests.trail import oldest_first

pytestmark = pytest.mark.integration

BG1 = SimUser(
    id="0a000000-0000-4000-8000-000000000001",
    user_principal_name="bg-01@contoso.onmicrosoft.com",
    display_name="bg-01",
    account_enabled=False,
)
BG2 = SimUser(
    id="0a000000-0000-4000-8000-000000000002",
    user_principal_name="bg-02@contoso.onmicrosoft.com",
    display_name="bg-02",
    account_enabled=False,
)
ROLE_GROUP = "0b000000-0000-4000-8000-000000000001"
WATCHED = "0b000000-0000-4000-8000-000000000002"
ATTACKER = "185.220.101.0/24"


def action(kind: ActionKind, target: str, **params: Any) -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(kind, target, "engineer:permissions"),
        kind=kind,
        target=target,
        params=params,
    )


async def records(services: Container) -> list[AuditRecord]:
    return await oldest_first(services.audit_store)


async def run_once(services: Container, request: ActionRequest) -> AuditRecord:
    """Queue one action, deliver it as Service Bus would, and return its audited outcome."""
    queue = services.queue
    assert isinstance(queue, InMemoryActionQueue)
    await queue.send([request])
    await LocalHost().pump(queue)
    assert len(queue.dead_letters) == 0
    [outcome] = [r for r in await records(services) if r.entry.kind == str(request.kind)]
    return outcome


@dataclass(frozen=True)
class Case:
    permission: str
    exercise: Callable[[Container], Awaitable[str]]  # runs the path; returns the failure text
    # With watched groups, Group.Read.All reads memberships too, so GroupMember.Read.All is
    # needed by a deployment that watches no group (which is granted no Group.Read.All).
    watched_groups: bool = True
    # SecurityAlert.ReadWrite.All (alert comments) reads alerts too, so SecurityAlert.Read.All
    # is needed by a deployment that does not comment on alerts.
    alert_comments: bool = True


async def disable(services: Container) -> str:
    outcome = await run_once(services, action(ActionKind.DISABLE_ACCOUNT, ADELE.id))
    assert outcome.entry.event is AuditEvent.ACTION_FAILED
    assert "not retried" in outcome.entry.result["error"]
    return str(outcome.entry.result["error"])


async def revoke(services: Container) -> str:
    outcome = await run_once(services, action(ActionKind.REVOKE_SESSIONS, ADELE.id))
    assert outcome.entry.event is AuditEvent.ACTION_FAILED
    return str(outcome.entry.result["error"])


async def activate(services: Container) -> str:
    outcome = await run_once(services, action(ActionKind.ACTIVATE_BREAKGLASS, "all"))
    assert outcome.entry.event is AuditEvent.ACTION_FAILED
    return str(outcome.entry.result["error"])


async def block(services: Container) -> str:
    """An alert naming an attacker's network, through the intake and the playbook (whose
    block rule, in this test, also blocks at sign-in)."""
    alert = {
        "id": "permissions-ip",
        "title": "Password spray",
        "severity": "high",
        "category": "CredentialAccess",
        "entities": [{"kind": "ip", "address": ATTACKER, "roles": ["attacker"]}],
    }
    await services.intake.handle_payload(alert)
    queue = services.queue
    assert isinstance(queue, InMemoryActionQueue)
    await LocalHost().pump(queue)
    assert len(queue.dead_letters) == 0
    failed = [
        r
        for r in await records(services)
        if r.entry.kind == "block_ip" and r.entry.event is AuditEvent.ACTION_FAILED
    ]
    assert failed, "the block was not audited as failed"
    return str(failed[-1].entry.result["error"])


async def poll(services: Container) -> str:
    # The poller is a timer, not an action: its failure reaches the host (and its log) and the
    # readiness timer audits the missing grant; it is never retried in a loop of its own.
    with pytest.raises(MissingPermission) as caught:
        await services.poller.poll(services.clock())
    return str(caught.value)


async def subscribe(services: Container) -> str:
    with pytest.raises(MissingPermission) as caught:
        await services.graph_watch.create(
            next(s for s in services.subscriptions._specs if s.resource.startswith("groups")),
            "https://responder.example/api/notifications?code=k",
            None,
            "c" * 64,
            services.clock(),
        )
    return str(caught.value)


async def comment(services: Container) -> str:
    comments = services.notice_channels.alert_comments
    assert comments is not None
    with pytest.raises(MissingPermission) as caught:
        await comments.add_comment("da-permissions", "contained")
    return str(caught.value)


CASES = [
    Case("User.Read.All", disable),
    Case("User.EnableDisableAccount.All", disable),
    Case("User.RevokeSessions.All", revoke),
    Case("RoleManagement.Read.Directory", disable),
    Case("GroupMember.Read.All", disable, watched_groups=False),
    Case("SecurityAlert.Read.All", poll, alert_comments=False),
    Case("SecurityAlert.ReadWrite.All", comment),
    Case("Policy.Read.All", activate),
    Case("Policy.ReadWrite.ConditionalAccess", block),
    Case("Group.Read.All", subscribe),
    Case("Exchange.ManageAsApp", block),
]


def test_every_granted_permission_has_a_case() -> None:
    assert {c.permission for c in CASES} == {p.name for p in manifest().permissions}


@pytest.fixture
def tenant(sim: SimulatedTenant) -> SimulatedTenant:
    for user in (BG1, BG2):
        sim.add_user(SimUser(**vars(user)))
        sim.assign_role(user.id, GLOBAL_ADMINISTRATOR)
    sim.add_group(ROLE_GROUP, "Helpdesk admins", role_assignable=True)
    sim.add_group_member(ROLE_GROUP, ADELE.id)
    sim.add_group(WATCHED, "Tier 0 admins", role_assignable=True)
    sim.add_ca_policy("Block legacy sign-in")
    return sim


PLAYBOOK = """
version = 1

[[rules]]
name = "block-at-the-edge-and-at-sign-in"
severities = ["high"]
actions = [{ kind = "block_ip", ttl_minutes = 60, signin_block = true }]

[rules.entities]
kind = "ip"
roles = ["attacker"]
"""


@pytest.fixture
def every_feature(tenant: SimulatedTenant, azurite: Azurite, tmp_path: Any) -> dict[str, Any]:
    """Settings of a deployment using every feature the manifest knows."""
    playbook = tmp_path / "playbook.toml"
    playbook.write_text(PLAYBOOK)
    return {
        "settings": settings_for(
            tenant,
            azurite,
            BREAKGLASS_ACCOUNTS=f"{BG1.id},{BG2.id}",
            WATCHED_GROUPS=WATCHED,
            NOTIFICATION_URL="https://responder.example/api/notifications?code=k",
            NOTIFICATION_TENANT_ID=tenant.tenant_id,
            RESPONDER_PLAYBOOK=str(playbook),
            IP_BLOCK_BATCH_SECONDS=0,
            NOTICE_ALERT_COMMENTS="true",
        )
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.permission)
async def test_without_one_grant_its_action_fails_naming_the_permission(
    case: Case, tenant: SimulatedTenant, every_feature: dict[str, Any]
) -> None:
    features = [f for f in FEATURES if case.watched_groups or f != "watched_groups"]
    features = [f for f in features if case.alert_comments or f != "alert_comments"]
    settings = every_feature["settings"]
    if not case.watched_groups:
        settings = settings.model_copy(update={"watched_groups": []})
    if not case.alert_comments:
        settings = settings.model_copy(update={"notice_alert_comments": False})
    # Exactly what the deployment grants for its features, less one.
    tenant.set_grants(
        manifest().grants(features, GRAPH_AUDIENCE) | manifest().grants(features, EXCHANGE_AUDIENCE)
    )
    tenant.revoke_grant(case.permission)
    async with installed(settings) as services:
        assert settings.watched_groups or not case.watched_groups
        failure = await case.exercise(services)
    assert f"missing application permission {case.permission}" in failure
    assert "grant-graph-permissions.sh" in failure


async def test_with_every_grant_the_same_paths_succeed(
    tenant: SimulatedTenant, every_feature: dict[str, Any]
) -> None:
    async with installed(every_feature["settings"]) as services:
        for request in (
            action(ActionKind.DISABLE_ACCOUNT, ADELE.id),
            action(ActionKind.REVOKE_SESSIONS, ADELE.id),
            action(ActionKind.ACTIVATE_BREAKGLASS, "all"),
        ):
            outcome = await run_once(services, request)
            assert outcome.entry.event is AuditEvent.ACTION_EXECUTED, outcome.entry.result
        await services.poller.poll(services.clock())
    assert not tenant.user(ADELE.id).account_enabled
    assert tenant.user(BG1.id).account_enabled


async def test_without_the_exchange_role_a_block_fails_naming_the_role(
    tenant: SimulatedTenant, every_feature: dict[str, Any]
) -> None:
    tenant.set_exchange_roles([])
    async with installed(every_feature["settings"]) as services:
        failure = await block(services)
    assert '"Transport Rules" role' in failure
    assert "missing application permission" not in failure


async def test_a_groups_memberships_read_without_group_permission_is_limited(
    tenant: SimulatedTenant,
) -> None:
    """Graph lists a user's groups to User.Read.All alone, but without their properties: the
    responder must not take that for "no role-assignable groups"."""
    tenant.set_grants(manifest().grants(["always"], GRAPH_AUDIENCE) - {"GroupMember.Read.All"})
    token = tenant.app_token()
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{tenant.base_url}/users/{ADELE.id}/transitiveMemberOf/microsoft.graph.group",
        headers={"Authorization": f"Bearer {token}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        groups = json.loads(response.read())["value"]
    assert [g["id"] for g in groups] == [ROLE_GROUP]
    assert groups[0]["isAssignableToRole"] is None
