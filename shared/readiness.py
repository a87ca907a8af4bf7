"""The readiness check behind `responder doctor`, `GET /api/readiness` and the daily timer:
reads the live tenant with the app's own identity, writes nothing to it, and answers with a
checklist, each line pass or fail with the exact fix.

Granted permissions are read from the app's own access tokens (`roles`, and `wids` for its
directory roles): that needs no permission, where listing the identity's app role assignments
would need Application.Read.All, and it is exactly what Graph and Exchange enforce. A grant made
in the last hours may not be in the cached token yet; the fix says so.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.actions.breakglass import EmergencyAccess
from shared.audit import AuditChain
from shared.config import Settings
from shared.models import ActionKind, Actor, AlertSource, AuditEntry, AuditEvent, Severity, is_guid
from shared.permissions import (
    EXCHANGE_AUDIENCE,
    GRAPH_AUDIENCE,
    Feature,
    features_of,
    grant_command,
    manifest,
)
from shared.policy import Playbook
from shared.ports import TransportRules
from shared.watch.ports import GraphSubscriptions, SubscriptionSpec, SubscriptionStore

logger = logging.getLogger(__name__)

READINESS_TITLE = "The responder is not ready"
# Three missed five-minute checkpoints.
CHECKPOINT_STALE = timedelta(minutes=15)
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
TOKEN_CACHE_NOTE = (
    " (a grant made in the last hours shows once the identity's cached token expires, up to "
    "24 hours; restart the Function App to fetch a new one)"
)


class TokenClaims(Protocol):
    async def roles(self, audience: str) -> frozenset[str] | None: ...

    async def directory_roles(self, audience: str) -> frozenset[str] | None: ...


class AzureSide(Protocol):
    async def tables_reachable(self) -> str: ...

    async def queue_reachable(self) -> str: ...

    async def audit_update_refused(self) -> tuple[bool, str]: ...


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""


@dataclass
class ReadinessReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def lines(self) -> list[str]:
        out: list[str] = []
        for check in self.checks:
            out.append(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
            if not check.passed and check.fix:
                out.append(f"      fix: {check.fix}")
        passed = sum(c.passed for c in self.checks)
        out.append(f"{passed}/{len(self.checks)} checks pass")
        return out


@dataclass
class Readiness:
    settings: Settings
    playbook: Playbook
    claims: TokenClaims
    azure: AzureSide
    emergency: EmergencyAccess
    subscriptions: SubscriptionStore
    graph_subscriptions: GraphSubscriptions
    desired: list[SubscriptionSpec]
    exchange: TransportRules | None
    jwks_keys: Callable[[], Awaitable[int]] | None
    clock: Callable[[], datetime]
    audit: AuditChain | None = None

    @property
    def features(self) -> tuple[Feature, ...]:
        return features_of(self.settings, self.playbook)

    async def run(self) -> ReadinessReport:
        report = ReadinessReport()
        steps: list[Callable[[], Awaitable[list[Check]]]] = [
            self._graph_permissions,
            self._exchange,
            self._directory_role,
            self._subscriptions,
            self._emergency,
            self._tables,
            self._queue,
            self._audit_insert_only,
            self._audit_checkpoints,
            self._api_registration,
            self._settings,
        ]
        for step in steps:
            try:
                report.checks += await step()
            except Exception as exc:  # noqa: BLE001 - one broken probe must not hide the rest
                name = _STEP_NAMES.get(step.__name__, step.__name__.strip("_").replace("_", " "))
                logger.warning("readiness: %s failed: %s", name, exc)
                report.checks.append(
                    Check(
                        name,
                        False,
                        f"could not be checked: {_short(exc)}",
                        "check the connection settings and the identity's Azure roles",
                    )
                )
        return report

    async def run_and_audit(self, chain: AuditChain) -> ReadinessReport:
        """The timer's run: a failure is audited as an internal alert (and logged)."""
        report = await self.run()
        if report.ok:
            logger.info("readiness: all %s checks pass", len(report.checks))
            return report
        for check in report.failures:
            logger.error("readiness: %s: %s (fix: %s)", check.name, check.detail, check.fix)
        await chain.append(
            AuditEntry(
                event=AuditEvent.ALERT_RAISED,
                actor=Actor(),
                alert_id=f"{AlertSource.RESPONDER}:readiness",
                reason=READINESS_TITLE,
                result={
                    "severity": str(Severity.HIGH),
                    "category": "ResponderReadiness",
                    "failures": [asdict(c) for c in report.failures],
                },
            )
        )
        return report

    # --- the checks ------------------------------------------------------------------------

    async def _graph_permissions(self) -> list[Check]:
        command = grant_command(self.features)
        held = await self.claims.roles(GRAPH_AUDIENCE)
        if held is None:
            return [
                Check(
                    "Graph permissions",
                    False,
                    "the identity's Graph token is not a JWT; its roles cannot be read",
                    "check RESPONDER_CREDENTIAL and AZURE_CLIENT_ID",
                )
            ]
        checks = [
            Check(
                f"Graph permission {p.name}",
                p.name in held,
                ("granted" if p.name in held else "not granted") + f" - {p.why}",
                "" if p.name in held else command + TOKEN_CACHE_NOTE,
            )
            for p in manifest().needed(self.features, GRAPH_AUDIENCE)
        ]
        wanted = manifest().grants(self.features, GRAPH_AUDIENCE)
        extra = sorted(held - wanted)
        checks.append(
            Check(
                "no Graph permissions beyond the manifest",
                not extra,
                f"also holds {', '.join(extra)}" if extra else "none",
                "Entra admin center > Enterprise applications > (the identity) > Permissions: "
                "revoke " + ", ".join(extra)
                if extra
                else "",
            )
        )
        return checks

    async def _exchange(self) -> list[Check]:
        blocks = any(
            spec.kind is ActionKind.BLOCK_IP
            for rule in self.playbook.rules
            for spec in rule.actions
        )
        if self.exchange is None:
            return [
                Check(
                    "Exchange admin endpoint",
                    not blocks,
                    "EXCHANGE_TENANT is not set"
                    + (
                        "; the playbook blocks addresses"
                        if blocks
                        else "; no rule blocks addresses"
                    ),
                    "set EXCHANGE_TENANT to the tenant id or initial domain" if blocks else "",
                )
            ]
        held = await self.claims.roles(EXCHANGE_AUDIENCE) or frozenset()
        permission = "Exchange.ManageAsApp"
        checks = [
            Check(
                f"Exchange permission {permission}",
                permission in held,
                "granted" if permission in held else "not granted",
                "" if permission in held else grant_command(self.features) + TOKEN_CACHE_NOTE,
            )
        ]
        role = manifest().exchange_role
        if permission not in held:
            checks.append(
                Check(
                    f"Exchange role {role.name}", False, "not checked: no Exchange access", role.fix
                )
            )
            return checks
        try:
            rules = await self.exchange.list_rules()
        except Exception as exc:  # noqa: BLE001 - reported as the failed check
            checks.append(
                Check(
                    f"Exchange role {role.name}",
                    False,
                    f"Get-TransportRule was refused: {_short(exc).split(' - ')[0]}",
                    role.fix,
                )
            )
            return checks
        checks.append(
            Check(
                f"Exchange role {role.name}",
                True,
                f"Get-TransportRule read {len(rules)} rules (a role covering transport rules is "
                "assigned; writes are not tried)",
            )
        )
        return checks

    async def _directory_role(self) -> list[Check]:
        checks = []
        wids = await self.claims.directory_roles(GRAPH_AUDIENCE) or frozenset()
        for role in manifest().directory_roles:
            held = role.id in wids or GLOBAL_ADMINISTRATOR in wids
            checks.append(
                Check(
                    f"directory role {role.name}",
                    held,
                    ("held" if held else "not held") + f" - {role.why}",
                    "" if held else role.fix,
                )
            )
        return checks

    async def _subscriptions(self) -> list[Check]:
        if not self.desired:
            return [Check("change notification subscriptions", True, "nothing is watched")]
        if self.settings.notification_url is None:
            return [
                Check(
                    "change notification subscriptions",
                    False,
                    f"{len(self.desired)} wanted but NOTIFICATION_URL is not set",
                    "azd env set NOTIFICATION_URL 'https://<app>.azurewebsites.net/api/"
                    "notifications?code=<function key>' and provision again",
                )
            ]
        now = self.clock()
        checks = []
        for spec in self.desired:
            record = await self.subscriptions.get(spec.key)
            name = f"subscription {spec.resource}"
            fix = "wait for renew_subscriptions (SUBSCRIPTION_RENEW_SCHEDULE) or run it now"
            if record is None or not record.subscription_id or record.expires_at is None:
                checks.append(Check(name, False, "not created yet", fix))
                continue
            live = await self.graph_subscriptions.get(record.subscription_id)
            if live is None:
                checks.append(Check(name, False, "gone at Graph (deleted or expired)", fix))
                continue
            left = live.expires_at - now
            checks.append(
                Check(
                    name,
                    left > timedelta(0),
                    f"expires {live.expires_at.isoformat()} ({_days(left)})",
                    "" if left > timedelta(0) else fix,
                )
            )
        return checks

    async def _emergency(self) -> list[Check]:
        if not self.settings.breakglass_accounts:
            return [
                Check(
                    "emergency access",
                    False,
                    "BREAKGLASS_ACCOUNTS is not set: a lockout cannot be answered",
                    "create two cloud-only emergency accounts and set BREAKGLASS_ACCOUNTS to "
                    "their object ids",
                )
            ]
        findings = await self.emergency.health()
        if not findings:
            count = len(self.settings.breakglass_accounts)
            return [Check("emergency access", True, f"{count} accounts ready")]
        return [
            Check(
                f"emergency access {f.account}",
                False,
                f.problem,
                "Entra admin center > Protection > Conditional Access: exclude the account "
                "from every enabled policy; check the account exists and is in its resting "
                "state (BREAKGLASS_RESTING_STATE)",
            )
            for f in findings
        ]

    async def _tables(self) -> list[Check]:
        return [Check("tables reachable", True, await self.azure.tables_reachable())]

    async def _queue(self) -> list[Check]:
        return [Check("queue reachable", True, await self.azure.queue_reachable())]

    async def _audit_insert_only(self) -> list[Check]:
        refused, detail = await self.azure.audit_update_refused()
        local = self.settings.tables_connection is not None
        if not refused and local:
            detail += (
                ": this is a connection string (Azurite or a storage key), where no role limits "
                "the app; in Azure the custom audit role refuses updates"
            )
        return [
            Check(
                "audit table insert-only",
                refused,
                detail,
                ""
                if refused
                else "assign the app only the custom audit role (tables/entities/read + "
                "add/action) on the audit table, as infra/app/rbac.bicep does, and use "
                "RESPONDER_TABLES_ENDPOINT with the managed identity",
            )
        ]

    async def _audit_checkpoints(self) -> list[Check]:
        """A checkpoint that cannot be written fails its timer run; this names it too."""
        if self.audit is None:
            return []
        name = "audit checkpoints current"
        if self.audit.anchor is None:
            return [
                Check(
                    name,
                    False,
                    "no checkpoint container is configured",
                    "set RESPONDER_BLOB_ENDPOINT and RESPONDER_AUDIT_ANCHOR_CONTAINER as "
                    "infra/app/api.bicep does",
                )
            ]
        newest = await self.audit.newest_checkpoint_or_record()
        fix = (
            "see the error `audit checkpoint could not be written` of the checkpoint_audit "
            "timer; the app's identity needs the audit anchor role on the container"
        )
        if newest is None:
            return [Check(name, True, "the trail is empty")]
        kind, at = newest
        age = self.clock() - at
        if age <= CHECKPOINT_STALE:
            detail = f"newest {kind} at {at.isoformat()}"
            return [Check(name, True, detail)]
        return [Check(name, False, f"no checkpoint since {at.isoformat()} ({kind})", fix)]

    async def _api_registration(self) -> list[Check]:
        audience, tenant = self.settings.auth_audience, self.settings.auth_tenant_id
        fix = (
            "az ad app update --id <API client id> --set api.requestedAccessTokenVersion=2; "
            "give it the app roles Responder.Act, Responder.Approve and Audit.Read; set "
            "AUTH_AUDIENCE to its client id and AUTH_TENANT_ID"
        )
        if not audience or (not tenant and not self.settings.auth_issuer):
            return [
                Check("API app registration", False, "AUTH_AUDIENCE/AUTH_TENANT_ID not set", fix)
            ]
        problems = []
        if not is_guid(audience):
            problems.append(
                f"AUTH_AUDIENCE {audience!r} is not a client id: v2.0 tokens carry the client id"
            )
        issuer = self.settings.issuer or ""
        if tenant and not self.settings.auth_issuer and not issuer.endswith("/v2.0"):
            problems.append(f"issuer {issuer} is not a v2.0 issuer")
        keys = await self.jwks_keys() if self.jwks_keys else 0
        if keys == 0:
            problems.append("the signing keys (JWKS) hold no RSA key")
        detail = (
            "; ".join(problems)
            if problems
            else f"v2.0 audience {audience}, {keys} signing keys; the app roles are checked "
            "on every request (the identity cannot read the registration itself without "
            "Application.Read.All)"
        )
        return [Check("API app registration", not problems, detail, fix if problems else "")]

    async def _settings(self) -> list[Check]:
        missing = []
        if self.settings.webhook_secret is None:
            missing.append("RESPONDER_WEBHOOK_SECRET (the alert webhook refuses every call)")
        if self.settings.dry_run:
            missing.append("RESPONDER_DRY_RUN is true (nothing is contained)")
        url = self.settings.notification_url
        if url is not None and urlsplit(url.get_secret_value()).scheme != "https":
            missing.append("NOTIFICATION_URL is not https (Graph delivers only to https)")
        return [
            Check(
                "settings",
                not missing,
                "; ".join(missing) if missing else "validated",
                "azd env set <SETTING> <value>; azd provision" if missing else "",
            )
        ]


# A step that raises is reported under the name its passing line has.
_STEP_NAMES = {
    "_tables": "tables reachable",
    "_queue": "queue reachable",
    "_audit_insert_only": "audit table insert-only",
    "_api_registration": "API app registration",
    "_emergency": "emergency access",
    "_subscriptions": "change notification subscriptions",
}


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _days(left: timedelta) -> str:
    hours = left.total_seconds() / 3600
    return f"{hours / 24:.1f} days left" if hours >= 0 else "expired"
