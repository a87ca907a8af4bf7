"""The permission manifest (`shared/permissions.json`): which application permissions, Exchange
role and directory role the responder's identity needs for the features a deployment uses.

One file, three readers: `infra/grant-graph-permissions.sh` grants from it, the simulated
tenant issues tokens carrying exactly its grants in drills, and the readiness check compares
the live tenant with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.policy import Playbook

Feature = Literal["always", "breakglass", "signin_block", "watched_groups", "alert_comments"]
FEATURES: tuple[Feature, ...] = (
    "always",
    "breakglass",
    "signin_block",
    "watched_groups",
    "alert_comments",
)
GRAPH_AUDIENCE = "https://graph.microsoft.com"
EXCHANGE_AUDIENCE = "https://outlook.office365.com"
GRANT_SCRIPT = "infra/grant-graph-permissions.sh"
_GRANT_FLAGS: dict[Feature, str] = {
    "always": "",
    "breakglass": "--with-breakglass",
    "signin_block": "--with-signin-block",
    "watched_groups": "--with-watched-groups",
    "alert_comments": "--with-alert-comments",
}


@dataclass(frozen=True)
class Permission:
    name: str
    resource: str  # the resource's display name: Microsoft Graph, Office 365 Exchange Online
    audience: str
    features: tuple[Feature, ...]
    used_by: tuple[str, ...]
    why: str

    def needed_for(self, features: Iterable[Feature]) -> bool:
        return bool(set(self.features) & set(features))


@dataclass(frozen=True)
class Role:
    """An Exchange management role or an Entra directory role the identity must hold."""

    name: str
    id: str
    features: tuple[Feature, ...]
    why: str
    fix: str


@dataclass(frozen=True)
class Manifest:
    permissions: tuple[Permission, ...]
    exchange_role: Role
    directory_roles: tuple[Role, ...]

    def for_audience(self, audience: str) -> tuple[Permission, ...]:
        return tuple(p for p in self.permissions if p.audience == audience)

    def needed(self, features: Iterable[Feature], audience: str | None = None) -> list[Permission]:
        wanted: set[Feature] = {*features, "always"}
        return [
            p
            for p in self.permissions
            if p.needed_for(wanted) and (audience is None or p.audience == audience)
        ]

    def grants(self, features: Iterable[Feature], audience: str) -> frozenset[str]:
        """The permission names the deployment grants on `audience` for `features`."""
        return frozenset(p.name for p in self.needed(features, audience))

    def used_by(self, operation: str) -> list[Permission]:
        """The permissions an adapter operation (`GraphDirectory.get_user`) needs."""
        return [p for p in self.permissions if operation in p.used_by]

    def permission(self, name: str) -> Permission:
        for candidate in self.permissions:
            if candidate.name == name:
                return candidate
        raise KeyError(name)


@cache
def manifest() -> Manifest:
    raw = json.loads(resources.files("shared").joinpath("permissions.json").read_text("utf-8"))
    return parse(raw)


def parse(raw: dict[str, Any]) -> Manifest:
    known = set(FEATURES)
    permissions: list[Permission] = []
    for resource in raw["resources"]:
        for item in resource["permissions"]:
            features = tuple(item["features"])
            if not features or set(features) - known:
                raise ValueError(f"{item['name']}: unknown features {features}")
            permissions.append(
                Permission(
                    name=item["name"],
                    resource=resource["name"],
                    audience=resource["audience"],
                    features=features,
                    used_by=tuple(item["used_by"]),
                    why=item["why"],
                )
            )
    exchange = raw["exchange_role"]
    return Manifest(
        permissions=tuple(permissions),
        exchange_role=Role(
            name=exchange["name"],
            id=exchange["name"],
            features=tuple(exchange["features"]),
            why=exchange["why"],
            fix=exchange["fix"],
        ),
        directory_roles=tuple(
            Role(
                name=r["name"],
                id=r["id"],
                features=tuple(r["features"]),
                why=r["why"],
                fix=r["fix"],
            )
            for r in raw["directory_roles"]
        ),
    )


def features_of(settings: Settings, playbook: Playbook) -> tuple[Feature, ...]:
    """The features a deployment uses, from its settings and its playbook."""
    chosen: list[Feature] = ["always"]
    if settings.breakglass_accounts:
        chosen.append("breakglass")
    if any(spec.signin_block for rule in playbook.rules for spec in rule.actions):
        chosen.append("signin_block")
    if settings.watched_groups:
        chosen.append("watched_groups")
    if settings.notice_alert_comments:
        chosen.append("alert_comments")
    return tuple(chosen)


def grant_command(features: Iterable[Feature]) -> str:
    """The grant script's command line for a deployment with `features`."""
    flags = [_GRANT_FLAGS[f] for f in FEATURES if f in set(features) and _GRANT_FLAGS[f]]
    return " ".join([GRANT_SCRIPT, *flags])
