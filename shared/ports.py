"""The small interfaces the services depend on; adapters in shared/adapters implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from shared.models import ActionRequest, AuditRecord, OutcomeStatus


@dataclass(frozen=True)
class UserState:
    """What the directory says about a user right now."""

    id: str
    upn: str
    account_enabled: bool
    sessions_valid_from: datetime | None = None
    display_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "userPrincipalName": self.upn,
            "displayName": self.display_name,
            "accountEnabled": self.account_enabled,
            "signInSessionsValidFromDateTime": (
                self.sessions_valid_from.isoformat() if self.sessions_valid_from else None
            ),
        }


class Directory(Protocol):
    """User operations in Entra ID."""

    async def get_user(self, user: str) -> UserState: ...

    async def set_account_enabled(self, user_id: str, enabled: bool) -> str | None: ...

    async def revoke_sign_in_sessions(self, user_id: str) -> str | None: ...


class AlertFeed(Protocol):
    """Security alerts updated after a point in time, page by page, oldest first."""

    def alerts_updated_since(self, since: datetime) -> AsyncIterator[list[dict[str, Any]]]: ...


@dataclass(frozen=True)
class ChainHead:
    """The newest record of one hash chain: its number in the chain, its hash, and its
    position in the whole trail."""

    chain: str
    seq: int
    hash: str
    position: int


class AuditStore(Protocol):
    """Insert-only storage of chained audit records, in one or more hash chains.

    `chains` names the chains appends go to; reads cover those and any older chain the store
    holds (the single chain of earlier versions)."""

    chains: tuple[str, ...]

    async def head(self) -> AuditRecord | None:
        """The record with the highest position, whichever chain holds it."""
        ...

    async def chain_head(self, chain: str) -> ChainHead | None:
        """The newest record of one chain (one small read)."""
        ...

    async def heads(self) -> dict[str, ChainHead]:
        """The newest record of every chain that holds records."""
        ...

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        """Insert consecutive records of one chain, with their index entries, atomically (one
        round trip); raise `AppendConflict` if any of their chain numbers exists already."""
        ...

    async def get(self, seq: int) -> AuditRecord | None:
        """The record at position `seq`, or None when there is none (one read)."""
        ...

    def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        """Every record, highest position first; with `before_seq`, only those below it."""
        ...

    def chain_newest_first(self, chain: str, whole: bool = False) -> AsyncIterator[AuditRecord]:
        """Every record of one chain, newest first, with `defect` set where a stored copy
        beside the hashed text differs from it. `whole`: the caller reads the chain to its
        end (a store may then fetch ahead)."""
        ...


class AuditCheckpoints(Protocol):
    """Checkpoints of the audit trail kept outside it: each a JSON object holding at least the
    sequence number (`seq`) and hash (`hash`) of the head it saw, and when (`at`)."""

    def checkpoints(self) -> AsyncIterator[dict[str, Any]]:
        """Every checkpoint, oldest first."""
        ...


class NoCheckpoints:
    """`AuditCheckpoints` for a trail without any."""

    async def checkpoints(self) -> AsyncIterator[dict[str, Any]]:
        none: tuple[dict[str, Any], ...] = ()
        for checkpoint in none:
            yield checkpoint


class AppendConflict(Exception):
    """Another writer took the sequence number first."""


class IndexDimension(StrEnum):
    """What the audit index looks records up by."""

    ACTOR = "actor"
    KIND = "kind"
    TARGET = "target"
    INCIDENT = "incident"
    ALERT = "alert"
    OUTCOME = "outcome"


@dataclass(frozen=True)
class IndexEntry:
    """One audit record filed under one (dimension, normalized value)."""

    dimension: IndexDimension
    value: str
    seq: int
    at: datetime


class AuditIndex(Protocol):
    """Audit sequence numbers by (dimension, value), newest first. Derived from the chain and
    never part of it: it may be rebuilt at any time, and readers re-check what it points to."""

    async def add(self, entries: list[IndexEntry]) -> None:
        """File the entries; adding an entry that exists already changes nothing."""
        ...

    def seqs(
        self,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> AsyncIterator[int]:
        """Sequence numbers filed under (dimension, value), newest first; with `before_seq`,
        only those below it; with `after_seq`, only those above it."""
        ...


@dataclass(frozen=True)
class Checkpoint:
    """The trail's state at one moment, written outside the table: every chain's head and
    the number of records (the sum of the heads' chain numbers)."""

    at: datetime
    heads: dict[str, ChainHead]
    count: int


class AuditAnchor(Protocol):
    """Append-only storage of checkpoints outside the audit table (a write-once container)."""

    async def append(self, checkpoint: Checkpoint) -> None: ...

    async def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint written, oldest first."""
        ...


LEDGER_QUEUED = "queued"


@dataclass(frozen=True)
class Intent:
    """A tenant write the executor was about to make, recorded before it made it: a later
    delivery that finds the tenant already in the wanted state knows the write was its own
    (the response was lost), not someone else's."""

    call: str
    before: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class LedgerEntry:
    """One action's row: its state (`queued` while open, then how it ended), the request as
    claimed, whether it reached the queue, and the marks that make a redelivery after a crash
    finish the action instead of repeating it."""

    action_id: str
    state: str
    kind: str
    target: str
    audit_seq: int | None = None
    request: ActionRequest | None = None
    claimed_at: datetime | None = None
    sent: bool = True
    # The audit head when intake claimed the row: its decision record comes after it.
    claim_seq: int = 0
    # The audit head before the executor first tried to append the outcome, or before it
    # recorded its intent (written with it): an outcome record comes after it (0: not yet).
    record_from: int = 0
    intent: Intent | None = None
    alerted: bool = False
    # Until when the claimer alone may commit the claim (written with it; None: no lease).
    lease_until: datetime | None = None
    # The row's ETag as read or as claimed (None: not known).
    etag: str | None = None

    @property
    def open(self) -> bool:
        return self.state == LEDGER_QUEUED

    def leased(self, now: datetime) -> bool:
        """Whether the claimer's own lease on the claim is still live at `now`."""
        return self.lease_until is not None and self.lease_until > now

    def ended(self, action: ActionRequest) -> bool:
        """Whether `action` has ended: the approved run of a held action has not."""
        if self.open:
            return False
        return not (self.state == OutcomeStatus.HELD and "approved_by" in action.params)


class ClaimChanged(Exception):
    """A conditional ledger write found the claim changed since the ETag it was given: another
    delivery of the action wrote to it first. Nothing was written; the row is read again."""


class ActionLedger(Protocol):
    """One row per action id: claims a request once (the intake's outbox), remembers whether
    it was sent, what the executor was about to write, and how it ended."""

    async def claim(
        self, action: ActionRequest, at: datetime, claim_seq: int, lease_until: datetime
    ) -> str | None:
        """Record the action as claimed but not yet sent, leased to the claimer until
        `lease_until` (in the same write): the claim's ETag ("" when the service gave none);
        None when the id was claimed before."""
        ...

    async def claim_all(
        self, actions: list[ActionRequest], at: datetime, claim_seq: int, lease_until: datetime
    ) -> dict[str, str]:
        """`claim` for several actions at once: the ids claimed now, with their ETags."""
        ...

    async def mark_sent(self, *action_ids: str, handled: Sequence[tuple[str, str]] = ()) -> None:
        """Note that the claims of `action_ids` reached the queue, without touching the claims
        themselves (their ETags stay what the executor was sent); with the alert versions
        `handled` (alert key, version) marked handled in the same write."""
        ...

    async def get(self, action_id: str, sent_mark: bool = True) -> LedgerEntry | None:
        """The row of `action_id`; with `sent_mark` False its sent mark is not looked up, and
        `sent` says only what the claim itself says (for readers that do not need it)."""
        ...

    async def intend(
        self,
        action: ActionRequest,
        call: str,
        before: dict[str, Any],
        at: datetime,
        record_from: int | None = None,
        claim_etag: str | None = None,
    ) -> None:
        """Record the write about to be made (before it is made), at `at`; with
        `record_from`, in the same write, the recording mark of `recording` as well. With
        `claim_etag`, only into the claim as it was then (else `ClaimChanged`)."""
        ...

    async def recording(
        self, action: ActionRequest, from_seq: int, claim_etag: str | None = None
    ) -> None:
        """Note that the outcome is about to be appended after audit record `from_seq`; with
        `claim_etag`, only into the claim as it was then (else `ClaimChanged`)."""
        ...

    async def recording_all(self, actions: Sequence[ActionRequest], from_seq: int) -> None:
        """`recording` without a claim's ETag, for each of `actions`."""
        ...

    async def finish(
        self, action: ActionRequest, status: OutcomeStatus, audit_seq: int
    ) -> None: ...

    async def finish_all(
        self, finished: Sequence[tuple[ActionRequest, OutcomeStatus, int]]
    ) -> None:
        """`finish` for each (action, status, audit seq) of `finished`."""
        ...

    async def unsent(self, claimed_before: datetime) -> list[LedgerEntry]:
        """Open rows claimed before `claimed_before` that never reached the queue."""
        ...

    async def stuck(self, claimed_before: datetime) -> list[LedgerEntry]:
        """Open rows claimed before `claimed_before` not yet alerted on."""
        ...

    async def mark_alerted(self, action_id: str) -> None: ...


class AlertCheckpoint(Protocol):
    """The poller's watermark and the alert versions already handled."""

    async def watermark(self, feed: str) -> datetime | None: ...

    async def advance_watermark(self, feed: str, value: datetime) -> None: ...

    async def is_handled(self, alert_key: str, version: str) -> bool:
        """Whether the alert version was handled: marked with its claims' sent marks
        (`ActionLedger.mark_sent`)."""
        ...

    async def handled_among(self, versions: Sequence[tuple[str, str]]) -> list[bool]:
        """`is_handled` for each of a batch's alert versions (key, version), in order; it may
        leave a pending mark for those not handled, which `is_handled` does not count."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """A message the queue gave up on after its max delivery count."""

    message_id: str
    body: bytes
    reason: str = ""
    enqueued_at: datetime | None = None


DeadLetterHandler = Callable[[DeadLetter], Awaitable[bool]]


# The application property of an action's message that carries its claim's ETag.
CLAIM_ETAG = "claim_etag"


def claim_etag(properties: Mapping[str, object] | None) -> str | None:
    """The claim ETag a received action message carries, if any."""
    value = (properties or {}).get(CLAIM_ETAG)
    if isinstance(value, bytes):
        value = value.decode()
    return value if isinstance(value, str) and value else None


class ActionQueue(Protocol):
    """Where planned actions wait for the executor."""

    async def send(
        self, actions: list[ActionRequest], claims: Mapping[str, str] | None = None
    ) -> None:
        """Queue `actions`; each message carries its action's claim ETag from `claims`, if
        known, so the executor's first ledger write can be conditional on it instead of
        reading the row first."""
        ...

    async def schedule(self, actions: list[ActionRequest], at: datetime) -> None:
        """Deliver `actions` not before `at` (temporary containment reverting itself, a retry
        after an infrastructure error)."""
        ...

    async def drain_dead_letters(self, handler: DeadLetterHandler, max_count: int) -> int:
        """Hand up to `max_count` dead-lettered messages to `handler`: each it returns True
        for leaves the dead-letter queue, the others stay there. How many were handed over."""
        ...


@dataclass(frozen=True)
class TransportRule:
    """An Exchange Online transport rule, as far as the IP blocklist cares."""

    name: str
    ranges: tuple[str, ...]
    comments: str = ""
    mode: str = "Enforce"
    when_changed: str = ""


class TransportRules(Protocol):
    """Exchange Online transport rules (Get/New/Set/Remove-TransportRule). `get_rule` answers
    None for a missing rule; `set_ranges` and `remove_rule` raise `NotFoundError` for one."""

    async def list_rules(self) -> list[TransportRule]: ...

    async def get_rule(self, name: str) -> TransportRule | None: ...

    async def create_rule(
        self, name: str, ranges: list[str], comments: str, mode: str, reject: bool
    ) -> None: ...

    async def set_ranges(self, name: str, ranges: list[str], mode: str, reject: bool) -> None: ...

    async def remove_rule(self, name: str) -> None: ...

    def take_warnings(self) -> list[str]:
        """Warnings Exchange attached to the cmdlets run since the last call."""
        ...


class BlockState(StrEnum):
    """States of a network in the block registry. A new block request coalesces into a
    pending or blocked one; one arriving while an unblock is under way starts the next
    generation, which the unblock then leaves alone."""

    PENDING = "pending"
    BLOCKED = "blocked"
    UNBLOCKING = "unblocking"
    UNBLOCKED = "unblocked"
    FAILED = "failed"


ACTIVE_BLOCK_STATES = frozenset({BlockState.PENDING, BlockState.BLOCKED})


@dataclass(frozen=True)
class BlockEntry:
    """One network in the block registry: the block request that put it there, its generation
    (one more with each block; a new row starts from the clock's Unix time, so a network
    blocked again after its finished row was cleaned up gets new action ids), and the unblock
    request once one came."""

    network: str
    generation: int
    state: str
    block: ActionRequest
    unblock: ActionRequest | None = None
    expires_at: datetime | None = None
    etag: str = ""
    changed_at: datetime | None = None  # when the entry was last written


class BlockRegistry(Protocol):
    """The desired state of the IP blocklist, and the in-flight view that coalesces requests."""

    async def reserve(self, action: ActionRequest) -> ActionRequest | None:
        """Register a block request as the network's next generation and return it with the
        generation's action id; None while the network is already pending or blocked (the
        request coalesces into that one)."""
        ...

    async def reserve_many(
        self, actions: Sequence[ActionRequest], current: Mapping[str, BlockEntry | None]
    ) -> dict[str, ActionRequest | None]:
        """`reserve` for each network of `actions` (the first action naming it), given its
        row as read (`current`, not pending or blocked); by network."""
        ...

    async def any_in(self, *states: str) -> bool:
        """Whether any network is in one of `states` (cheaper than listing `entries`)."""
        ...

    async def entries(self, *states: str) -> list[BlockEntry]: ...

    async def get(self, network: str) -> BlockEntry | None: ...

    async def get_many(self, networks: Collection[str]) -> dict[str, BlockEntry | None]:
        """`get` for each of `networks`, by network."""
        ...

    async def update(
        self,
        entry: BlockEntry,
        state: str,
        *,
        unblock: ActionRequest | None = None,
        expires_at: datetime | None = None,
    ) -> bool:
        """Move `entry` to `state` if nobody changed it since it was read (etag)."""
        ...

    async def update_all(
        self, moves: Sequence[tuple[BlockEntry, str, datetime | None]]
    ) -> list[bool]:
        """`update` for each (entry, state, expiry) of `moves`, of distinct networks; whether
        each was moved, in order."""
        ...

    async def note_unanswered_write(self, at: datetime) -> None:
        """Note that a transport rule write made at `at` got no answer (it may still land),
        for every worker to see."""
        ...

    async def unanswered_write(self) -> datetime | None:
        """When the latest rule write that got no answer was made, by any worker; None if
        none was noted."""
        ...


@dataclass(frozen=True)
class IpLocation:
    """A Conditional Access IP named location."""

    id: str
    name: str
    ranges: tuple[str, ...]


class NamedLocations(Protocol):
    """Conditional Access IP named locations (a CA policy with grant control `block` that
    includes them turns them into a sign-in block)."""

    async def list_ip_locations(self) -> list[IpLocation]: ...

    async def create_ip_location(self, name: str, ranges: list[str]) -> str: ...

    async def set_ip_location_ranges(self, location_id: str, ranges: list[str]) -> None: ...


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Approval:
    """An action held for an engineer's approval."""

    action: ActionRequest
    state: ApprovalState
    expires_at: datetime
    decided_by: str | None = None
    etag: str = ""


class ApprovalStore(Protocol):
    async def hold(self, action: ActionRequest, expires_at: datetime) -> None: ...

    async def get(self, action_id: str) -> Approval | None: ...

    async def pending(self) -> list[Approval]:
        """Every approval still pending, expired or not."""
        ...

    async def settle(self, approval: Approval, state: ApprovalState, decided_by: str) -> bool:
        """Move a pending approval to `state` unless someone settled it first (etag)."""
        ...


@dataclass(frozen=True)
class Activation:
    """The emergency access activation: when it ends, and what the responder changed to open
    it (accounts it enabled, exclusions it added per Conditional Access policy), so that
    deactivation undoes exactly that and nothing an administrator set up."""

    action_id: str
    active: bool
    expires_at: datetime | None
    enabled: tuple[str, ...] = ()
    exclusions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    etag: str = ""


class ActivationStore(Protocol):
    async def get(self) -> Activation | None: ...

    async def save(self, activation: Activation) -> str | None:
        """Store `activation` unless someone changed the stored one since it was read (its
        etag; an empty etag means none existed). The new etag; None on such a conflict."""
        ...


class DisableBudget(Protocol):
    """Accounts automatically disabled in a rolling window (the blast-radius budget); the same
    account counts once."""

    async def spent(self, since: datetime, up_to: int) -> set[str]:
        """The accounts spent on since `since`, read as far as `up_to` of them (a set that
        reached it may be missing some)."""
        ...

    async def spend(self, target: str, at: datetime) -> None: ...


GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"


@dataclass(frozen=True)
class RoleAssignment:
    """An active Entra directory role assignment. `role_id` is the role definition id, which
    for built-in roles is the role's template id (Global Administrator:
    62e90394-69f5-4237-9190-012177145e10)."""

    role_id: str
    principal_id: str
    scope: str = "/"


class DirectoryRoles(Protocol):
    """Who holds which directory role (unified RBAC role assignments)."""

    async def roles_of(self, principal_id: str) -> list[RoleAssignment]:
        """The active role assignments of one principal."""
        ...

    async def holders_of(self, role_id: str) -> list[RoleAssignment]:
        """The active assignments of one role, every principal."""
        ...


@dataclass(frozen=True)
class CaPolicy:
    """A Conditional Access policy, as far as emergency access cares: its state
    (`enabled`, `disabled`, `enabledForReportingButNotEnforced`) and its excluded users."""

    id: str
    name: str
    state: str
    excluded_users: tuple[str, ...] = ()
    modified_at: str = ""

    @property
    def enforced(self) -> bool:
        return self.state == "enabled"


class ConditionalAccess(Protocol):
    """Conditional Access policies."""

    async def list_policies(self) -> list[CaPolicy]: ...

    async def set_excluded_users(self, policy_id: str, excluded: list[str]) -> str | None:
        """Make `excluded` the policy's excluded users, leaving every other condition as it is.
        Returns the Graph request id; raises PermanentError(status=404) when the policy is
        gone."""
        ...


class Leases(Protocol):
    """Short exclusive leases, so that checks and the write they guard run one at a time
    across workers."""

    async def acquire(self, name: str, holder: str, ttl: timedelta) -> bool:
        """Take the lease `name` for `holder` unless someone else holds it unexpired."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease back if `holder` still holds it."""
        ...


class StateRetention(Protocol):
    """Deletes working-state rows past their time to live; never audit records."""

    async def purge(self, before: datetime, budget_before: datetime) -> dict[str, int]:
        """Delete the rows nothing depends on any more that were last written before
        `before`, and disable-budget entries older than `budget_before`; how many of each
        kind."""
        ...
