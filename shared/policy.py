"""The playbook (which alerts lead to which actions) and the guards that run after it.

A playbook is a TOML file of rules. A rule matches an alert by severity, category and source,
selects the alert's entities by kind, role and verdict, and names the actions to run on each
selected entity. Guards then refuse what must never happen automatically (protected identities)
and turn everything into plans when dry-run is on.
"""

from __future__ import annotations

import functools
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.config import BreakGlassApproval, PolicySettings
from shared.errors import ConfigError
from shared.models import (
    ALL_BREAKGLASS,
    IP_CACHE_SIZE,
    ActionKind,
    ActionRequest,
    Actor,
    Alert,
    AlertSource,
    Decision,
    Entity,
    EntityKind,
    Severity,
    parse_ip_target,
    validate_ip_target,
    validate_user_target,
)


def _lower_all(values: list[str]) -> list[str]:
    return [value.strip().lower() for value in values]


# Ranges set aside for examples (RFC 5737, RFC 3849, RFC 9637). Python's ipaddress counts them
# as private; saying so would send a newcomer looking for a network of theirs.
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")
)


class EntitySelector(BaseModel):
    """Which entities of a matching alert the actions apply to. An entity is selected when it
    has one of `roles` or its verdict is one of `verdicts`; with both lists empty, every entity
    of the kind is selected."""

    model_config = ConfigDict(extra="forbid")

    kind: EntityKind = EntityKind.USER
    roles: list[str] = Field(default_factory=list)
    verdicts: list[str] = Field(default_factory=list)

    _normalize = field_validator("roles", "verdicts")(_lower_all)

    def selects(self, entity: Entity) -> bool:
        if entity.kind is not self.kind:
            return False
        if not self.roles and not self.verdicts:
            return True
        return bool(set(self.roles) & set(entity.roles)) or entity.verdict in self.verdicts


class ActionSpec(BaseModel):
    """One action of a rule, with its parameters. A bare kind (`"disable_account"`) in the
    playbook is short for `{kind = "disable_account"}`."""

    model_config = ConfigDict(extra="forbid")

    kind: ActionKind
    ttl_minutes: int | None = Field(None, ge=5, le=30 * 24 * 60)
    signin_block: bool = False
    mode: Literal["reject", "delete"] = "reject"
    approval: bool = Field(False, description="Hold the action for an engineer's approval.")
    allow_privileged: bool = Field(
        False,
        description="May disable holders of privileged roles, always after an approval.",
    )

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"kind", "approval"}, exclude_defaults=True)


def _spec(value: object) -> object:
    return {"kind": value} if isinstance(value, str) else value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    severities: list[Severity] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    sources: list[AlertSource] = Field(default_factory=list)
    entities: EntitySelector = Field(default_factory=EntitySelector)
    actions: list[ActionSpec] = Field(min_length=1)
    include_closed: bool = Field(
        False,
        strict=True,
        description="Also act on closed or resolved alerts and false or benign positives.",
    )

    _normalize = field_validator("categories")(_lower_all)

    @field_validator("actions", mode="before")
    @classmethod
    def _specs(cls, value: object) -> object:
        return [_spec(item) for item in value] if isinstance(value, list) else value

    def matches(self, alert: Alert) -> bool:
        if self.severities and alert.severity not in self.severities:
            return False
        if self.categories and alert.category.lower() not in self.categories:
            return False
        return not self.sources or alert.source in self.sources


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(1, ge=1, le=1)
    rules: list[Rule] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> Playbook:
        data: dict[str, Any] = {}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            return cls.model_validate(data)
        except OSError as exc:
            raise ConfigError(f"playbook {path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"playbook {path}: not UTF-8 at byte {exc.start}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"playbook {path}: invalid TOML: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"playbook {path}: {_playbook_errors(exc, data)}") from None


def _playbook_errors(exc: ValidationError, data: dict[str, Any]) -> str:
    """Every error in the file, each naming its rule by name and echoing the bad value."""
    found = data.get("rules")
    rules: list[Any] = found if isinstance(found, list) else []
    problems = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            rule = rules[index] if index < len(rules) else None
            name = rule.get("name") if isinstance(rule, dict) else None
            where = f"rule {name!r}" if isinstance(name, str) else f"rule #{index + 1}"
            loc = loc[2:]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        where = (where + " " if where else "") + path.lstrip(".")
        bad = error.get("input")
        shown = f" (got {bad!r:.60})" if isinstance(bad, str | int | float | bool) else ""
        problems.append(f"{where.strip() or 'file'}: {error['msg']}{shown}")
    count = f"{len(problems)} errors: " if len(problems) > 1 else ""
    return count + "; ".join(problems)


@dataclass(frozen=True)
class Skipped:
    """An entity a rule selected but no action could be built for, and why."""

    rule: str
    entity: str
    reason: str


@dataclass
class Plan:
    """What the policy decided for one alert."""

    alert: Alert
    actions: list[ActionRequest] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class Guards:
    """Checks applied to every automatic action after the playbook chose it."""

    protected_identities: frozenset[str] = frozenset()
    dry_run: bool = False
    ip_allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    min_prefix_v4: int = 24
    min_prefix_v6: int = 48
    breakglass_approval: BreakGlassApproval = BreakGlassApproval.HUMAN
    breakglass: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: PolicySettings) -> Guards:
        protected = [*settings.protected_identities, *settings.breakglass_accounts]
        return cls(
            protected_identities=frozenset(p.strip().lower() for p in protected if p.strip()),
            breakglass_approval=settings.breakglass_approval,
            breakglass=frozenset(settings.breakglass_accounts),
            dry_run=settings.dry_run,
            ip_allowlist=tuple(ipaddress.ip_network(n) for n in settings.ip_allowlist),
            min_prefix_v4=settings.ip_min_prefix_v4,
            min_prefix_v6=settings.ip_min_prefix_v6,
        )

    def protected_reason(self, *identities: str | None) -> str | None:
        """Why a user (known by any of its ids/UPNs) must not be touched, or None."""
        for identity in identities:
            if identity and identity.lower() in self.protected_identities:
                return f"{identity} is a protected identity (break-glass or VIP)"
        return None

    def ip_block_reason(self, target: str) -> str | None:
        """Why a network must not be blocked, or None: it is not publicly routable, belongs to
        the company or a partner, or is broader than the configured prefix."""
        return _ip_block_reason(self, target)

    def breakglass_reason(self, *identities: str | None) -> str | None:
        """Why `enable_account` must not open an emergency account, or None."""
        for identity in identities:
            if identity and identity.lower() in self.breakglass:
                return (
                    f"{identity} is an emergency access account: open it with "
                    "activate_breakglass (time-boxed, with its approvals), not enable_account"
                )
        return None

    def refusal(self, action: ActionRequest, *aliases: str | None) -> str | None:
        if action.kind in PROTECTED_KINDS:
            return self.protected_reason(action.target, *aliases)
        if action.kind is ActionKind.ENABLE_ACCOUNT:
            return self.breakglass_reason(action.target, *aliases)
        if action.kind is ActionKind.BLOCK_IP:
            return self.ip_block_reason(action.target)
        return None

    def decide(self, action: ActionRequest, *aliases: str | None) -> ActionRequest:
        reason = self.refusal(action, *aliases)
        if reason:
            return action.model_copy(update={"decision": Decision.REFUSED, "reason": reason})
        if self.dry_run or action.dry_run:
            return action.model_copy(update={"decision": Decision.DRY_RUN, "dry_run": True})
        if action.kind is ActionKind.ACTIVATE_BREAKGLASS and self._second_engineer(action):
            reason = f"emergency access activation waits for a second engineer ({action.reason})"
            return action.model_copy(update={"decision": Decision.NEEDS_APPROVAL, "reason": reason})
        if action.kind is ActionKind.DEACTIVATE_BREAKGLASS and self._early_close(action):
            reason = (
                "closing emergency access before its time waits for a second engineer "
                f"({action.reason})"
            )
            return action.model_copy(update={"decision": Decision.NEEDS_APPROVAL, "reason": reason})
        return action

    def _early_close(self, action: ActionRequest) -> bool:
        """An engineer closing emergency access early (during a lockout that would lock the
        admins out again) needs four eyes, as opening it does; the responder's own close at
        the end of the time box never waits."""
        human = action.requested_by.kind == "engineer"
        return human and self.breakglass_approval is not BreakGlassApproval.NONE

    def _second_engineer(self, action: ActionRequest) -> bool:
        if self.breakglass_approval is BreakGlassApproval.ALWAYS:
            return True
        human = action.requested_by.kind == "engineer"
        return human and self.breakglass_approval is BreakGlassApproval.HUMAN


@functools.lru_cache(maxsize=IP_CACHE_SIZE)
def _ip_block_reason(guards: Guards, target: str) -> str | None:
    """`Guards.ip_block_reason`, remembered per guards and target (both immutable): a storm
    asks about the same networks over and over."""
    network = parse_ip_target(target)
    address = network.network_address
    for documentation in DOCUMENTATION_NETWORKS:
        same_family = network.version == documentation.version
        if same_family and network.subnet_of(documentation):  # type: ignore[arg-type]
            return f"{network} is reserved for documentation ({documentation})"
    for flag in (
        "is_loopback",
        "is_link_local",
        "is_multicast",
        "is_unspecified",
        "is_reserved",
        "is_private",
    ):
        if getattr(address, flag) or getattr(network, flag):
            return f"{network} is {flag.removeprefix('is_').replace('_', '-')}"
    if not network.is_global:
        return f"{network} is not publicly routable"
    minimum = guards.min_prefix_v4 if network.version == 4 else guards.min_prefix_v6
    if network.prefixlen < minimum:
        return f"{network} is broader than /{minimum}"
    for allowed in guards.ip_allowlist:
        if network.version == allowed.version and network.overlaps(allowed):
            return f"{network} overlaps the allow-listed network {allowed}"
    return None


MAX_ACTIONS_PER_ALERT = 500

# Statuses of a closed alert or incident (Graph alerts_v2 and incidents: resolved; Sentinel
# incidents: Closed; Sentinel alerts: Resolved, Dismissed) and classifications of benign ones
# (Graph: falsePositive, informationalExpectedActivity; Sentinel: FalsePositive, BenignPositive).
CLOSED_STATUSES = frozenset({"resolved", "closed", "dismissed"})
BENIGN_CLASSIFICATIONS = frozenset(
    {"falsepositive", "benignpositive", "informationalexpectedactivity"}
)


def closed_reason(alert: Alert) -> str | None:
    """Why an alert is no longer one to act on by default, or None."""
    if alert.status.strip().lower() in CLOSED_STATUSES:
        return (
            f"alert status is {alert.status}: closed alerts plan nothing (rule may include_closed)"
        )
    if alert.classification.strip().lower() in BENIGN_CLASSIFICATIONS:
        return (
            f"alert is classified {alert.classification}: benign alerts plan nothing "
            "(rule may include_closed)"
        )
    return None


# Actions that take access away; protected identities are shielded from them.
PROTECTED_KINDS = frozenset({ActionKind.DISABLE_ACCOUNT, ActionKind.REVOKE_SESSIONS})


class Policy:
    """Turns alerts into guarded action requests."""

    def __init__(self, playbook: Playbook, guards: Guards) -> None:
        self.playbook = playbook
        self.guards = guards

    def plan(self, alert: Alert) -> Plan:
        plan = Plan(alert)
        seen: set[str] = set()
        closed = closed_reason(alert)
        for rule in self.playbook.rules:
            if not rule.matches(alert):
                continue
            if closed and not rule.include_closed:
                plan.skipped.append(Skipped(rule.name, alert.key, closed))
                continue
            for spec in rule.actions:
                if spec.kind.targets_breakglass:
                    self._plan_action(plan, rule, spec, ALL_BREAKGLASS, seen)
            for entity in alert.entities:
                if rule.entities.selects(entity):
                    self._plan_entity(plan, rule, entity, seen)
        if len(plan.actions) > MAX_ACTIONS_PER_ALERT:
            # One alert naming thousands of targets is more likely poisoned than precise.
            reason = f"more than {MAX_ACTIONS_PER_ALERT} actions from one alert: left to engineers"
            plan.skipped += [
                Skipped(a.rule or "", a.target, reason)
                for a in plan.actions[MAX_ACTIONS_PER_ALERT:]
            ]
            del plan.actions[MAX_ACTIONS_PER_ALERT:]
        return plan

    def _plan_entity(self, plan: Plan, rule: Rule, entity: Entity, seen: set[str]) -> None:
        label = entity.user_id or entity.upn or entity.address or entity.display_name or "?"
        try:
            target = _target_of(entity)
        except ValueError as exc:
            plan.skipped.append(Skipped(rule.name, label, str(exc)))
            return
        for spec in rule.actions:
            if spec.kind.targets_breakglass or spec.kind.targets_ip != (
                entity.kind is EntityKind.IP
            ):
                continue
            self._plan_action(
                plan, rule, spec, target, seen, entity.user_id, entity.upn, names=_names(entity)
            )

    def _plan_action(
        self,
        plan: Plan,
        rule: Rule,
        spec: ActionSpec,
        target: str,
        seen: set[str],
        *aliases: str | None,
        names: dict[str, str] | None = None,
    ) -> None:
        action_id = ActionRequest.derive_id(spec.kind, target, plan.alert.key)
        if action_id in seen:
            return
        seen.add(action_id)
        request = ActionRequest(
            id=action_id,
            kind=spec.kind,
            target=target,
            params={**spec.params(), **(names or {})},
            reason=f"rule {rule.name}: {plan.alert.title or plan.alert.alert_id}",
            rule=rule.name,
            alert_id=plan.alert.key,
            incident_id=plan.alert.incident_id,
            requested_by=Actor(),
        )
        decided = self.guards.decide(request, *aliases)
        if spec.approval and decided.decision is Decision.EXECUTE:
            reason = f"rule {rule.name} asks for an engineer's approval ({request.reason})"
            decided = decided.model_copy(
                update={"decision": Decision.NEEDS_APPROVAL, "reason": reason}
            )
        plan.actions.append(decided)


def _names(entity: Entity) -> dict[str, str]:
    """The names the alert gives a user target, kept in the action's parameters so that the
    audit trail records whom an action was about as the alert saw them (`target_upn`,
    `target_name`), whichever identifier the target itself is."""
    if entity.kind is EntityKind.IP:
        return {}
    names = {"target_upn": entity.upn, "target_name": entity.display_name}
    return {key: value.strip() for key, value in names.items() if value and value.strip()}


def _target_of(entity: Entity) -> str:
    """The validated action target an entity names; ValueError says why there is none."""
    if entity.kind is EntityKind.IP:
        if not entity.address:
            raise ValueError("no address in IP evidence")
        return validate_ip_target(entity.address)
    candidate = entity.user_id or entity.upn
    if not candidate:
        raise ValueError("no Entra object id or UPN in evidence")
    return validate_user_target(candidate)
