"""What a directory change means. A notification for a user or a group carries no resource
data, so the changed object is read from Graph and compared with the last state seen:

- an emergency (break-glass) account or another protected identity changed at all -> a
  high-severity alert (tampering with emergency access);
- a privileged group gained members -> one alert per new member, for the playbook to act on;
- with every user watched, during an active incident (the responder disabled an account within
  its budget window): a new user, or a disabled account enabled again -> an alert. Graph
  announces a new user as `updated` (users subscriptions support only `updated` and `deleted`),
  so a new account is one never seen before whose createdDateTime is recent.

Each alert is audited as `alert.raised` and handed to the intake, so the playbook decides.
A redelivery after a failure between the two finds the earlier `alert.raised` of the same
alert version in the trail and does not record it again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.audit import AuditChain, canonical_json
from shared.audit_query import AuditFilter, AuditQuery
from shared.intake import AlertIntake
from shared.models import (
    Actor,
    Alert,
    AlertSource,
    AuditEntry,
    AuditEvent,
    Entity,
    EntityKind,
    Severity,
    utcnow,
)
from shared.ports import AlertCheckpoint, DisableBudget
from shared.watch.ports import (
    CREATED,
    ChangeNotice,
    NotificationClaims,
    Snapshots,
    SubscriptionSpec,
    WatchedDirectory,
    WatchPurpose,
)

logger = logging.getLogger(__name__)

USER = "user"
GROUP = "group"
DELETED = {"deleted": True}
# An account created this recently, and never seen before, is a new account. Graph may send
# several `updated` notifications for one creation, and retries a delivery for up to 4 hours.
NEW_ACCOUNT_WINDOW = timedelta(hours=24)


class WatchCategory(StrEnum):
    """Categories of the responder's own alerts; the playbook matches on them."""

    EMERGENCY_ACCESS_TAMPERING = "EmergencyAccessTampering"
    PROTECTED_IDENTITY_CHANGED = "ProtectedIdentityChanged"
    PRIVILEGED_GROUP_MEMBER_ADDED = "PrivilegedGroupMemberAdded"
    NEW_USER_DURING_INCIDENT = "NewUserDuringIncident"
    ACCOUNT_REENABLED_DURING_INCIDENT = "AccountReenabledDuringIncident"


class ChangeOutcome(StrEnum):
    RAISED = "raised"
    NOTHING = "nothing"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class ActiveIncident:
    """An incident is active while automatic disables were spent within the window."""

    budget: DisableBudget
    window: timedelta
    clock: Callable[[], datetime]

    async def __call__(self) -> bool:
        return bool(await self.budget.spent(self.clock() - self.window, 1))


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:32]


def _changes(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    if before is None:
        return {}
    names = sorted(set(before) | set(after))
    return {
        name: {"before": before.get(name), "after": after.get(name)}
        for name in names
        if before.get(name) != after.get(name)
    }


# How many of an alert's newest `alert.raised` records are compared with a new version.
RAISED_LOOKBACK = 10


class ChangeProcessor:
    def __init__(
        self,
        directory: WatchedDirectory,
        snapshots: Snapshots,
        claims: NotificationClaims,
        checkpoint: AlertCheckpoint,
        chain: AuditChain,
        trail: AuditQuery,
        intake: AlertIntake,
        breakglass: tuple[str, ...],
        incident_active: Callable[[], Awaitable[bool]],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._directory = directory
        self._snapshots = snapshots
        self._claims = claims
        self._checkpoint = checkpoint
        self._chain = chain
        self._trail = trail
        self._intake = intake
        self._breakglass = frozenset(b.lower() for b in breakglass)
        self._incident_active = incident_active
        self._clock = clock

    async def process(self, notice: ChangeNotice) -> ChangeOutcome:
        """Handle one accepted notification once; an error releases it for redelivery."""
        if not await self._claims.claim(notice.id):
            return ChangeOutcome.DUPLICATE
        try:
            return await self._dispatch(notice.purpose, notice.object_id, notice.change_type)
        except BaseException:
            await self._claims.release(notice.id)
            raise

    async def resync(self, spec: SubscriptionSpec) -> ChangeOutcome:
        """Compare the watched object with its last seen state (after a `missed` lifecycle
        event, or to take the first snapshot of a new subscription)."""
        if spec.object_id is None:
            logger.info("%s: tenant-wide subscriptions cannot be resynchronized", spec.resource)
            return ChangeOutcome.NOTHING
        return await self._dispatch(spec.purpose, spec.object_id, "resync")

    async def _dispatch(self, purpose: WatchPurpose, object_id: str, change: str) -> ChangeOutcome:
        if not object_id:
            logger.warning("a %s notification named no object", purpose)
            return ChangeOutcome.NOTHING
        if purpose is WatchPurpose.PROTECTED_USER:
            return await self._protected_user(object_id)
        if purpose is WatchPurpose.PRIVILEGED_GROUP:
            return await self._group(object_id)
        return await self._any_user(object_id, change)

    async def _protected_user(self, user_id: str) -> ChangeOutcome:
        found = await self._directory.user_snapshot(user_id)
        # The creation time never changes, so it is no part of what is compared.
        current = {k: v for k, v in found.items() if k != CREATED} if found else DELETED
        before = await self._snapshots.get(USER, user_id)
        if before is None or before == current:
            await self._snapshots.put(USER, user_id, current)
            return ChangeOutcome.NOTHING
        changes = _changes(before, current)
        emergency = user_id in self._breakglass
        category = (
            WatchCategory.EMERGENCY_ACCESS_TAMPERING
            if emergency
            else WatchCategory.PROTECTED_IDENTITY_CHANGED
        )
        label = "Emergency access account" if emergency else "Protected identity"
        title = f"{label} changed: {', '.join(changes)}"
        alert = _user_alert(category, Severity.HIGH, title, user_id, current, "changed")
        outcome = await self._raise(alert, changes)
        # Only now: a failure above leaves the old snapshot, so the redelivery sees the change.
        await self._snapshots.put(USER, user_id, current)
        return outcome

    async def _group(self, group_id: str) -> ChangeOutcome:
        members = sorted(m.lower() for m in await self._directory.group_member_ids(group_id))
        before = await self._snapshots.get(GROUP, group_id)
        if before is None:
            await self._snapshots.put(GROUP, group_id, {"members": members})
            return ChangeOutcome.NOTHING
        added = sorted(set(members) - set(before.get("members", [])))
        outcome = ChangeOutcome.NOTHING
        for member in added:
            alert = Alert(
                source=AlertSource.RESPONDER,
                alert_id=f"{WatchCategory.PRIVILEGED_GROUP_MEMBER_ADDED}:{group_id}:{member}",
                version=_digest(members),
                title=f"Member added to privileged group {group_id}",
                severity=Severity.HIGH,
                category=str(WatchCategory.PRIVILEGED_GROUP_MEMBER_ADDED),
                entities=[Entity(kind=EntityKind.USER, user_id=member, roles=("added-member",))],
                extra={"group_id": group_id},
            )
            if (
                await self._raise(alert, {"group": group_id, "added": member})
                is ChangeOutcome.RAISED
            ):
                outcome = ChangeOutcome.RAISED
        await self._snapshots.put(GROUP, group_id, {"members": members})
        return outcome

    async def _any_user(self, user_id: str, change: str) -> ChangeOutcome:
        current = await self._directory.user_snapshot(user_id)
        if current is None:
            return ChangeOutcome.NOTHING
        state = {"accountEnabled": current.get("accountEnabled")}
        before = await self._snapshots.get(USER, user_id)
        new = before is None and self._recently_created(current.get(CREATED))
        outcome = await self._any_user_change(user_id, new, change, current, state, before)
        await self._snapshots.put(USER, user_id, state)
        return outcome

    def _recently_created(self, created: object) -> bool:
        if not isinstance(created, str):
            return False  # accounts from before 2018 have none
        try:
            stamp = datetime.fromisoformat(created)
        except ValueError:
            return False
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return timedelta(0) <= self._clock() - stamp <= NEW_ACCOUNT_WINDOW

    async def _any_user_change(
        self,
        user_id: str,
        new: bool,
        change: str,
        current: dict[str, Any],
        state: dict[str, Any],
        before: dict[str, Any] | None,
    ) -> ChangeOutcome:
        if new:
            category = WatchCategory.NEW_USER_DURING_INCIDENT
        elif (
            before is not None and before.get("accountEnabled") is False and state["accountEnabled"]
        ):
            category = WatchCategory.ACCOUNT_REENABLED_DURING_INCIDENT
        else:
            return ChangeOutcome.NOTHING
        if not await self._incident_active():
            return ChangeOutcome.NOTHING
        title = f"{category} during an active incident: {current.get('userPrincipalName')}"
        role = "created" if new else "enabled"
        snapshot = {k: v for k, v in current.items() if k != CREATED}
        alert = _user_alert(category, Severity.MEDIUM, title, user_id, snapshot, role)
        return await self._raise(alert, _changes(before, state) or {"changeType": change})

    async def _raise(self, alert: Alert, changes: dict[str, Any]) -> ChangeOutcome:
        if await self._checkpoint.is_handled(alert.key, alert.version):
            return ChangeOutcome.DUPLICATE
        if not await self._raised_before(alert):
            await self._chain.append(
                AuditEntry(
                    event=AuditEvent.ALERT_RAISED,
                    actor=Actor(),
                    alert_id=alert.key,
                    target=alert.entities[0].user_id if alert.entities else None,
                    reason=alert.title,
                    result={
                        "category": alert.category,
                        "severity": str(alert.severity),
                        "version": alert.version,
                        "changes": changes,
                    },
                )
            )
        await self._intake.handle(alert)
        return ChangeOutcome.RAISED

    async def _raised_before(self, alert: Alert) -> bool:
        """Whether an earlier attempt recorded this alert version already (its intake then
        failed, so it was not marked handled). The newest few of the alert's records suffice:
        a version is raised again only after a failure."""
        wanted = AuditFilter(alert=alert.key, outcome=str(AuditEvent.ALERT_RAISED))
        page = await self._trail.page(wanted, limit=RAISED_LOOKBACK)
        return any(r.entry.result.get("version") == alert.version for r in page.records)


def _user_alert(
    category: WatchCategory,
    severity: Severity,
    title: str,
    user_id: str,
    snapshot: dict[str, Any],
    role: str,
) -> Alert:
    """An alert about one user; its version is a digest of the user's state, so the same state
    is handled once."""
    upn, name = snapshot.get("userPrincipalName"), snapshot.get("displayName")
    user = Entity(
        kind=EntityKind.USER,
        user_id=user_id,
        upn=upn if isinstance(upn, str) else None,
        display_name=name if isinstance(name, str) else None,
        roles=(role,),
    )
    return Alert(
        source=AlertSource.RESPONDER,
        alert_id=f"{category}:{user_id}",
        version=_digest(snapshot),
        title=title,
        severity=severity,
        category=str(category),
        entities=[user],
    )
