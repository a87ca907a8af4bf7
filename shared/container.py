"""Composition root: builds the clients, adapters and services once per worker, lazily.

Nothing here runs at import time. The Graph client (msgraph-sdk imports about a thousand
modules) is only built when an executor or the poller first needs it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.actions.accounts import AccountActions, LockoutLimits
from shared.actions.breakglass import EmergencyAccess, EmergencyAccounts
from shared.actions.ip_blocks import IpBlocklist, IpBlockSweeper
from shared.actions.runner import ActionRunner, Holds, RetryPolicy
from shared.adapters.audit_index_table import AuditIndexTable
from shared.adapters.audit_table import AuditTable
from shared.adapters.credentials import build_credential
from shared.adapters.queue import InMemoryActionQueue, ServiceBusActionQueue
from shared.adapters.state_table import (
    StateTable,
    TableActivations,
    TableApprovals,
    TableBlockRegistry,
    TableLeases,
)
from shared.adapters.table_service import ensure_tables, table_service
from shared.adapters.token_grants import TokenGrants, explain_refusals
from shared.audit import AuditChain
from shared.audit_query import AuditQuery, index_entries
from shared.config import QueueKind, Settings
from shared.intake import AlertIntake, BlastRadius
from shared.models import utcnow
from shared.outbox import Outbox
from shared.permissions import EXCHANGE_AUDIENCE, GRAPH_AUDIENCE
from shared.policy import Guards, Playbook, Policy
from shared.ports import ActionQueue

if TYPE_CHECKING:
    import httpx
    from msgraph import GraphServiceClient

    from shared.actions.reconciler import ActionReconciler
    from shared.adapters.audit_anchor_blob import BlobAnchor
    from shared.adapters.exchange import ExchangeAdmin
    from shared.adapters.graph import GraphDirectory
    from shared.adapters.graph_subscriptions import GraphWatch
    from shared.adapters.http_transport import AiohttpTransport
    from shared.adapters.jwks import JwksKeys
    from shared.adapters.notice_table import TableNoticeRows
    from shared.adapters.state_retention import TableStateRetention
    from shared.adapters.watch_table import (
        TableNotificationClaims,
        TableSnapshots,
        TableStreamRows,
        TableSubscriptions,
    )
    from shared.approvals import Approvals
    from shared.audit_export import AuditExport
    from shared.cleanup import StateCleanup
    from shared.defender_stream import DefenderStream
    from shared.emergency import EmergencyMonitor
    from shared.identity import TokenValidator
    from shared.manual import ManualActions
    from shared.notices.ports import NoticeQueue
    from shared.notices.service import Channels, NoticeConfig, NoticeDispatcher, NoticeSender
    from shared.poller import AlertPoller
    from shared.readiness import Readiness
    from shared.waiting import WaitingApprovals
    from shared.watch.changes import ChangeProcessor
    from shared.watch.dead_letters import NotificationDeadLetters
    from shared.watch.gate import NotificationGate
    from shared.watch.ports import NotificationQueue
    from shared.watch.subscriptions import SubscriptionManager


class Container:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        storage_hook: Callable[[Any], None] | None = None,
    ) -> None:
        """`storage_hook` sees every Table Storage response (round trips are counted with it:
        docs/performance.md)."""
        self.settings = settings
        self.clock = clock
        self.credential = build_credential(settings)
        self.tables = table_service(
            settings, None if settings.tables_connection else self.credential, storage_hook
        )
        audit_table = self.tables.get_table_client(settings.audit_table)
        self.audit_store = AuditTable(audit_table)
        state_table = self.tables.get_table_client(settings.state_table)
        self.state = StateTable(state_table)
        self.blocks = TableBlockRegistry(state_table, clock)
        self.approval_store = TableApprovals(state_table)
        self.activations = TableActivations(state_table)
        self.leases = TableLeases(state_table)
        self.audit_index = AuditIndexTable(
            self.tables.get_table_client(settings.audit_index_table), audit_table
        )
        self.audit_query = AuditQuery(self.audit_store, self.audit_index, self._cursor_key())
        self.anchor = self._build_anchor()
        self.chain = AuditChain(
            self.audit_store, indexer=index_entries, anchor=self.anchor, index=self.audit_index
        )
        self.queue: ActionQueue = self._build_queue()
        self._state_client = state_table
        self.guards = Guards.from_settings(settings)
        self.playbook = Playbook.load(settings.playbook_path)
        self.policy = Policy(self.playbook, self.guards)
        self._prepared = False

    def _cursor_key(self) -> bytes:
        """The key that signs audit continuation tokens, derived from the webhook secret.
        Without a secret it is a constant per audit table: tokens then only detect accidental
        edits, not forged ones (they carry a sequence number and a filter digest, no data)."""
        table = self.settings.audit_table.encode()
        if self.settings.webhook_secret is None:
            return hashlib.sha256(b"m365-responder audit cursor\n" + table).digest()
        secret = self.settings.webhook_secret.get_secret_value().encode()
        return hmac.new(secret, b"audit cursor\n" + table, hashlib.sha256).digest()

    def _build_anchor(self) -> BlobAnchor | None:
        """The write-once container the audit checkpoints go to; None when no blob service is
        configured (the trail then verifies against its own links only)."""
        from shared.adapters.audit_anchor_blob import blob_anchor

        local = self.settings.tables_connection is not None
        return blob_anchor(self.settings, None if local else self.credential)

    def _build_queue(self) -> ActionQueue:
        if self.settings.queue is QueueKind.MEMORY:
            return InMemoryActionQueue(self.settings.max_deliveries, self.clock)
        assert self.settings.service_bus_namespace is not None  # checked by Settings
        return ServiceBusActionQueue(
            self.settings.service_bus_namespace, self.settings.actions_queue, self.credential
        )

    # Built on first use, with the modules of their features: an alert's way from the webhook
    # to its executed actions loads none of them (docs/performance.md, "First containment").

    @cached_property
    def retention(self) -> TableStateRetention:
        from shared.adapters.state_retention import TableStateRetention

        return TableStateRetention(self._state_client)

    @cached_property
    def audit_export(self) -> AuditExport:
        from shared.audit_export import AuditExport, ChainCheckpoints

        return AuditExport(
            self.audit_query, ChainCheckpoints(self.chain), self._cursor_key(), self.clock
        )

    @cached_property
    def notice_rows(self) -> TableNoticeRows:
        from shared.adapters.notice_table import TableNoticeRows

        return TableNoticeRows(self._state_client)

    @cached_property
    def subscription_store(self) -> TableSubscriptions:
        from shared.adapters.watch_table import TableSubscriptions

        return TableSubscriptions(self._state_client)

    @cached_property
    def snapshots(self) -> TableSnapshots:
        from shared.adapters.watch_table import TableSnapshots

        return TableSnapshots(self._state_client)

    @cached_property
    def notification_claims(self) -> TableNotificationClaims:
        from shared.adapters.watch_table import TableNotificationClaims

        return TableNotificationClaims(self._state_client)

    @cached_property
    def stream_rows(self) -> TableStreamRows:
        from shared.adapters.watch_table import TableStreamRows

        return TableStreamRows(self._state_client)

    @cached_property
    def notification_queue(self) -> NotificationQueue:
        from shared.adapters.notification_queue import (
            InMemoryNotificationQueue,
            ServiceBusNotificationQueue,
        )

        if self.settings.queue is QueueKind.MEMORY:
            return InMemoryNotificationQueue(self.settings.max_deliveries, self.clock)
        assert self.settings.service_bus_namespace is not None  # checked by Settings
        return ServiceBusNotificationQueue(
            self.settings.service_bus_namespace, self.settings.notifications_queue, self.credential
        )

    @cached_property
    def notice_queue(self) -> NoticeQueue:
        from shared.adapters.notice_queue import InMemoryNoticeQueue, ServiceBusNoticeQueue

        if self.settings.queue is QueueKind.MEMORY:
            return InMemoryNoticeQueue(self.settings.max_deliveries, self.clock)
        assert self.settings.service_bus_namespace is not None  # checked by Settings
        return ServiceBusNoticeQueue(
            self.settings.service_bus_namespace, self.settings.notices_queue, self.credential
        )

    async def prepare(self) -> Container:
        """Create the tables when running against a local connection string (Azurite)."""
        if not self._prepared and self.settings.tables_connection is not None:
            await ensure_tables(
                self.tables,
                self.settings.audit_table,
                self.settings.state_table,
                self.settings.audit_index_table,
            )
        self._prepared = True
        return self

    @cached_property
    def graph_transport(self) -> AiohttpTransport:
        """The Graph client's connections. Closed on their own: the Graph SDK wraps the
        client's transport in its middleware transport, whose close does not reach this one."""
        from shared.adapters.http_transport import AiohttpTransport

        return AiohttpTransport()

    @cached_property
    def graph_http(self) -> httpx.AsyncClient:
        from shared.adapters.http_transport import http_client

        return http_client(self.settings.graph_timeout_s, self.graph_transport)

    @cached_property
    def graph_client(self) -> GraphServiceClient:
        from shared.adapters.graph import build_graph_client

        return build_graph_client(self.settings, self.credential, self.graph_http)

    @cached_property
    def token_grants(self) -> TokenGrants:
        """What the app's own tokens say it holds."""
        return TokenGrants(self.credential)

    @cached_property
    def graph(self) -> GraphDirectory:
        from shared.adapters.graph import GraphDirectory

        return explain_refusals(
            GraphDirectory(self.graph_client), self.token_grants, GRAPH_AUDIENCE
        )

    @cached_property
    def graph_watch(self) -> GraphWatch:
        from shared.adapters.graph_subscriptions import GraphWatch

        return explain_refusals(GraphWatch(self.graph_client), self.token_grants, GRAPH_AUDIENCE)

    @cached_property
    def notification_gate(self) -> NotificationGate:
        from shared.watch.gate import NotificationGate

        return NotificationGate(
            self.subscription_store,
            self.notification_queue,
            self.chain,
            self.settings.notification_tenant_id,
        )

    @cached_property
    def changes(self) -> ChangeProcessor:
        from shared.watch.changes import ActiveIncident, ChangeProcessor

        return ChangeProcessor(
            self.graph_watch,
            self.snapshots,
            self.notification_claims,
            self.state,
            self.chain,
            self.audit_query,
            self.intake,
            self.settings.breakglass_accounts,
            ActiveIncident(
                self.approval_store,
                timedelta(minutes=self.settings.disable_window_minutes),
                self.clock,
            ),
            self.clock,
        )

    @cached_property
    def subscriptions(self) -> SubscriptionManager:
        from shared.watch.subscriptions import SubscriptionManager, desired_subscriptions

        settings = self.settings
        return SubscriptionManager(
            self.graph_watch,
            self.subscription_store,
            self.chain,
            desired_subscriptions(
                settings.watched_users, settings.watched_groups, settings.watch_all_users
            ),
            settings.notification_url.get_secret_value() if settings.notification_url else None,
            (
                settings.lifecycle_notification_url.get_secret_value()
                if settings.lifecycle_notification_url
                else None
            ),
            self.changes.resync,
            self.clock,
        )

    @cached_property
    def defender_stream(self) -> DefenderStream:
        from shared.defender_stream import DefenderStream

        tenant = self.settings.notification_tenant_id or self.settings.auth_tenant_id
        return DefenderStream(self.stream_rows, self.intake, tenant)

    @cached_property
    def exchange(self) -> ExchangeAdmin | None:
        """The Exchange admin client; None when EXCHANGE_TENANT is not set (no IP blocks)."""
        if self.settings.exchange_tenant is None:
            return None
        from shared.adapters.exchange import ExchangeAdmin

        admin = ExchangeAdmin(
            str(self.settings.exchange_base_url),
            self.settings.exchange_tenant,
            self.credential,
            self.settings.graph_timeout_s,
        )
        return explain_refusals(admin, self.token_grants, EXCHANGE_AUDIENCE)

    @cached_property
    def blocklist(self) -> IpBlocklist | None:
        if self.exchange is None:
            return None
        return IpBlocklist(
            self.exchange,
            self.blocks,
            str(self.settings.exchange_rule_mode),
            self.clock,
            self.settings.ip_block_batch_s,
            self.graph,
            settle=timedelta(seconds=self.settings.write_settle_s),
        )

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(
            self.chain,
            self.state,
            self.queue,
            self.approval_store,
            timedelta(minutes=self.settings.approval_ttl_minutes),
            self.clock,
            self.leases,
        )

    @cached_property
    def intake(self) -> AlertIntake:
        return AlertIntake(
            self.policy,
            self.outbox,
            self.state,
            self.state,
            self.blocks,
            BlastRadius(
                budget=self.approval_store,
                disables=self.settings.disable_budget,
                window=timedelta(minutes=self.settings.disable_window_minutes),
                clock=self.clock,
            ),
        )

    @cached_property
    def approvals(self) -> Approvals:
        from shared.approvals import Approvals

        return Approvals(self.approval_store, self.chain, self.state, self.queue, self.clock)

    @cached_property
    def waiting(self) -> WaitingApprovals:
        from shared.waiting import WaitingApprovals

        return WaitingApprovals(self.approvals, self.state, self.audit_store, self.clock)

    @cached_property
    def accounts(self) -> AccountActions:
        limits = LockoutLimits(
            privileged_roles=frozenset(self.settings.privileged_roles),
            min_global_admins=self.settings.min_global_admins,
        )
        return AccountActions(
            self.graph,
            self.graph,
            self.guards,
            limits,
            self.leases,
            self.state,
            settle=timedelta(seconds=self.settings.write_settle_s),
            clock=self.clock,
        )

    @cached_property
    def emergency(self) -> EmergencyAccess:
        config = EmergencyAccounts(
            accounts=self.settings.breakglass_accounts,
            resting=self.settings.breakglass_resting_state,
            ttl=timedelta(minutes=self.settings.breakglass_ttl_minutes),
        )
        return EmergencyAccess(self.graph, self.graph, self.activations, config, self.clock)

    @cached_property
    def monitor(self) -> EmergencyMonitor:
        from shared.emergency import EmergencyMonitor

        return EmergencyMonitor(self.emergency, self.chain)

    @cached_property
    def runner(self) -> ActionRunner:
        approval_ttl = timedelta(minutes=self.settings.approval_ttl_minutes)
        return ActionRunner(
            self.accounts,
            self.emergency,
            self.chain,
            self.state,
            self.queue,
            self.blocklist,
            Holds(self.approval_store, approval_ttl, self.clock),
            RetryPolicy(
                give_up_after=timedelta(minutes=self.settings.give_up_minutes),
                base_delay_s=self.settings.retry_base_s,
                max_delay_s=self.settings.retry_max_s,
            ),
            self.clock,
        )

    @cached_property
    def notice_config(self) -> NoticeConfig:
        from shared.notices.model import NoticeClass
        from shared.notices.service import NoticeConfig

        settings = self.settings
        teams = settings.notice_teams_webhook_url is not None
        return NoticeConfig(
            teams_events=frozenset(NoticeClass(c) for c in settings.notice_teams_events)
            if teams
            else frozenset(),
            mail_routes=settings.mail_routes,
            alert_comments=settings.notice_alert_comments,
            sentinel_workspace=settings.sentinel_workspace_id,
            page_url=str(settings.notice_page_url).rstrip("/")
            if settings.notice_page_url
            else None,
            max_per_minute=settings.notice_max_per_minute,
            give_up_after=timedelta(minutes=settings.give_up_minutes),
            retry_base_s=settings.retry_base_s,
            retry_max_s=settings.retry_max_s,
        )

    @cached_property
    def notice_dispatcher(self) -> NoticeDispatcher:
        from shared.notices.service import NoticeDispatcher

        return NoticeDispatcher(
            self.audit_store, self.notice_rows, self.notice_queue, self.notice_config
        )

    @cached_property
    def notice_channels(self) -> Channels:
        """The notice adapters the settings ask for, built on first use."""
        from shared.adapters.comments import GraphAlertComments, SentinelIncidentComments
        from shared.adapters.mail import GraphMail
        from shared.adapters.teams import TeamsWorkflow
        from shared.notices.service import Channels

        settings, timeout = self.settings, self.settings.graph_timeout_s
        graph = str(settings.graph_base_url)
        url = settings.notice_teams_webhook_url
        return Channels(
            teams=TeamsWorkflow(url.get_secret_value(), timeout) if url else None,
            mail=GraphMail(graph, settings.notice_mail_sender, self.credential, timeout)
            if settings.notice_mail_sender
            else None,
            alert_comments=explain_refusals(
                GraphAlertComments(graph, self.credential, timeout),
                self.token_grants,
                GRAPH_AUDIENCE,
            )
            if settings.notice_alert_comments
            else None,
            incident_comments=SentinelIncidentComments(
                str(settings.arm_base_url), self.credential, timeout
            )
            if settings.sentinel_workspace_id
            else None,
        )

    @cached_property
    def notice_sender(self) -> NoticeSender:
        from shared.notices.service import NoticeSender

        return NoticeSender(
            self.notice_channels,
            self.notice_rows,
            self.notice_queue,
            self.chain,
            self.notice_config,
            self.clock,
        )

    @cached_property
    def cleanup(self) -> StateCleanup:
        from shared.cleanup import StateCleanup

        return StateCleanup(
            self.retention,
            timedelta(days=self.settings.state_ttl_days),
            timedelta(minutes=self.settings.disable_window_minutes),
            self.clock,
        )

    @cached_property
    def reconciler(self) -> ActionReconciler:
        from shared.actions.reconciler import ActionReconciler, ReconcileLimits

        return ActionReconciler(
            self.outbox,
            self.state,
            self.blocks,
            self.queue,
            self.runner,
            self.blocklist,
            self.chain,
            ReconcileLimits(
                resend_after=timedelta(seconds=self.settings.resend_after_s),
                give_up_after=timedelta(minutes=self.settings.give_up_minutes),
                stuck_after=timedelta(minutes=self.settings.stuck_minutes),
            ),
            self.clock,
        )

    @cached_property
    def notification_dead_letters(self) -> NotificationDeadLetters:
        from shared.watch.dead_letters import NotificationDeadLetters

        return NotificationDeadLetters(
            self.notification_queue,
            self.changes,
            self.subscriptions,
            self.chain,
            timedelta(minutes=self.settings.give_up_minutes),
            self.clock,
        )

    @cached_property
    def jwks(self) -> JwksKeys | None:
        # PyJWT and cryptography load with the first bearer token, not on the alert path.
        from shared.adapters.jwks import JwksKeys

        jwks_url = self.settings.jwks_url
        return JwksKeys(jwks_url, self.settings.graph_timeout_s) if jwks_url else None

    @cached_property
    def validator(self) -> TokenValidator | None:
        """Checks the HTTP API's Entra tokens; None until the AUTH_* settings are given."""
        issuer, audience = self.settings.issuer, self.settings.auth_audience
        if self.jwks is None or not issuer or not audience:
            return None
        from shared.identity import TokenValidator

        return TokenValidator(self.jwks, issuer, audience)

    @cached_property
    def manual(self) -> ManualActions:
        from shared.manual import ManualActions

        return ManualActions(self.intake, self.guards, self.state)

    @cached_property
    def sweeper(self) -> IpBlockSweeper:
        return IpBlockSweeper(self.blocks, self.queue)

    @cached_property
    def readiness(self) -> Readiness:
        from shared.adapters.readiness_probes import AzureProbes, QueuePeek
        from shared.readiness import Readiness
        from shared.watch.subscriptions import desired_subscriptions

        settings = self.settings
        peek = None
        if settings.queue is not QueueKind.MEMORY:
            assert settings.service_bus_namespace is not None  # checked by Settings
            peek = QueuePeek(
                settings.service_bus_namespace,
                [settings.actions_queue, settings.notifications_queue],
                self.credential,
            )
        probes = AzureProbes(
            self.tables,
            [settings.audit_table, settings.state_table, settings.audit_index_table],
            settings.audit_table,
            peek,
        )
        return Readiness(
            settings=settings,
            playbook=self.playbook,
            claims=self.token_grants,
            azure=probes,
            emergency=self.emergency,
            subscriptions=self.subscription_store,
            graph_subscriptions=self.graph_watch,
            desired=desired_subscriptions(
                settings.watched_users, settings.watched_groups, settings.watch_all_users
            ),
            exchange=self.exchange,
            jwks_keys=self.jwks.published if self.jwks else None,
            clock=self.clock,
            audit=self.chain,
        )

    @cached_property
    def poller(self) -> AlertPoller:
        from shared.poller import AlertPoller

        lookback = timedelta(minutes=self.settings.poll_lookback_minutes)
        return AlertPoller(self.graph, self.state, self.intake, lookback)

    async def close(self) -> None:
        closers = [self.tables.close(), self.credential.close()]
        if self.anchor is not None:
            closers.append(self.anchor.close())
        if isinstance(self.queue, ServiceBusActionQueue):
            closers.append(self.queue.close())
        if "notification_queue" in self.__dict__:
            from shared.adapters.notification_queue import ServiceBusNotificationQueue

            if isinstance(self.notification_queue, ServiceBusNotificationQueue):
                closers.append(self.notification_queue.close())
        if "notice_queue" in self.__dict__:
            from shared.adapters.notice_queue import ServiceBusNoticeQueue

            if isinstance(self.notice_queue, ServiceBusNoticeQueue):
                closers.append(self.notice_queue.close())
        if "notice_channels" in self.__dict__:
            channels = self.notice_channels
            for adapter in (
                channels.teams,
                channels.mail,
                channels.alert_comments,
                channels.incident_comments,
            ):
                if adapter is not None:
                    closers.append(adapter.close())
        if "exchange" in self.__dict__ and self.exchange is not None:
            closers.append(self.exchange.close())
        if "jwks" in self.__dict__ and self.jwks is not None:
            closers.append(self.jwks.close())
        if "graph_http" in self.__dict__:
            closers.append(self.graph_http.aclose())
            closers.append(self.graph_transport.aclose())
        for closer in closers:
            await closer


_current: Container | None = None


async def current() -> Container:
    """The worker's container, built from the environment on first use."""
    global _current
    if _current is None:
        _current = Container(Settings.from_env())
    return await _current.prepare()


def install(container: Container | None) -> None:
    """Make `container` the worker's container (the drill and tests wire their own)."""
    global _current
    _current = container
