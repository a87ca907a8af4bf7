"""Which application permission each simulated endpoint needs, and how the real service says
no: the permission tables of Microsoft Learn's API pages, and the 403 bodies live tenants
answer (captures cited in docs/fidelity.md, section "Permissions").

A requirement is a list of alternatives, each a set of permissions that must all be held: Graph
accepts the least privileged permission or any higher one its page lists. The simulator knows
only the permissions the responder could hold; `Directory.*` and the other broad ones are
listed where the pages list them, so a tenant that grants more still works.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum

from shared.simulator.state import JsonObject

_REVOKE = ("revokeSignInSessions", "microsoft.graph.revokeSignInSessions")


class Denial(Enum):
    """The 403 body each family of endpoints answers a token without the permission with."""

    DIRECTORY = "directory"
    CONDITIONAL_ACCESS = "conditional_access"
    SECURITY = "security"
    SUBSCRIPTION = "subscription"


@dataclass(frozen=True)
class Requirement:
    any_of: tuple[frozenset[str], ...]
    denial: Denial
    operation: str = ""  # subscriptions name it in their error: Create, Update, Delete, Get

    def met_by(self, roles: Collection[str]) -> bool:
        held = set(roles)
        return any(alternative <= held for alternative in self.any_of)


class PermissionDenied(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _alternatives(*options: str | tuple[str, ...]) -> tuple[frozenset[str], ...]:
    return tuple(frozenset((o,) if isinstance(o, str) else o) for o in options)


# user-get: User.Read.All least; User.ReadWrite.All, Directory.Read.All, Directory.ReadWrite.All.
USER_READ = _alternatives(
    "User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"
)
# user-update, accountEnabled: User.EnableDisableAccount.All with User.Read.All.
USER_ENABLE_DISABLE = _alternatives(
    ("User.EnableDisableAccount.All", "User.Read.All"),
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
)
# user-update, other properties (displayName: the simulator's only other writable one).
USER_WRITE = _alternatives("User.ReadWrite.All", "Directory.ReadWrite.All")
# user-revokesigninsessions.
REVOKE_SESSIONS = _alternatives(
    "User.RevokeSessions.All", "User.ReadWrite.All", "Directory.ReadWrite.All"
)
# security-list-alerts_v2; the live 403 lists the incident permissions as accepted too.
ALERTS_READ = _alternatives(
    "SecurityAlert.Read.All",
    "SecurityAlert.ReadWrite.All",
    "SecurityIncident.Read.All",
    "SecurityIncident.ReadWrite.All",
)
# security-alert-post-comments: SecurityAlert.ReadWrite.All, nothing narrower or higher.
ALERTS_WRITE = _alternatives("SecurityAlert.ReadWrite.All")
# rbacapplication-list-roleassignments (directory provider).
ROLE_ASSIGNMENTS_READ = _alternatives(
    "RoleManagement.Read.Directory",
    "RoleManagement.Read.All",
    "Directory.Read.All",
    "RoleManagement.ReadWrite.Directory",
    "Directory.ReadWrite.All",
)
# user-list-transitivememberof (another user's memberships): User.Read.All least.
MEMBERSHIPS_READ = _alternatives(
    "User.Read.All",
    "GroupMember.Read.All",
    "Group.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
# Without one of these, groups in a directoryObject collection come back with id and type only.
GROUP_READERS = frozenset(
    {
        "GroupMember.Read.All",
        "Group.Read.All",
        "Group.ReadWrite.All",
        "GroupMember.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    }
)
# group-get and group-list-members: GroupMember.Read.All least.
GROUP_READ = _alternatives(*sorted(GROUP_READERS))
# conditionalaccessroot-list-policies / -list-namedlocations and their get: Policy.Read.All.
CA_READ = _alternatives("Policy.Read.All", "Policy.ReadWrite.ConditionalAccess")
# conditionalaccesspolicy-update, ipnamedlocation-update, conditionalaccessroot-post-*:
# Policy.Read.All and Policy.ReadWrite.ConditionalAccess.
CA_WRITE = _alternatives(("Policy.Read.All", "Policy.ReadWrite.ConditionalAccess"))
# subscription-post-subscriptions, per resource.
SUBSCRIBE_USERS = _alternatives("User.Read.All")
SUBSCRIBE_GROUPS = _alternatives("Group.Read.All")


def requirement(
    method: str,
    segments: list[str],
    body: Mapping[str, object] | None,
    subscription_resource: Callable[[str], str | None],
) -> Requirement | None:
    """What `method /segments` needs; None for a route without a modelled requirement (the
    handler then answers it, usually 404 UnknownRoute)."""
    directory, ca = Denial.DIRECTORY, Denial.CONDITIONAL_ACCESS
    match method, segments:
        case "GET", ["users", _]:
            return Requirement(USER_READ, directory)
        case "PATCH", ["users", _]:
            # A body Graph cannot deserialize is a 400 whatever the token holds (the handler).
            if body is not None and isinstance(body.get("displayName"), str):
                return Requirement(USER_WRITE, directory)
            return Requirement(USER_ENABLE_DISABLE, directory)
        case "POST", ["users", _, action] if action in _REVOKE:
            return Requirement(REVOKE_SESSIONS, directory)
        case "GET", ["users", _, "transitiveMemberOf", *_]:
            return Requirement(MEMBERSHIPS_READ, directory)
        case "GET", ["security", "alerts_v2"] | ["security", "alerts_v2", _]:
            return Requirement(ALERTS_READ, Denial.SECURITY)
        case "POST", ["security", "alerts_v2", _, "comments"]:
            return Requirement(ALERTS_WRITE, Denial.SECURITY)
        case "GET", ["roleManagement", "directory", "roleAssignments"]:
            return Requirement(ROLE_ASSIGNMENTS_READ, directory)
        case "GET", ["groups", _, *rest] if rest in ([], ["members"]):
            return Requirement(GROUP_READ, directory)
        case "GET", ["identity", "conditionalAccess", "policies" | "namedLocations", *_]:
            return Requirement(CA_READ, ca)
        case _, ["identity", "conditionalAccess", "policies" | "namedLocations", *_]:
            return Requirement(CA_WRITE, ca)
        case "POST", ["subscriptions"]:
            resource = body.get("resource") if body else None
            return _subscription_requirement(resource, "Create")
        case "PATCH" | "DELETE" | "GET", ["subscriptions", subscription_id]:
            operation = {"PATCH": "Update", "DELETE": "Delete", "GET": "Get"}[method]
            return _subscription_requirement(subscription_resource(subscription_id), operation)
    return None


def _subscription_requirement(resource: object, operation: str) -> Requirement | None:
    if not isinstance(resource, str):
        return None  # the handler refuses the request itself
    root = resource.strip("/").split("/")[0].lower()
    if root == "users":
        return Requirement(SUBSCRIBE_USERS, Denial.SUBSCRIPTION, operation)
    if root == "groups":
        return Requirement(SUBSCRIBE_GROUPS, Denial.SUBSCRIPTION, operation)
    return None


def check(need: Requirement | None, roles: Collection[str]) -> None:
    """PermissionDenied, in the real service's words, unless `roles` meet `need`."""
    if need is None or need.met_by(roles):
        return
    match need.denial:
        case Denial.DIRECTORY:
            raise PermissionDenied(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        case Denial.CONDITIONAL_ACCESS:
            raise PermissionDenied(
                403,
                "AccessDenied",
                "You cannot perform the requested operation, required scopes are missing in "
                "the token.",
            )
        case Denial.SECURITY:
            required = ",".join(sorted(p for alt in need.any_of for p in alt))
            raise PermissionDenied(
                403,
                "Forbidden",
                f"Missing application roles. API required roles: {required}, "
                f"application roles: {','.join(sorted(roles))}.",
            )
        case Denial.SUBSCRIPTION:
            raise PermissionDenied(
                403,
                "ExtensionError",
                f"Operation: {need.operation}; Exception: [Status Code: Forbidden; "
                "Reason: Forbidden]",
            )


def limit_memberships(
    method: str, segments: list[str], body: JsonObject | None, roles: Collection[str]
) -> JsonObject | None:
    """A user's memberships read without a group permission: Graph still lists the groups but
    returns only their type and id (everything else null), so a caller that needs
    `isAssignableToRole` silently sees none."""
    if method != "GET" or body is None or GROUP_READERS & set(roles):
        return body
    match segments:
        case ["users", _, "transitiveMemberOf", *_]:
            limited = []
            for item in body.get("value", []):
                kept = {"@odata.type": item.get("@odata.type"), "id": item.get("id")}
                limited.append({**dict.fromkeys(item), **kept})
            return {**body, "value": limited}
    return body
