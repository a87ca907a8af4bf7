"""The simulated tenant's role assignments, Conditional Access policies and privilege checks,
over plain HTTP so the wire format is what is tested."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from email.message import Message
from typing import Any
from urllib.parse import quote

import pytest

from shared.ports import GLOBAL_ADMINISTRATOR
from shared.simulator import SimulatedTenant
from shared.simulator.access import USER_ADMINISTRATOR, AccessError, AccessStore
from tests.conftest import ADELE, BREAK_GLASS

SECURITY_ADMINISTRATOR = "194ae4cb-b126-40b2-bd5b-6091b380977d"
DIRECTORY_READERS = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
PRIVILEGED_AUTH_ADMIN = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
EXCHANGE_ADMINISTRATOR = "29232cdf-9323-42fd-ade2-1d097af3e4de"
GROUP = "3f0c7d1e-2b4a-4c6d-8e9f-0a1b2c3d4e5f"
ASSIGNMENTS = "/roleManagement/directory/roleAssignments"
POLICIES = "/identity/conditionalAccess/policies"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(
    sim: SimulatedTenant, method: str, path: str, body: Any = None
) -> tuple[int, Message, Any]:
    url = path if path.startswith("http") else sim.base_url + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {sim.token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=10) as response:
            raw, status, headers = response.read(), response.status, response.headers
    except urllib.error.HTTPError as error:
        raw, status, headers = error.read(), error.code, error.headers
    return status, headers, json.loads(raw) if raw else None


def assignments(sim: SimulatedTenant, expression: str, top: int | None = None) -> Any:
    query = f"?$filter={quote(expression)}" + (f"&$top={top}" if top else "")
    return call(sim, "GET", ASSIGNMENTS + query)


def assert_error(reply: tuple[int, Message, Any], status: int, code: str) -> str:
    assert reply[0] == status, reply
    error = reply[2]["error"]
    assert error["code"] == code
    assert error["innerError"]["request-id"] == reply[1]["request-id"]
    return str(error["message"])


# Role assignments


def test_assignments_by_principal_and_by_role(sim: SimulatedTenant) -> None:
    sim.assign_role(ADELE.id.upper(), GLOBAL_ADMINISTRATOR)
    sim.assign_role(ADELE.id, SECURITY_ADMINISTRATOR)
    sim.assign_role(BREAK_GLASS.id, GLOBAL_ADMINISTRATOR)
    sim.assign_role(BREAK_GLASS.id, GLOBAL_ADMINISTRATOR)  # the same assignment once

    status, _, body = assignments(sim, f"principalId eq '{ADELE.id.upper()}'")
    assert status == 200
    assert {a["roleDefinitionId"] for a in body["value"]} == {
        GLOBAL_ADMINISTRATOR,
        SECURITY_ADMINISTRATOR,
    }
    assert all(
        set(a) == {"id", "principalId", "roleDefinitionId", "directoryScopeId"}
        and a["principalId"] == ADELE.id
        and a["directoryScopeId"] == "/"
        for a in body["value"]
    )
    _, _, body = assignments(sim, f"roleDefinitionId eq '{GLOBAL_ADMINISTRATOR}'")
    assert sorted(a["principalId"] for a in body["value"]) == sorted([ADELE.id, BREAK_GLASS.id])
    assert len(sim.role_assignments()) == 3
    sim.unassign_role(ADELE.id, GLOBAL_ADMINISTRATOR)
    _, _, body = assignments(sim, f"roleDefinitionId eq '{GLOBAL_ADMINISTRATOR}'")
    assert [a["principalId"] for a in body["value"]] == [BREAK_GLASS.id]


@pytest.mark.parametrize(
    "expression",
    [
        "displayName eq 'Global Administrator'",
        f"principalId ne '{ADELE.id}'",
        f"principalId eq '{ADELE.id}' or roleDefinitionId eq '{GLOBAL_ADMINISTRATOR}'",
        "principalId eq 'not-a-guid'",
        "",
    ],
)
def test_other_filters_are_a_400(sim: SimulatedTenant, expression: str) -> None:
    message = assert_error(assignments(sim, expression), 400, "Request_UnsupportedQuery")
    assert "principalId eq" in message


def test_a_missing_filter_is_a_400(sim: SimulatedTenant) -> None:
    assert_error(call(sim, "GET", ASSIGNMENTS), 400, "Request_UnsupportedQuery")


def test_assignment_pages_keep_the_filter(sim: SimulatedTenant) -> None:
    principals = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(5)]
    for principal in principals:
        sim.assign_role(principal, GLOBAL_ADMINISTRATOR)
    sim.assign_role(ADELE.id, SECURITY_ADMINISTRATOR)
    seen: list[str] = []
    status, _, body = assignments(sim, f"roleDefinitionId eq '{GLOBAL_ADMINISTRATOR}'", top=2)
    pages = 1
    while True:
        assert status == 200
        seen += [a["principalId"] for a in body["value"]]
        if "@odata.nextLink" not in body:
            break
        status, _, body = call(sim, "GET", body["@odata.nextLink"])
        pages += 1
    assert (seen, pages) == (principals, 3)


def test_the_page_size_applies_without_top() -> None:
    with SimulatedTenant(page_size=1) as tenant:
        tenant.add_ca_policy("One")
        tenant.add_ca_policy("Two")
        _, _, body = call(tenant, "GET", POLICIES)
        assert [p["displayName"] for p in body["value"]] == ["One"]
        _, _, body = call(tenant, "GET", body["@odata.nextLink"])
        assert [p["displayName"] for p in body["value"]] == ["Two"]
        assert "@odata.nextLink" not in body


# Conditional Access policies


def test_create_read_list_and_delete(sim: SimulatedTenant) -> None:
    new = {
        "displayName": "Require MFA",
        "state": "enabledForReportingButNotEnforced",
        "conditions": {
            "users": {"includeRoles": [GLOBAL_ADMINISTRATOR], "excludeUsers": [BREAK_GLASS.id]},
            "applications": {"includeApplications": ["All"]},
        },
        "grantControls": {"operator": "OR", "builtInControls": ["mfa"]},
    }
    status, _, created = call(sim, "POST", POLICIES, new)
    assert status == 201
    policy_id = created["id"]
    assert created["createdDateTime"].endswith("Z") and created["modifiedDateTime"] is None
    assert created["conditions"]["users"] == {
        "includeUsers": [],
        "excludeUsers": [BREAK_GLASS.id],
        "includeGroups": [],
        "excludeGroups": [],
        "includeRoles": [GLOBAL_ADMINISTRATOR],
        "excludeRoles": [],
        "includeGuestsOrExternalUsers": None,
        "excludeGuestsOrExternalUsers": None,
    }
    assert created["conditions"]["applications"] == {"includeApplications": ["All"]}
    assert created["grantControls"] == new["grantControls"]

    status, _, read = call(sim, "GET", f"{POLICIES}/{policy_id}")
    assert status == 200 and read == created
    _, _, listed = call(sim, "GET", POLICIES)
    assert [p["id"] for p in listed["value"]] == [policy_id]
    assert sim.ca_policies() == [{k: v for k, v in created.items() if k != "@odata.context"}]

    status, _, _ = call(sim, "DELETE", f"{POLICIES}/{policy_id}")
    assert status == 204
    assert_error(call(sim, "GET", f"{POLICIES}/{policy_id}"), 404, "ResourceNotFound")
    assert_error(call(sim, "PATCH", f"{POLICIES}/{policy_id}", {}), 404, "ResourceNotFound")
    assert_error(call(sim, "DELETE", f"{POLICIES}/{policy_id}"), 404, "ResourceNotFound")


@pytest.mark.parametrize(
    "body",
    [
        {"displayName": "No users", "conditions": {"applications": {}}},
        {"displayName": "", "conditions": {"users": {"includeUsers": ["All"]}}},
        {"displayName": "x", "state": "on", "conditions": {"users": {"includeUsers": ["All"]}}},
        {"displayName": "Includes nobody", "conditions": {"users": {"excludeUsers": ["x"]}}},
        {"displayName": "x", "conditions": {"users": {"includeUsers": "All"}}},
        {"displayName": "x", "conditions": {"users": {"includeUsers": ["All"]}}, "owner": "me"},
    ],
)
def test_invalid_policies_are_a_400(sim: SimulatedTenant, body: dict[str, Any]) -> None:
    assert_error(call(sim, "POST", POLICIES, body), 400, "BadRequest")
    assert sim.ca_policies() == []


def test_patch_keeps_what_it_does_not_name(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block", include_groups=(GROUP,), exclude_users=(ADELE.id,))
    before = sim.ca_policy(policy_id)

    status, _, _ = call(
        sim, "PATCH", f"{POLICIES}/{policy_id}", {"conditions": {"signInRiskLevels": ["high"]}}
    )
    assert status == 204
    status, _, _ = call(sim, "PATCH", f"{POLICIES}/{policy_id}", {"state": "disabled"})
    assert status == 204

    after = sim.ca_policy(policy_id)
    assert after["conditions"]["signInRiskLevels"] == ["high"]
    assert after["state"] == "disabled"
    assert after["conditions"]["users"] == before["conditions"]["users"]
    assert after["conditions"]["applications"] == before["conditions"]["applications"]
    assert (after["displayName"], after["grantControls"]) == ("Block", before["grantControls"])
    assert after["createdDateTime"] == before["createdDateTime"]
    assert after["modifiedDateTime"] is not None


def test_patch_replaces_a_condition_set_it_names(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy(
        "Block",
        include_users=("All",),
        include_groups=(GROUP,),
        exclude_roles=(DIRECTORY_READERS,),
        users_extra={"excludeGuestsOrExternalUsers": {"guestOrExternalUserTypes": "b2bDirect"}},
    )
    path = f"{POLICIES}/{policy_id}"

    # Only the exclusions: the policy would include nobody, which Graph refuses.
    assert_error(
        call(sim, "PATCH", path, {"conditions": {"users": {"excludeUsers": [ADELE.id]}}}),
        400,
        "BadRequest",
    )
    assert sim.ca_policy(policy_id)["conditions"]["users"]["includeUsers"] == ["All"]

    # A partial set that still includes someone: the rest of the set is gone.
    partial = {"includeGroups": [GROUP], "excludeUsers": [ADELE.id]}
    status, _, _ = call(sim, "PATCH", path, {"conditions": {"users": partial}})
    assert status == 204
    users = sim.ca_policy(policy_id)["conditions"]["users"]
    assert users["excludeUsers"] == [ADELE.id]
    assert users["includeUsers"] == [] and users["excludeRoles"] == []
    assert users["excludeGuestsOrExternalUsers"] is None


def test_each_patch_moves_modified_date_time(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block")
    stamps = []
    for state in ("disabled", "enabled"):
        call(sim, "PATCH", f"{POLICIES}/{policy_id}", {"state": state})
        stamps.append(sim.ca_policy(policy_id)["modifiedDateTime"])
    assert stamps[0] is not None and stamps[0] < stamps[1]


def test_invalid_patches_change_nothing(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block")
    before = sim.ca_policy(policy_id)
    bodies: list[dict[str, Any]] = [
        {"state": "off"},
        {"conditions": []},
        {"owner": "x"},
        {"displayName": ""},
    ]
    for body in bodies:
        assert_error(call(sim, "PATCH", f"{POLICIES}/{policy_id}", body), 400, "BadRequest")
    assert sim.ca_policy(policy_id) == before


def test_write_hook_runs_before_the_patch_and_is_used_up(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block")
    states: list[str] = []
    sim.before_ca_write(lambda tenant: states.append(tenant.ca_policy(policy_id)["state"]), 2)
    for state in ("disabled", "enabled", "disabled"):
        assert call(sim, "PATCH", f"{POLICIES}/{policy_id}", {"state": state})[0] == 204
    assert states == ["enabled", "disabled"]
    call(
        sim,
        "POST",
        POLICIES,
        {"displayName": "x", "conditions": {"users": {"includeUsers": ["All"]}}},
    )
    assert states == ["enabled", "disabled"], "only PATCHes run the hook"


def test_a_failing_write_hook_is_a_500(sim: SimulatedTenant) -> None:
    policy_id = sim.add_ca_policy("Block")

    def broken(tenant: SimulatedTenant) -> None:
        raise RuntimeError("boom")

    sim.before_ca_write(broken)
    assert_error(
        call(sim, "PATCH", f"{POLICIES}/{policy_id}", {"state": "disabled"}),
        500,
        "generalException",
    )
    assert sim.ca_policy(policy_id)["state"] == "enabled"


def test_facade_errors(sim: SimulatedTenant) -> None:
    with pytest.raises(ValueError, match="state"):
        sim.add_ca_policy("Bad", state="on")
    policy_id = sim.add_ca_policy("Block")
    with pytest.raises(ValueError, match="displayName"):
        sim.edit_ca_policy(policy_id, displayName="")
    sim.delete_ca_policy(policy_id)
    for attempt in (
        lambda: sim.edit_ca_policy(policy_id, state="disabled"),
        lambda: sim.delete_ca_policy(policy_id),
        lambda: sim.ca_policy(policy_id),
    ):
        with pytest.raises(KeyError):
            attempt()
    with pytest.raises(ValueError):
        sim.before_ca_write(lambda tenant: None, times=0)


# Privilege enforcement on account writes


def test_admin_accounts_need_a_privileged_app(sim: SimulatedTenant) -> None:
    sim.assign_role(ADELE.id, SECURITY_ADMINISTRATOR)
    sim.set_app_roles([SECURITY_ADMINISTRATOR])
    user = f"/users/{ADELE.id}"
    for reply in (
        call(sim, "PATCH", user, {"accountEnabled": False}),
        call(sim, "PATCH", user, {"accountEnabled": True}),
        call(sim, "POST", f"{user}/revokeSignInSessions"),
    ):
        message = assert_error(reply, 403, "Authorization_RequestDenied")
        assert message == "Insufficient privileges to complete the operation."
    assert sim.user(ADELE.id).account_enabled
    assert sim.user(ADELE.id).sign_in_sessions_revoked_at is None
    # Renaming is not an account write (it needs User.ReadWrite.All, not an admin role),
    # and non-admins stay within reach.
    sim.set_grants(sim.grants | {"User.ReadWrite.All"})
    assert call(sim, "PATCH", user, {"displayName": "Adele V."})[0] == 204
    assert call(sim, "PATCH", f"/users/{BREAK_GLASS.id}", {"accountEnabled": False})[0] == 204


@pytest.mark.parametrize("app_roles", [None, [PRIVILEGED_AUTH_ADMIN], [GLOBAL_ADMINISTRATOR]])
def test_privileged_auth_admin_or_global_admin_may(
    sim: SimulatedTenant, app_roles: list[str] | None
) -> None:
    if app_roles is not None:
        sim.set_app_roles(app_roles)
    sim.assign_role(ADELE.id, GLOBAL_ADMINISTRATOR)
    assert (
        call(
            sim, "PATCH", f"/users/{ADELE.user_principal_name.upper()}", {"accountEnabled": False}
        )[0]
        == 204
    )
    assert call(sim, "POST", f"/users/{ADELE.id}/revokeSignInSessions")[0] == 200
    assert not sim.user(ADELE.id).account_enabled


def test_any_admin_role_needs_an_app_role_that_may_manage_it(sim: SimulatedTenant) -> None:
    # Who can update sensitive attributes: a Directory Readers holder is beyond an app with no
    # role, within a User Administrator's reach; an Exchange Administrator is not.
    sim.set_app_roles([])
    sim.assign_role(ADELE.id, DIRECTORY_READERS)
    assert_error(
        call(sim, "PATCH", f"/users/{ADELE.id}", {"accountEnabled": False}),
        403,
        "Authorization_RequestDenied",
    )
    sim.set_app_roles([USER_ADMINISTRATOR])
    assert call(sim, "PATCH", f"/users/{ADELE.id}", {"accountEnabled": False})[0] == 204
    sim.assign_role(ADELE.id, EXCHANGE_ADMINISTRATOR)
    assert_error(
        call(sim, "PATCH", f"/users/{ADELE.id}", {"accountEnabled": True}),
        403,
        "Authorization_RequestDenied",
    )
    # A user with no role at all is within reach of the application permission alone.
    sim.set_app_roles([])
    assert call(sim, "PATCH", f"/users/{BREAK_GLASS.id}", {"accountEnabled": False})[0] == 204


@pytest.mark.parametrize("relation", ["member", "owner"])
def test_members_and_owners_of_role_assignable_groups_need_a_privileged_app(
    sim: SimulatedTenant, relation: str
) -> None:
    # Who can update sensitive attributes: "User (no admin role, but member or owner of a
    # role-assignable group)" - only Privileged Authentication and Global Administrators.
    group = "5b2a9c1d-7e3f-4a6b-8c0d-1e2f3a4b5c6d"
    sim.add_group(group, "Tier 0 (role-assignable, no role yet)", role_assignable=True)
    if relation == "member":
        sim.add_group_member(group, ADELE.id)
    else:
        sim.add_group_owner(group, ADELE.id)
    sim.set_app_roles([USER_ADMINISTRATOR])
    assert_error(
        call(sim, "PATCH", f"/users/{ADELE.id}", {"accountEnabled": False}),
        403,
        "Authorization_RequestDenied",
    )
    assert_error(
        call(sim, "POST", f"/users/{ADELE.id}/revokeSignInSessions"),
        403,
        "Authorization_RequestDenied",
    )
    sim.set_app_roles([PRIVILEGED_AUTH_ADMIN])
    assert call(sim, "PATCH", f"/users/{ADELE.id}", {"accountEnabled": False})[0] == 204


def test_an_unknown_user_is_still_a_404(sim: SimulatedTenant) -> None:
    sim.set_app_roles([])
    reply = call(sim, "PATCH", "/users/nobody@contoso.com", {"accountEnabled": False})
    assert_error(reply, 404, "Request_ResourceNotFound")


def test_store_refuses_a_zero_page_size() -> None:
    with pytest.raises(ValueError):
        AccessStore(page_size=0)
    store = AccessStore()
    with pytest.raises(AccessError) as caught:
        store.assignments("principalId eq 1")
    assert caught.value.status == 400
