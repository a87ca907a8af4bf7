"""Keeps the configured change notification subscriptions alive: creates missing ones, renews
each well before it expires, recreates those deleted out of band, and answers lifecycle events.

Runs of the timer may overlap: a (re)creation first claims the stored record with a
conditional write, so only one run creates a subscription for a spec; renewals are idempotent.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.audit import AuditChain
from shared.errors import ActionError, PermanentError
from shared.models import Actor, AuditEntry, AuditEvent
from shared.watch.ports import (
    ChangeNotice,
    GraphSubscriptions,
    LifecycleEvent,
    SubscriptionRecord,
    SubscriptionSpec,
    SubscriptionStore,
    WatchPurpose,
)

logger = logging.getLogger(__name__)

# Ask for a little less than the maximum, so clock skew never makes Graph refuse the expiry.
LIFETIME_MARGIN = timedelta(minutes=30)
# Renew once less than this share of the lifetime is left: days before expiry, so a few failed
# timer runs in a row cannot let a subscription lapse.
RENEW_SHARE = 0.25
# A claim younger than this belongs to a run that is still creating the subscription.
CLAIM_TIMEOUT = timedelta(minutes=5)


class SubscriptionOutcome(StrEnum):
    CREATED = "created"
    RECREATED = "recreated"
    RENEWED = "renewed"
    CURRENT = "current"
    BUSY = "busy"
    FAILED = "failed"


def desired_subscriptions(
    users: tuple[str, ...], groups: tuple[str, ...], all_users: bool
) -> list[SubscriptionSpec]:
    specs = [
        SubscriptionSpec(f"users/{u}", "updated,deleted", WatchPurpose.PROTECTED_USER)
        for u in users
    ]
    specs += [
        SubscriptionSpec(f"groups/{g}", "updated", WatchPurpose.PRIVILEGED_GROUP) for g in groups
    ]
    if all_users:
        # Graph refuses `created` for users and groups (400 InvalidRequest) and announces a new
        # user as `updated`; the processor tells a new account from its createdDateTime.
        specs.append(SubscriptionSpec("users", "updated", WatchPurpose.ALL_USERS))
    return specs


Baseline = Callable[[SubscriptionSpec], Awaitable[Any]]


class SubscriptionManager:
    def __init__(
        self,
        graph: GraphSubscriptions,
        store: SubscriptionStore,
        chain: AuditChain,
        specs: list[SubscriptionSpec],
        notification_url: str | None,
        lifecycle_url: str | None,
        baseline: Baseline,
        clock: Callable[[], datetime],
    ) -> None:
        self._graph = graph
        self._store = store
        self._chain = chain
        self._specs = specs
        self._notification_url = notification_url
        self._lifecycle_url = lifecycle_url
        self._baseline = baseline
        self._clock = clock

    async def ensure(self) -> Counter[SubscriptionOutcome]:
        """One pass over the desired subscriptions; a failing one does not stop the others."""
        report: Counter[SubscriptionOutcome] = Counter()
        if self._notification_url is None:
            if self._specs:
                logger.warning("NOTIFICATION_URL is not set: no subscriptions are kept")
            return report
        for spec in self._specs:
            try:
                report[await self._ensure(spec)] += 1
            except ActionError as exc:
                report[SubscriptionOutcome.FAILED] += 1
                logger.warning("subscription for %s: %s", spec.resource, exc)
        return report

    async def on_lifecycle(self, notice: ChangeNotice) -> SubscriptionOutcome:
        record = await self._store.get(notice.subscription_key)
        if record is None or record.subscription_id != notice.subscription_id:
            # Stale: the subscription was replaced since Graph sent this.
            return SubscriptionOutcome.CURRENT
        event = notice.lifecycle_event
        if event == LifecycleEvent.REAUTHORIZATION_REQUIRED:
            return await self._renew(record)
        if event == LifecycleEvent.SUBSCRIPTION_REMOVED:
            return await self._create(record.spec, record, recreated=True)
        await self._baseline(record.spec)
        return SubscriptionOutcome.CURRENT

    async def _ensure(self, spec: SubscriptionSpec) -> SubscriptionOutcome:
        record = await self._store.get(spec.key)
        if record is not None and record.subscription_id:
            live = await self._graph.get(record.subscription_id)
            if live is None:
                return await self._create(spec, record, recreated=True)
            if live.expires_at - self._clock() > spec.max_lifetime * RENEW_SHARE:
                return SubscriptionOutcome.CURRENT
            return await self._renew(record)
        if record is not None and record.claimed_at is not None:
            if self._clock() - record.claimed_at < CLAIM_TIMEOUT:
                return SubscriptionOutcome.BUSY
        return await self._create(spec, record, recreated=False)

    async def _renew(self, record: SubscriptionRecord) -> SubscriptionOutcome:
        expires_at = self._clock() + record.spec.max_lifetime - LIFETIME_MARGIN
        try:
            renewed = await self._graph.renew(record.subscription_id, expires_at)
        except PermanentError as exc:
            if exc.status != 404:
                raise
            return await self._create(record.spec, record, recreated=True)
        await self._store.save(record, renewed.id, renewed.expires_at)
        return SubscriptionOutcome.RENEWED

    async def _create(
        self, spec: SubscriptionSpec, record: SubscriptionRecord | None, recreated: bool
    ) -> SubscriptionOutcome:
        assert self._notification_url is not None
        now = self._clock()
        claimed = await self._store.claim(spec, secrets.token_urlsafe(48), now, record)
        if claimed is None:
            return SubscriptionOutcome.BUSY
        created = await self._graph.create(
            spec,
            claimed.client_state,
            self._notification_url,
            self._lifecycle_url,
            now + spec.max_lifetime - LIFETIME_MARGIN,
        )
        if not await self._store.save(claimed, created.id, created.expires_at):
            await self._graph.delete(created.id)
            return SubscriptionOutcome.BUSY
        if recreated:
            await self._chain.append(
                AuditEntry(
                    event=AuditEvent.SUBSCRIPTION_RECREATED,
                    actor=Actor(),
                    target=spec.resource,
                    reason="the subscription was gone (deleted out of band or removed by Graph)",
                    result={
                        "previous": record.subscription_id if record else None,
                        "subscription": created.id,
                        "expires": created.expires_at.isoformat(),
                    },
                )
            )
        await self._baseline(spec)
        return SubscriptionOutcome.RECREATED if recreated else SubscriptionOutcome.CREATED
