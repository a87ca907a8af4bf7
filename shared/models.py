"""The responder's domain model: normalized alerts, action requests, outcomes and audit records.

Every ingestion source is turned into an `Alert`; the policy turns alerts into `ActionRequest`s;
executors turn requests into `ActionOutcome`s; the audit trail stores `AuditEvent`s.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

UPN_PATTERN = re.compile(r"^[A-Za-z0-9._%+'#$&*!~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


MAX_TEXT = 1000
# Ids and versions from alerts are refused beyond this; ids cannot be cut without changing them.
MAX_ID = 256
# Entity identifiers (object ids, UPNs, addresses): far beyond any real one, refused beyond.
MAX_ENTITY_ID = 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


def _capped(value: object) -> object:
    """Free text from alerts is cut to MAX_TEXT characters: it ends up in queue messages,
    table rows and audit records, which all have size limits."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


class Severity(StrEnum):
    INFORMATIONAL = "informational"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> Severity:
        """Accept Graph camelCase, Defender/Sentinel PascalCase and unknown values."""
        text = str(value or "").strip().lower()
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


class EntityKind(StrEnum):
    USER = "user"
    IP = "ip"
    MAILBOX = "mailbox"
    OTHER = "other"


class AlertSource(StrEnum):
    GRAPH_ALERTS_V2 = "graph_alerts_v2"
    SENTINEL = "sentinel"
    GENERIC = "generic"
    RESPONDER = "responder"


class Entity(BaseModel):
    """One piece of evidence an alert names: a user, an address, a mailbox, or anything else.

    `roles` and `verdict` are kept lower-cased (`compromised`, `attacker`, `malicious`, ...);
    unknown values pass through untouched so that new vendor values never break ingestion.
    """

    model_config = ConfigDict(frozen=True)

    kind: EntityKind
    user_id: str | None = Field(None, max_length=MAX_ENTITY_ID)
    upn: str | None = Field(None, max_length=MAX_ENTITY_ID)
    address: str | None = Field(None, max_length=MAX_ENTITY_ID)
    mailbox: str | None = Field(None, max_length=MAX_ENTITY_ID)
    display_name: str | None = None
    roles: tuple[str, ...] = ()
    verdict: str | None = None
    raw_type: str | None = None

    _short_texts = field_validator("display_name", "verdict", "raw_type", mode="before")(
        lambda v: _capped(v)
    )
    _short_roles = field_validator("roles", mode="before")(
        lambda v: tuple(_capped(role) for role in v) if isinstance(v, list | tuple) else v
    )


class Alert(BaseModel):
    """A security alert from any source, normalized.

    `key` identifies the alert across versions (source + id); `version` changes when the
    source updates it (Graph `lastUpdateDateTime`), so the same version is never handled twice.
    """

    source: AlertSource
    alert_id: str = Field(min_length=1, max_length=MAX_ID)
    version: str = Field("", max_length=MAX_ID)
    title: str = ""
    severity: Severity = Severity.UNKNOWN
    category: str = ""
    status: str = ""
    classification: str = ""
    provider: str = ""
    incident_id: str | None = Field(None, max_length=MAX_ID)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    entities: list[Entity] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict, repr=False)

    _short_texts = field_validator(
        "title", "category", "status", "classification", "provider", mode="before"
    )(lambda v: _capped(v))

    @property
    def key(self) -> str:
        return f"{self.source}:{self.alert_id}"


class ActionKind(StrEnum):
    DISABLE_ACCOUNT = "disable_account"
    ENABLE_ACCOUNT = "enable_account"
    REVOKE_SESSIONS = "revoke_sessions"
    BLOCK_IP = "block_ip"
    UNBLOCK_IP = "unblock_ip"
    ACTIVATE_BREAKGLASS = "activate_breakglass"
    DEACTIVATE_BREAKGLASS = "deactivate_breakglass"

    @property
    def targets_ip(self) -> bool:
        return self in (ActionKind.BLOCK_IP, ActionKind.UNBLOCK_IP)

    @property
    def targets_breakglass(self) -> bool:
        return self in (ActionKind.ACTIVATE_BREAKGLASS, ActionKind.DEACTIVATE_BREAKGLASS)


class Decision(StrEnum):
    """What the policy and its guards decided for one action request."""

    EXECUTE = "execute"
    DRY_RUN = "dry_run"
    REFUSED = "refused"
    NEEDS_APPROVAL = "needs_approval"


class OutcomeStatus(StrEnum):
    EXECUTED = "executed"
    ALREADY_DONE = "already_done"
    DRY_RUN = "dry_run"
    REFUSED = "refused"
    FAILED = "failed"
    HELD = "held"
    REJECTED = "rejected"
    EXPIRED = "expired"


def _unknown(value: str | None) -> bool:
    return value is None


class Actor(BaseModel):
    """Who caused a record: the responder itself (`app`) or a named engineer.

    A caller signed in with Entra also carries its object id (`oid`) and tenant id (`tid`):
    names change and have aliases, these do not, so four eyes compares them. They are left out
    of the serialized form when unknown, so records written before they existed keep their
    canonical text, and with it their hashes (docs/audit.md)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["app", "engineer"] = "app"
    name: str = "m365-responder"
    object_id: str | None = Field(None, exclude_if=_unknown)
    tenant_id: str | None = Field(None, exclude_if=_unknown)

    def same_identity(self, other: Actor) -> bool:
        """Whether two actors are the same principal: the same object id in the same tenant
        when both carry one (a renamed account or an alias is still the same person), and the
        same name, case-insensitively, in any case."""
        if self.object_id and other.object_id:
            same_tenant = not (self.tenant_id and other.tenant_id) or (
                self.tenant_id.lower() == other.tenant_id.lower()
            )
            if same_tenant and self.object_id.lower() == other.object_id.lower():
                return True
        return self.name.lower() == other.name.lower()


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def validate_user_target(value: str) -> str:
    """A user target is an Entra object id (GUID) or a UPN; anything else is refused."""
    text = value.strip()
    if is_guid(text):
        return text.lower()
    if len(text) <= 113 and UPN_PATTERN.match(text):
        return text.lower()
    raise ValueError(f"user target must be an object id (GUID) or a UPN, got {value!r}")


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IP_CHARACTERS = frozenset("0123456789abcdefABCDEF:./")


# A storm names the same few hundred addresses thousands of times, and each is parsed several
# times on its way (the alert, the request, the guards): parsed once, remembered.
IP_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=IP_CACHE_SIZE)
def parse_ip_target(value: str) -> IpNetwork:
    """An IPv4/IPv6 address or CIDR network, and nothing else: no spaces, separators or ranges.

    Host bits must be clear (`1.2.3.4/24` is refused rather than silently widened);
    IPv4-mapped IPv6 addresses are read as the IPv4 address they carry. (Networks are
    immutable, so a remembered one can be handed out again; a refusal is not remembered.)"""
    text = value.strip()
    if not text or not set(text) <= _IP_CHARACTERS or len(text) > 49:
        raise ValueError(f"not an IP address or CIDR network: {value[:60]!r}")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"not an IP address or CIDR network: {value[:60]!r} ({exc})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{mapped}/{max(0, network.prefixlen - 96)}")
    return network


ALL_BREAKGLASS = "all"


def validate_breakglass_target(value: str) -> str:
    """A break-glass action acts on every configured emergency account (`all`) or on one of
    them, named by object id."""
    text = value.strip().lower()
    if text == ALL_BREAKGLASS or is_guid(text):
        return text
    raise ValueError(f"break-glass target must be 'all' or an account's object id, got {value!r}")


def validate_target(kind: ActionKind, value: str) -> str:
    """The canonical target of an action of `kind`; ValueError says why `value` is none."""
    if kind.targets_ip:
        return validate_ip_target(value)
    if kind.targets_breakglass:
        return validate_breakglass_target(value)
    return validate_user_target(value)


@functools.lru_cache(maxsize=IP_CACHE_SIZE)
def validate_ip_target(value: str) -> str:
    """The canonical text of an IP target: `185.220.101.47/32`, `2a0b:f4c2::/48`."""
    return str(parse_ip_target(value))


class ActionRequest(BaseModel):
    """One containment action, as queued. Its `id` is deterministic, so the same request from
    a redelivered message or a repeated alert maps to the same id and executes at most once."""

    id: str
    kind: ActionKind
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    decision: Decision = Decision.EXECUTE
    reason: str = ""
    rule: str | None = None
    alert_id: str | None = None
    incident_id: str | None = None
    requested_by: Actor = Field(default_factory=Actor)
    dry_run: bool = False
    requested_at: datetime = Field(default_factory=utcnow)
    # Set when an infrastructure error put the action back on the queue: the how-many-th
    # retry this message is, and since when it has been retried (give-up is by elapsed time).
    retry: int = Field(0, ge=0)
    retrying_since: datetime | None = None

    _short_reason = field_validator("reason", mode="before")(lambda v: _capped(v))

    @field_validator("target")
    @classmethod
    def _valid_target(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if isinstance(kind, ActionKind):
            return validate_target(kind, value)
        return validate_user_target(value)

    @property
    def message_id(self) -> str:
        """The queue message id. The action id, except for the approved run of a held action:
        a guard may hold an action its first delivery carried, and the queue's duplicate
        detection would drop a second message under the same id. A retry after an
        infrastructure error gets an id per retry: the same retry scheduled twice (a crash
        between scheduling it and completing the message) is dropped as a duplicate."""
        base = f"{self.id}-approved" if "approved_by" in self.params else self.id
        return f"{base}-retry-{self.retry}" if self.retry else base

    def retried(self, since: datetime) -> ActionRequest:
        """This request as its next retry, retried since `since` unless it was already
        retried since earlier."""
        return self.model_copy(
            update={"retry": self.retry + 1, "retrying_since": self.retrying_since or since}
        )

    def for_generation(self, generation: int) -> ActionRequest:
        """This request as the `generation`-th block of its target: one id per generation, so
        every alert naming an already blocked address maps to the same action."""
        origin = f"generation:{generation}"
        params = {**self.params, "generation": generation}
        return self.model_copy(
            update={"id": self.derive_id(self.kind, self.target, origin), "params": params}
        )

    @staticmethod
    def derive_id(kind: ActionKind, target: str, origin: str) -> str:
        """Same kind + target + origin (alert key or engineer request id) -> same action id."""
        digest = hashlib.sha256(f"{kind}|{target.lower()}|{origin}".encode()).hexdigest()
        return f"act-{digest[:32]}"


class GuardCheck(BaseModel):
    """One guard's verdict on one action: passed, or why it stopped or held it."""

    guard: str
    passed: bool
    detail: str = ""


class ActionOutcome(BaseModel):
    """What an executor did: the state it read before, the state after, and Graph request ids."""

    status: OutcomeStatus
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    calls: list[str] = Field(default_factory=list)
    request_ids: list[str] = Field(default_factory=list)
    guards: list[GuardCheck] = Field(default_factory=list)
    error: str | None = None


class AuditEvent(StrEnum):
    ACTION_PLANNED = "action.planned"
    ACTION_REFUSED = "action.refused"
    ACTION_EXECUTED = "action.executed"
    ACTION_ALREADY_DONE = "action.already_done"
    ACTION_DRY_RUN = "action.dry_run"
    ACTION_FAILED = "action.failed"
    ACTION_HELD = "action.held"
    ACTION_APPROVED = "action.approved"
    ACTION_REJECTED = "action.rejected"
    ACTION_EXPIRED = "action.expired"
    ALERT_RAISED = "alert.raised"
    NOTIFICATION_REJECTED = "notification.rejected"
    NOTIFICATION_DROPPED = "notification.dropped"
    SUBSCRIPTION_RECREATED = "subscription.recreated"
    NOTIFY_FAILED = "notify.failed"

    @classmethod
    def for_outcome(cls, status: OutcomeStatus) -> AuditEvent:
        return cls(f"action.{status}")


class AuditEntry(BaseModel):
    """The content of one audit record, before it is chained: who, why, what, result, when."""

    event: AuditEvent
    actor: Actor
    action_id: str | None = None
    kind: str | None = None
    target: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    alert_id: str | None = None
    incident_id: str | None = None
    rule: str | None = None
    reason: str = ""
    result: dict[str, Any] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)


def action_entry(
    action: ActionRequest, event: AuditEvent, result: dict[str, Any], reason: str | None = None
) -> AuditEntry:
    """The audit entry for something that happened to `action`."""
    return AuditEntry(
        event=event,
        actor=action.requested_by,
        action_id=action.id,
        kind=str(action.kind),
        target=action.target,
        params=action.params,
        alert_id=action.alert_id,
        incident_id=action.incident_id,
        rule=action.rule,
        reason=action.reason if reason is None else reason,
        result=result,
    )


LEGACY_CHAIN = "chain"


class AuditRecord(BaseModel):
    """A chained audit record. `seq` is the record's number in the whole trail (its position:
    what the ledger, the index and the pages refer to); `chain` and `chain_seq` place it in
    one hash chain, where `prev_hash` links it to record `chain_seq - 1`. In the single-chain
    layout of earlier versions (chain `chain`) the two numbers are the same."""

    seq: int = Field(ge=1)
    prev_hash: str
    hash: str
    entry: AuditEntry
    body: str = Field(repr=False, description="The canonical text the hash covers, as stored.")
    chain: str = LEGACY_CHAIN
    chain_seq: int = Field(0, ge=0, description="0 on construction means: the same as seq")
    defect: str | None = Field(
        None, repr=False, description="What the store found wrong beside the hashed text."
    )

    def model_post_init(self, context: Any, /) -> None:
        if self.chain_seq == 0:
            self.chain_seq = self.seq
