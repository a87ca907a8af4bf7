"""Who may do what in the simulated directory: active role assignments (unified RBAC), the
Conditional Access policies, and the directory roles of the responder's own app.

Conditional Access updates follow Graph's "Update conditionalAccessPolicy" (v1.0): properties a
PATCH leaves out keep their values, and its example sends a `conditions` object holding only
`signInRiskLevels`, so condition sets it does not name (`users`, `applications`, ...) are kept.
How a set it does name is merged is not documented; the simulator takes the strict reading and
replaces that set whole. A client that sends `users` with only `excludeUsers` therefore loses
the policy's `includeUsers` (400: a policy must include someone) or its group and role
conditions (silently, but visibly in the stored policy); one that sends the set as it read it,
changed only where it means to, is right under either reading.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.simulator.state import JsonObject, format_timestamp

GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_AUTHENTICATION_ADMINISTRATOR = "7be44c8a-adaf-4e2a-84d6-ab2649e08a13"
USER_ADMINISTRATOR = "fe930be7-5e62-47db-91af-98c3a49a38b1"
AUTHENTICATION_ADMINISTRATOR = "c4e39bd9-1100-46d3-8c65-fb160da0071f"
# Roles that let an app change the sign-in state of any account, admins included.
ACCOUNT_ADMIN_ROLES = frozenset({GLOBAL_ADMINISTRATOR, PRIVILEGED_AUTHENTICATION_ADMINISTRATOR})
# "Who can update sensitive attributes" (Graph, Working with users): the roles whose holders a
# User Administrator, or an Authentication Administrator, may still change. Holders of any other
# role, and members and owners of role-assignable groups, need a Privileged Authentication
# Administrator or a Global Administrator.
_DIRECTORY_READERS = "88d8e3e3-8f55-4a1e-953a-9b9898b8876b"
_GUEST_INVITER = "95e79109-95c0-4d8e-aee3-d01accf2d47b"
_MESSAGE_CENTER_READER = "790c1fb9-7f7d-4f88-86a1-ef1f95c05c1b"
_PASSWORD_ADMINISTRATOR = "966707d0-3269-4727-9be2-8c3a10f19b9d"
_REPORTS_READER = "4a5d8f65-41da-4de4-8968-e035b65339cf"
_USAGE_SUMMARY_REPORTS_READER = "75934031-6c7e-415a-99d7-48dbd49e875e"
_HELPDESK_ADMINISTRATOR = "729827e3-9c14-49f7-bb1b-9608f156bbb8"
_GROUPS_ADMINISTRATOR = "fdd7a751-b60b-444a-984c-02652fe8fa1c"
_READERS_AND_INVITERS = frozenset(
    {
        _DIRECTORY_READERS,
        _GUEST_INVITER,
        _MESSAGE_CENTER_READER,
        _PASSWORD_ADMINISTRATOR,
        _REPORTS_READER,
        _USAGE_SUMMARY_REPORTS_READER,
    }
)
LESSER_ROLES = {
    USER_ADMINISTRATOR: _READERS_AND_INVITERS
    | {_HELPDESK_ADMINISTRATOR, _GROUPS_ADMINISTRATOR, USER_ADMINISTRATOR},
    AUTHENTICATION_ADMINISTRATOR: _READERS_AND_INVITERS | {AUTHENTICATION_ADMINISTRATOR},
}
POLICY_STATES = ("enabled", "disabled", "enabledForReportingButNotEnforced")
_USER_SET_FIELDS = (
    "includeUsers",
    "excludeUsers",
    "includeGroups",
    "excludeGroups",
    "includeRoles",
    "excludeRoles",
)
_USER_SET_OBJECTS = ("includeGuestsOrExternalUsers", "excludeGuestsOrExternalUsers")
_WRITABLE = (
    "displayName",
    "description",
    "state",
    "conditions",
    "grantControls",
    "sessionControls",
)
_READ_ONLY = ("id", "createdDateTime", "modifiedDateTime", "templateId")
_FILTER = re.compile(r"^\s*(principalId|roleDefinitionId)\s+eq\s+'([0-9A-Fa-f-]{36})'\s*$")


class AccessError(Exception):
    """A refused request; the server answers it in Graph's error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _Hook:
    run: Callable[[], None]
    remaining: int


class AccessStore:
    """Role assignments, Conditional Access policies and the app's own roles, under one lock."""

    def __init__(self, page_size: int = 100) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.page_size = page_size
        self._lock = threading.Lock()
        self._assignments: list[JsonObject] = []
        self._policies: list[JsonObject] = []
        self._app_roles = {PRIVILEGED_AUTHENTICATION_ADMINISTRATOR}
        self._write_hooks: list[_Hook] = []

    # Role assignments

    def assign(self, principal_id: str, role_id: str) -> None:
        assignment = {
            "id": f"{role_id}_{principal_id}",
            "principalId": principal_id.lower(),
            "roleDefinitionId": role_id.lower(),
            "directoryScopeId": "/",
        }
        with self._lock:
            if assignment not in self._assignments:
                self._assignments.append(assignment)

    def unassign(self, principal_id: str, role_id: str) -> None:
        with self._lock:
            self._assignments = [
                a
                for a in self._assignments
                if (a["principalId"], a["roleDefinitionId"])
                != (principal_id.lower(), role_id.lower())
            ]

    def assignments(self, filter_expression: str | None = None) -> list[JsonObject]:
        """Every assignment, or those `principalId eq '...'` / `roleDefinitionId eq '...'`
        selects (the two filters the simulator understands)."""
        with self._lock:
            found = copy.deepcopy(self._assignments)
        if filter_expression is None:
            return found
        match = _FILTER.match(filter_expression)
        if match is None:
            raise AccessError(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported $filter {filter_expression!r}: only principalId eq '<id>' or "
                "roleDefinitionId eq '<id>'.",
            )
        field, value = match[1], match[2].lower()
        return [a for a in found if a[field] == value]

    # The app's own directory roles, and what they allow

    def set_app_roles(self, role_ids: Iterable[str]) -> None:
        with self._lock:
            self._app_roles = {r.lower() for r in role_ids}

    def app_roles(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._app_roles)

    def check_account_write(
        self,
        user_id: str,
        group_ids: Iterable[str] = (),
        in_role_assignable_group: bool = False,
    ) -> None:
        """403, as Entra answers, unless the app may change the target's sensitive attributes
        (accountEnabled, sessions): any account for a Global or Privileged Authentication
        Administrator; for a User or Authentication Administrator, accounts holding no role
        but the lesser ones that role may manage; with no role, only accounts holding no role.
        Roles count whether held directly or through the role-assignable `group_ids` the
        target belongs to, and a member or owner of any role-assignable group
        (`in_role_assignable_group`) needs a Global or Privileged Authentication Administrator."""
        principals = {p.lower() for p in (user_id, *group_ids)}
        with self._lock:
            roles = {
                a["roleDefinitionId"] for a in self._assignments if a["principalId"] in principals
            }
            app_roles = set(self._app_roles)
        if self._may_write(app_roles, roles, in_role_assignable_group):
            return
        raise AccessError(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )

    @staticmethod
    def _may_write(app_roles: set[str], roles: set[str], in_role_assignable_group: bool) -> bool:
        if app_roles & ACCOUNT_ADMIN_ROLES:
            return True
        if in_role_assignable_group:
            return False
        if not roles:
            return True  # a user with no admin role: the application permission suffices
        return any(roles <= LESSER_ROLES[r] for r in app_roles & LESSER_ROLES.keys())

    # Conditional Access policies

    def add_policy(self, body: Mapping[str, Any]) -> JsonObject:
        now = format_timestamp(datetime.now(UTC))
        policy = {
            "id": str(uuid.uuid4()),
            "templateId": None,
            "displayName": "",
            "description": None,
            "createdDateTime": now,
            # Graph leaves it null until the first change.
            "modifiedDateTime": None,
            "state": "enabled",
            "conditions": {
                "userRiskLevels": [],
                "signInRiskLevels": [],
                "clientAppTypes": ["all"],
                "servicePrincipalRiskLevels": [],
                "platforms": None,
                "locations": None,
                "devices": None,
                "clientApplications": None,
                "applications": {
                    "includeApplications": ["All"],
                    "excludeApplications": [],
                    "includeUserActions": [],
                    "includeAuthenticationContextClassReferences": [],
                    "applicationFilter": None,
                },
                "users": _users({"includeUsers": ["None"]}),
            },
            "grantControls": {"operator": "OR", "builtInControls": ["block"]},
            "sessionControls": None,
        }
        _apply(policy, body, creating=True)
        with self._lock:
            self._policies.append(policy)
            return copy.deepcopy(policy)

    def policies(self) -> list[JsonObject]:
        with self._lock:
            return copy.deepcopy(self._policies)

    def policy(self, policy_id: str) -> JsonObject:
        with self._lock:
            return copy.deepcopy(self._find(policy_id))

    def before_write(self, hook: Callable[[], None], times: int) -> None:
        if times < 1:
            raise ValueError(f"a hook must run at least once, got times={times}")
        with self._lock:
            self._write_hooks.append(_Hook(hook, times))

    def update_policy(self, policy_id: str, body: Mapping[str, Any]) -> None:
        for run in self._take_hooks():
            run()
        with self._lock:
            policy = self._find(policy_id)
            _apply(policy, body, creating=False)
            policy["modifiedDateTime"] = format_timestamp(datetime.now(UTC))

    def edit_policy(self, policy_id: str, body: Mapping[str, Any]) -> None:
        """An administrator's change: no hooks run."""
        with self._lock:
            policy = self._find(policy_id)
            _apply(policy, body, creating=False)
            policy["modifiedDateTime"] = format_timestamp(datetime.now(UTC))

    def delete_policy(self, policy_id: str) -> None:
        with self._lock:
            self._policies.remove(self._find(policy_id))

    def _take_hooks(self) -> list[Callable[[], None]]:
        with self._lock:
            due = [hook.run for hook in self._write_hooks]
            for hook in self._write_hooks:
                hook.remaining -= 1
            self._write_hooks = [h for h in self._write_hooks if h.remaining > 0]
        return due

    def _find(self, policy_id: str) -> JsonObject:
        for policy in self._policies:
            if policy["id"].lower() == policy_id.lower():
                return policy
        raise AccessError(
            404, "ResourceNotFound", f"Conditional Access policy '{policy_id}' was not found."
        )


def _apply(policy: JsonObject, body: Mapping[str, Any], *, creating: bool) -> None:
    for name in body:
        if name not in (*_WRITABLE, *_READ_ONLY) and not name.startswith("@odata."):
            raise _bad_request(f"Property '{name}' is not supported on a conditionalAccessPolicy.")
    if "displayName" in body or creating:
        display_name = body.get("displayName")
        if not isinstance(display_name, str) or not display_name.strip():
            raise _bad_request("Property 'displayName' must be a non-empty string.")
        policy["displayName"] = display_name
    if "state" in body:
        if body["state"] not in POLICY_STATES:
            raise _bad_request(f"Property 'state' must be one of {', '.join(POLICY_STATES)}.")
        policy["state"] = body["state"]
    if creating and not isinstance((body.get("conditions") or {}).get("users"), dict):
        raise _bad_request("A new policy needs conditions.users.")
    if "conditions" in body:
        conditions = body["conditions"]
        if not isinstance(conditions, dict):
            raise _bad_request("Property 'conditions' must be an object.")
        for set_name, value in conditions.items():
            if set_name.startswith("@odata."):
                continue
            if set_name == "users":
                value = _users(value)
            policy["conditions"][set_name] = copy.deepcopy(value)
    for name in ("description", "grantControls", "sessionControls"):
        if name in body:
            policy[name] = copy.deepcopy(body[name])


def _users(value: Any) -> JsonObject:
    """The `users` condition set as written: the six id lists (an absent one is empty) and
    any other property (`includeGuestsOrExternalUsers`, ...) kept as sent, absent ones null."""
    if not isinstance(value, dict):
        raise _bad_request("Property 'conditions.users' must be an object.")
    users: JsonObject = dict.fromkeys(_USER_SET_OBJECTS)
    users.update(
        (name, copy.deepcopy(item))
        for name, item in value.items()
        if name not in _USER_SET_FIELDS and not name.startswith("@odata.")
    )
    for name in _USER_SET_FIELDS:
        items = value.get(name) or []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _bad_request(f"Property 'conditions.users.{name}' must be a list of strings.")
        users[name] = list(items)
    if not (users["includeUsers"] or users["includeGroups"] or users["includeRoles"]):
        raise _bad_request(
            "conditions.users must include users, groups or roles (includeUsers, "
            "includeGroups or includeRoles)."
        )
    return users


def _bad_request(message: str) -> AccessError:
    return AccessError(400, "BadRequest", message)
