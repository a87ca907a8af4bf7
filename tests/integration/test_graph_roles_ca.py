"""The msgraph-sdk adapter for directory role assignments and Conditional Access policies, over
real HTTP against the simulated tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.graph import GraphDirectory
from shared.errors import PermanentError, TransientError
from shared.ports import GLOBAL_ADMINISTRATOR, RoleAssignment
from shared.simulator import Fault, SimulatedTenant, SimUser
from shared.simulator.access import USER_ADMINISTRATOR
from tests.conftest import ADELE, BREAK_GLASS, sdk_client

pytestmark = pytest.mark.integration

SECURITY_ADMINISTRATOR = "194ae4cb-b126-40b2-bd5b-6091b380977d"
# Directory Readers: a built-in role that a User Administrator may manage the holders of.
DIRECTORY_READERS = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
PRIVILEGED_AUTH_ADMIN = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
ADMINS_GROUP = "3f0c7d1e-2b4a-4c6d-8e9f-0a1b2c3d4e5f"
PILOT_GROUP = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
SERVICE_ACCOUNT = "c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5"
ASSIGNMENTS = "/roleManagement/directory/roleAssignments"
POLICIES = "/identity/conditionalAccess/policies"
GUESTS = {
    "guestOrExternalUserTypes": "internalGuest,b2bCollaborationGuest",
    "externalTenants": {
        "@odata.type": "#microsoft.graph.conditionalAccessAllExternalTenants",
        "membershipKind": "all",
    },
}


def graph_for(sim: SimulatedTenant, **overrides: Any) -> GraphDirectory:
    settings = {"GRAPH_MAX_RETRIES": 0, "GRAPH_RETRY_DELAY_SECONDS": 0, **overrides}
    client, _ = sdk_client(sim, **settings)
    return GraphDirectory(client)


@pytest.fixture
def small_pages() -> Iterator[SimulatedTenant]:
    """A tenant that lists role assignments and policies two at a time."""
    with SimulatedTenant(page_size=2) as tenant:
        tenant.add_user(SimUser(**vars(ADELE)))
        tenant.add_user(SimUser(**vars(BREAK_GLASS)))
        yield tenant


def gets(sim: SimulatedTenant, path: str) -> int:
    return sum(1 for method, seen in sim.requests if (method, seen) == ("GET", path))


async def test_roles_of_follows_every_page(small_pages: SimulatedTenant) -> None:
    sim = small_pages
    for role in (GLOBAL_ADMINISTRATOR, SECURITY_ADMINISTRATOR, DIRECTORY_READERS):
        sim.assign_role(ADELE.id, role)
    sim.assign_role(BREAK_GLASS.id, GLOBAL_ADMINISTRATOR)

    found = await graph_for(sim).roles_of(ADELE.id.upper())

    assert sorted(found, key=lambda a: a.role_id) == sorted(
        [
            RoleAssignment(role_id=role, principal_id=ADELE.id, scope="/")
            for role in (GLOBAL_ADMINISTRATOR, SECURITY_ADMINISTRATOR, DIRECTORY_READERS)
        ],
        key=lambda a: a.role_id,
    )
    assert gets(sim, ASSIGNMENTS) == 2


async def test_holders_of_follows_every_page(small_pages: SimulatedTenant) -> None:
    sim = small_pages
    holders = [ADELE.id, BREAK_GLASS.id, SERVICE_ACCOUNT, ADMINS_GROUP, PILOT_GROUP]
    for principal in holders:
        sim.assign_role(principal, GLOBAL_ADMINISTRATOR)
    sim.assign_role(ADELE.id, SECURITY_ADMINISTRATOR)

    found = await graph_for(sim).holders_of(GLOBAL_ADMINISTRATOR)

    assert sorted(a.principal_id for a in found) == sorted(holders)
    assert {a.role_id for a in found} == {GLOBAL_ADMINISTRATOR}
    assert gets(sim, ASSIGNMENTS) == 3


async def test_no_assignments_and_unassigned_roles(sim: SimulatedTenant) -> None:
    graph = graph_for(sim)
    assert await graph.roles_of(ADELE.id) == []
    sim.assign_role(ADELE.id, GLOBAL_ADMINISTRATOR)
    sim.unassign_role(ADELE.id, GLOBAL_ADMINISTRATOR)
    assert await graph.holders_of(GLOBAL_ADMINISTRATOR) == []


async def test_a_non_guid_never_reaches_the_filter(sim: SimulatedTenant) -> None:
    with pytest.raises(PermanentError, match="not an object id"):
        await graph_for(sim).roles_of("x' or principalId ne '0")
    assert gets(sim, ASSIGNMENTS) == 0


async def test_list_policies_follows_every_page(small_pages: SimulatedTenant) -> None:
    sim = small_pages
    mfa = sim.add_ca_policy("MFA for admins", exclude_users=(BREAK_GLASS.id.upper(),))
    block = sim.add_ca_policy("Block legacy auth")
    report = sim.add_ca_policy("Report only", state="enabledForReportingButNotEnforced")
    sim.edit_ca_policy(block, displayName="Block legacy authentication")

    found = {p.id: p for p in await graph_for(sim).list_policies()}

    assert set(found) == {mfa, block, report}
    assert found[mfa].excluded_users == (BREAK_GLASS.id,)
    assert found[mfa].enforced and not found[report].enforced
    assert found[report].state == "enabledForReportingButNotEnforced"
    assert found[block].name == "Block legacy authentication"
    assert found[mfa].modified_at == "", "Graph leaves modifiedDateTime null until a change"
    assert found[block].modified_at.startswith(sim.ca_policy(block)["modifiedDateTime"][:19])
    assert gets(sim, POLICIES) == 2


async def test_excluding_users_changes_nothing_else(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy(
        "Block admins",
        include_users=("All",),
        exclude_users=(SERVICE_ACCOUNT,),
        include_groups=(ADMINS_GROUP,),
        exclude_groups=(PILOT_GROUP,),
        include_roles=(GLOBAL_ADMINISTRATOR,),
        exclude_roles=(DIRECTORY_READERS,),
        include_applications=("Office365",),
        users_extra={"excludeGuestsOrExternalUsers": GUESTS},
    )
    sim.edit_ca_policy(policy_id, {"conditions": {"signInRiskLevels": ["high"]}})
    before = sim.ca_policy(policy_id)

    request_id = await graph_for(sim).set_excluded_users(
        policy_id, [SERVICE_ACCOUNT, BREAK_GLASS.id]
    )

    after = sim.ca_policy(policy_id)
    assert request_id and len(request_id) == 36
    assert after["conditions"]["users"]["excludeUsers"] == [SERVICE_ACCOUNT, BREAK_GLASS.id]
    assert after["modifiedDateTime"] > before["modifiedDateTime"]
    for changed in (before, after):
        changed["conditions"]["users"].pop("excludeUsers")
        changed.pop("modifiedDateTime")
    assert after == before
    assert after["conditions"]["users"]["excludeGuestsOrExternalUsers"] == GUESTS
    assert ("PATCH", f"{POLICIES}/{policy_id}") in sim.requests


async def test_removing_every_exclusion(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block admins", exclude_users=(BREAK_GLASS.id,))
    await graph_for(sim).set_excluded_users(policy_id, [])
    users = sim.ca_policy(policy_id)["conditions"]["users"]
    assert users["excludeUsers"] == [] and users["includeUsers"] == ["All"]


async def test_a_deleted_policy_is_a_permanent_404(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Short-lived")
    sim.delete_ca_policy(policy_id)
    with pytest.raises(PermanentError) as caught:
        await graph_for(sim).set_excluded_users(policy_id, [BREAK_GLASS.id])
    assert caught.value.status == 404
    assert caught.value.request_id
    assert not any(method == "PATCH" for method, _ in sim.requests)


async def test_a_policy_deleted_between_read_and_write_is_a_404(sim: SimulatedTenant) -> None:
    doomed = sim.add_ca_policy("Deleted meanwhile")
    sim.before_ca_write(lambda tenant: tenant.delete_ca_policy(doomed))
    with pytest.raises(PermanentError) as caught:
        await graph_for(sim).set_excluded_users(doomed, [BREAK_GLASS.id])
    assert caught.value.status == 404
    assert sim.ca_policies() == []


async def test_the_write_hook_sees_the_state_before_the_patch(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block admins")
    seen: list[list[str]] = []
    created: list[str] = []

    def meanwhile(tenant: SimulatedTenant) -> None:
        seen.append(tenant.ca_policy(policy_id)["conditions"]["users"]["excludeUsers"])
        created.append(tenant.add_ca_policy("Created meanwhile"))

    sim.before_ca_write(meanwhile)
    graph = graph_for(sim)
    await graph.set_excluded_users(policy_id, [BREAK_GLASS.id])
    await graph.set_excluded_users(policy_id, [])  # times=1: the hook is used up

    assert seen == [[]] and len(created) == 1
    listed = {p.id: p for p in await graph.list_policies()}
    assert set(listed) == {policy_id, created[0]}
    assert listed[policy_id].excluded_users == ()


async def test_privilege_enforcement_surfaces_as_permanent_403(sim: SimulatedTenant) -> None:
    sim.assign_role(ADELE.id, SECURITY_ADMINISTRATOR)
    sim.set_app_roles([])
    graph = graph_for(sim)
    with pytest.raises(PermanentError) as caught:
        await graph.set_account_enabled(ADELE.id, False)
    assert caught.value.status == 403
    assert caught.value.request_id
    assert "Authorization_RequestDenied" in str(caught.value)
    assert "Insufficient privileges to complete the operation." in str(caught.value)
    with pytest.raises(PermanentError) as revoked:
        await graph.revoke_sign_in_sessions(ADELE.id)
    assert revoked.value.status == 403
    assert sim.user(ADELE.id).account_enabled
    assert sim.user(ADELE.id).sign_in_sessions_revoked_at is None


async def test_the_right_app_role_lets_admin_accounts_be_changed(sim: SimulatedTenant) -> None:
    sim.assign_role(ADELE.id, GLOBAL_ADMINISTRATOR)
    graph = graph_for(sim)
    await graph.set_account_enabled(ADELE.id, False)  # default: Privileged Auth Admin
    sim.set_app_roles([GLOBAL_ADMINISTRATOR])
    await graph.set_account_enabled(ADELE.id, True)
    await graph.revoke_sign_in_sessions(ADELE.id)
    sim.set_app_roles([USER_ADMINISTRATOR])
    sim.assign_role(BREAK_GLASS.id, DIRECTORY_READERS)  # a role a User Administrator manages
    await graph.set_account_enabled(BREAK_GLASS.id, False)
    assert sim.user(ADELE.id).account_enabled
    assert not sim.user(BREAK_GLASS.id).account_enabled


async def test_a_503_then_success_is_retried_by_the_sdk(sim: SimulatedTenant) -> None:
    sim.assign_role(ADELE.id, GLOBAL_ADMINISTRATOR)
    policy_id = sim.add_ca_policy("Block admins")
    sim.add_fault(Fault(method="GET", path_pattern="roleAssignments", status=503))
    sim.add_fault(Fault(method="GET", path_pattern="conditionalAccess/policies$", status=503))
    sim.add_fault(Fault(method="PATCH", path_pattern="conditionalAccess/policies/", status=503))
    graph = graph_for(sim, GRAPH_MAX_RETRIES=1)

    assert [a.principal_id for a in await graph.holders_of(GLOBAL_ADMINISTRATOR)] == [ADELE.id]
    assert [p.id for p in await graph.list_policies()] == [policy_id]
    assert await graph.set_excluded_users(policy_id, [BREAK_GLASS.id])

    assert sim.ca_policy(policy_id)["conditions"]["users"]["excludeUsers"] == [BREAK_GLASS.id]
    assert gets(sim, ASSIGNMENTS) == 2 and gets(sim, POLICIES) == 2
    assert sim.requests.count(("PATCH", f"{POLICIES}/{policy_id}")) == 2


async def test_without_retries_a_503_is_transient(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block admins")
    sim.add_fault(Fault(method="PATCH", path_pattern="conditionalAccess/policies/", status=503))
    with pytest.raises(TransientError) as caught:
        await graph_for(sim).set_excluded_users(policy_id, [BREAK_GLASS.id])
    assert caught.value.status == 503
    assert sim.ca_policy(policy_id)["conditions"]["users"]["excludeUsers"] == []
