"""The responder's settings: read once from the Functions app settings (environment), validated.

Each field's alias is the app setting's name. A bad value fails with a message naming the
setting; secrets are `SecretStr` so they never show up in a repr or a log line.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import ConfigError
from shared.notices.model import ALL_CLASSES, NoticeClass

DEFAULT_PLAYBOOK = Path(__file__).parent / "playbooks" / "default.toml"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Hosts of Teams Workflows webhook URLs: Logic Apps-style flow triggers, and Power Platform
# environment endpoints (sources in docs/notices.md).
WORKFLOW_HOSTS = (".logic.azure.com", ".environment.api.powerplatform.com")
_MAIL_ADDRESS = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


class CredentialKind(StrEnum):
    """How the app authenticates to Graph: its managed identity in Azure, or the simulator."""

    MANAGED_IDENTITY = "managed_identity"
    # An engineer's own sign-in, for the command line on a laptop: `az login`, or whatever
    # DefaultAzureCredential finds (environment, workload identity, Azure CLI, azd, PowerShell).
    AZURE_CLI = "azure_cli"
    DEFAULT = "default"
    SIMULATOR = "simulator"


class ExchangeRuleMode(StrEnum):
    ENFORCE = "Enforce"
    AUDIT = "Audit"


class RestingState(StrEnum):
    """How emergency accounts wait between emergencies: enabled and watched (Microsoft's
    guidance), or disabled until activated."""

    ENABLED = "enabled"
    DISABLED = "disabled"


class BreakGlassApproval(StrEnum):
    """Which `activate_breakglass` requests wait for a second engineer: those made by a human
    (default), every one (automatic ones too), or none."""

    HUMAN = "human"
    ALWAYS = "always"
    NONE = "none"


# Built-in Entra roles Microsoft marks privileged, by template id: holders are never disabled
# automatically unless a rule allows it and an engineer approves.
PRIVILEGED_ROLES = {
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13": "Privileged Authentication Administrator",
    "194ae4cb-b126-40b2-bd5b-6091b380977d": "Security Administrator",
    "b1be1c3e-b65d-4f19-8427-f6fa0d97feb9": "Conditional Access Administrator",
    "29232cdf-9323-42fd-ade2-1d097af3e4de": "Exchange Administrator",
    "f28a1f50-f6e7-4571-818b-6a12f2af6b6c": "SharePoint Administrator",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f": "Authentication Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator",
    "966707d0-3269-4727-9be2-8c3a10f19b9d": "Password Administrator",
    "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2": "Hybrid Identity Administrator",
    "3a2c62db-5318-420d-8d74-23affee5d9d5": "Intune Administrator",
}


class QueueKind(StrEnum):
    SERVICE_BUS = "servicebus"
    MEMORY = "memory"


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[tuple[str, ...], BeforeValidator(_split_list)]


class AppSettings(BaseModel):
    """Base of the settings models: fields aliased by app setting name, read from the
    environment by `from_env`."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    @classmethod
    def setting_names(cls) -> set[str]:
        return {field.alias for field in cls.model_fields.values() if field.alias}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Validate the settings found in `environ` (default: the process environment).

        Empty values count as unset, as the Functions host passes unset app settings that way.
        """
        source = os.environ if environ is None else environ
        names = cls.setting_names()
        values = {key: value for key, value in source.items() if key in names and value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


class PolicySettings(AppSettings):
    """The settings the policy needs: enough for `responder plan`, which touches no service."""

    playbook_path: Path = Field(
        DEFAULT_PLAYBOOK,
        alias="RESPONDER_PLAYBOOK",
        description="Playbook (TOML) mapping alert conditions to actions.",
    )
    dry_run: bool = Field(
        False,
        alias="RESPONDER_DRY_RUN",
        description="When true every action is planned and audited, never executed.",
    )
    protected_identities: CommaList = Field(
        (),
        alias="RESPONDER_PROTECTED_IDENTITIES",
        description="Object ids or UPNs never disabled: break-glass accounts, VIPs.",
    )
    breakglass_accounts: CommaList = Field(
        (),
        alias="BREAKGLASS_ACCOUNTS",
        description="Object ids of the emergency access accounts (two or more); never disabled.",
    )
    breakglass_approval: BreakGlassApproval = Field(
        BreakGlassApproval.HUMAN,
        alias="BREAKGLASS_APPROVAL",
        description="Which activations wait for a second engineer: human, always or none.",
    )
    privileged_roles: CommaList = Field(
        tuple(PRIVILEGED_ROLES),
        alias="PRIVILEGED_ROLE_IDS",
        description="Role template ids whose holders are never disabled without an approval.",
    )
    min_global_admins: int = Field(
        2,
        alias="MIN_ENABLED_GLOBAL_ADMINS",
        ge=1,
        le=100,
        description="Never disable a Global Administrator when this many or fewer are enabled.",
    )
    ip_allowlist: CommaList = Field(
        (),
        alias="RESPONDER_IP_ALLOWLIST",
        description="Own and partner networks (CIDR) that are never blocked.",
    )
    ip_min_prefix_v4: int = Field(
        24,
        alias="IP_BLOCK_MIN_PREFIX_V4",
        ge=9,
        le=32,
        description="Broadest IPv4 network an automatic block may cover.",
    )
    ip_min_prefix_v6: int = Field(
        48,
        alias="IP_BLOCK_MIN_PREFIX_V6",
        ge=9,
        le=128,
        description="Broadest IPv6 network an automatic block may cover.",
    )

    @field_validator("breakglass_accounts", "privileged_roles")
    @classmethod
    def _object_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _GUID.match(item):
                raise ValueError(f"{item!r} is not an object id (GUID)")
        return tuple(dict.fromkeys(item.lower() for item in value))

    @field_validator("ip_allowlist")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_network(item, strict=False)) for item in value)


class Settings(PolicySettings):
    """All settings of the app. Names match the app settings in infra/ and
    local.settings.example.json; a test keeps the three in step."""

    tables_connection: SecretStr | None = Field(
        None,
        alias="RESPONDER_TABLES_CONNECTION",
        description="Table Storage connection string (local development and Azurite only).",
    )
    tables_endpoint: AnyHttpUrl | None = Field(
        None,
        alias="RESPONDER_TABLES_ENDPOINT",
        description="Table service URL, used with the managed identity in Azure.",
    )
    audit_table: str = Field(
        "AuditTrail",
        alias="RESPONDER_AUDIT_TABLE",
        pattern=r"^[A-Za-z][A-Za-z0-9]{2,62}$",
        description="Table holding the hash-chained audit trail.",
    )
    state_table: str = Field(
        "ResponderState",
        alias="RESPONDER_STATE_TABLE",
        pattern=r"^[A-Za-z][A-Za-z0-9]{2,62}$",
        description="Table holding the alert watermark, handled alert versions, action ledger.",
    )
    audit_index_table: str = Field(
        "AuditIndex",
        alias="RESPONDER_AUDIT_INDEX_TABLE",
        pattern=r"^[A-Za-z][A-Za-z0-9]{2,62}$",
        description="Table holding the audit index (derived from the trail, rebuildable).",
    )
    blob_endpoint: AnyHttpUrl | None = Field(
        None,
        alias="RESPONDER_BLOB_ENDPOINT",
        description=(
            "Blob service URL holding the audit checkpoints, used with the managed identity "
            "(locally a BlobEndpoint in RESPONDER_TABLES_CONNECTION serves instead)."
        ),
    )
    audit_anchor_container: str = Field(
        "audit-anchors",
        alias="RESPONDER_AUDIT_ANCHOR_CONTAINER",
        pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$",
        description="Blob container (write-once policy) holding the audit checkpoints.",
    )
    audit_checkpoint_schedule: str = Field(
        "0 */5 * * * *",
        alias="AUDIT_CHECKPOINT_SCHEDULE",
        description="NCRONTAB schedule of the audit checkpoint.",
    )
    graph_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://graph.microsoft.com/v1.0"),
        alias="GRAPH_BASE_URL",
        description="Microsoft Graph base URL (the simulated tenant's URL locally).",
    )
    graph_max_retries: int = Field(
        3,
        alias="GRAPH_MAX_RETRIES",
        ge=0,
        le=10,
        description="Retries of throttled/5xx Graph calls inside one execution.",
    )
    graph_retry_delay_s: float = Field(
        3.0,
        alias="GRAPH_RETRY_DELAY_SECONDS",
        ge=0,
        le=180,
        description="Base delay between Graph retries when no Retry-After is given.",
    )
    graph_timeout_s: float = Field(
        30.0, alias="GRAPH_TIMEOUT_SECONDS", gt=0, le=300, description="Timeout of one Graph call."
    )
    credential: CredentialKind = Field(
        CredentialKind.MANAGED_IDENTITY,
        alias="RESPONDER_CREDENTIAL",
        description=(
            "managed_identity in Azure; azure_cli or default for an engineer's own sign-in "
            "(command line); simulator for the local simulated tenant."
        ),
    )
    managed_identity_client_id: str | None = Field(
        None,
        alias="AZURE_CLIENT_ID",
        description="Client id of the user-assigned managed identity (empty: system-assigned).",
    )
    simulator_token: SecretStr | None = Field(
        None,
        alias="SIMULATOR_TOKEN",
        description=(
            "Client secret of the simulated tenant's token endpoint (credential=simulator only)."
        ),
    )
    queue: QueueKind = Field(
        QueueKind.SERVICE_BUS,
        alias="RESPONDER_QUEUE",
        description="servicebus in Azure; memory for local runs and tests.",
    )
    service_bus_namespace: str | None = Field(
        None,
        alias="ServiceBusConnection__fullyQualifiedNamespace",
        description="Service Bus namespace host (identity-based connection).",
    )
    actions_queue: str = Field(
        "actions",
        alias="ACTIONS_QUEUE",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$",
        description="Service Bus queue carrying action requests.",
    )
    max_deliveries: int = Field(
        10,
        alias="ACTIONS_MAX_DELIVERIES",
        ge=1,
        le=2000,
        description="The queue's max delivery count, after which a message is dead-lettered.",
    )
    give_up_minutes: int = Field(
        60,
        alias="ACTIONS_GIVE_UP_MINUTES",
        ge=1,
        le=7 * 24 * 60,
        description="How long an action meeting infrastructure errors is retried before its "
        "failure is recorded.",
    )
    retry_base_s: float = Field(
        5.0,
        alias="ACTIONS_RETRY_BASE_SECONDS",
        gt=0,
        le=3600,
        description="First delay of the exponential backoff when no Retry-After is given.",
    )
    retry_max_s: float = Field(
        300.0,
        alias="ACTIONS_RETRY_MAX_SECONDS",
        gt=0,
        le=3600,
        description="Longest delay of that backoff.",
    )
    write_settle_s: float = Field(
        120.0,
        alias="ACTIONS_WRITE_SETTLE_SECONDS",
        ge=0,
        le=3600,
        description="How long after an account or transport rule write that got no answer (a "
        "timeout) a retry only re-reads the tenant, since that write may still land, before it "
        "writes again.",
    )
    resend_after_s: int = Field(
        120,
        alias="ACTIONS_RESEND_AFTER_SECONDS",
        ge=10,
        le=24 * 3600,
        description="Age at which the reconciler sends a claim that never reached the queue.",
    )
    stuck_minutes: int = Field(
        90,
        alias="ACTIONS_STUCK_MINUTES",
        ge=1,
        le=30 * 24 * 60,
        description="Age at which an action still open, or a registry entry still "
        "unblocking, raises an alert.raised record.",
    )
    state_ttl_days: int = Field(
        30,
        alias="STATE_TTL_DAYS",
        ge=2,
        le=3650,
        description="Time to live of closed working-state rows (never of the audit trail).",
    )
    cleanup_schedule: str = Field(
        "0 30 3 * * *",
        alias="CLEANUP_SCHEDULE",
        description="NCRONTAB schedule of the state clean-up.",
    )
    reconcile_schedule: str = Field(
        "0 */1 * * * *",
        alias="RECONCILE_SCHEDULE",
        description="NCRONTAB schedule of the action reconciler.",
    )
    alert_poll_schedule: str = Field(
        "0 */1 * * * *",
        alias="ALERT_POLL_SCHEDULE",
        description="NCRONTAB schedule of the alerts_v2 poller.",
    )
    poll_lookback_minutes: int = Field(
        60,
        alias="ALERT_POLL_LOOKBACK_MINUTES",
        ge=1,
        le=7 * 24 * 60,
        description="How far back the first poll looks when no watermark is stored.",
    )
    exchange_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://outlook.office365.com"),
        alias="EXCHANGE_BASE_URL",
        description="Exchange Online admin endpoint host (the simulated tenant's URL locally).",
    )
    exchange_tenant: str | None = Field(
        None,
        alias="EXCHANGE_TENANT",
        pattern=r"^[A-Za-z0-9.-]{3,253}$",
        description="Tenant id or initial domain for the Exchange admin endpoint (IP blocks).",
    )
    exchange_rule_mode: ExchangeRuleMode = Field(
        ExchangeRuleMode.ENFORCE,
        alias="EXCHANGE_RULE_MODE",
        description="Enforce, or Audit to let Exchange only log what the block rules match.",
    )
    ip_block_batch_s: float = Field(
        1.0,
        alias="IP_BLOCK_BATCH_SECONDS",
        ge=0,
        le=30,
        description="How long a block waits for others to share its transport rule writes.",
    )
    ip_block_sweep_schedule: str = Field(
        "0 */5 * * * *",
        alias="IP_BLOCK_SWEEP_SCHEDULE",
        description="NCRONTAB schedule of the sweep that lifts expired IP blocks.",
    )
    auth_tenant_id: str | None = Field(
        None,
        alias="AUTH_TENANT_ID",
        pattern=r"^[0-9a-fA-F-]{36}$",
        description="Entra tenant whose tokens the HTTP API accepts.",
    )
    auth_audience: str | None = Field(
        None,
        alias="AUTH_AUDIENCE",
        min_length=3,
        max_length=256,
        description="The API registration's client id: Entra v2.0 tokens carry it in aud.",
    )
    auth_issuer: str | None = Field(
        None,
        alias="AUTH_ISSUER",
        description="Token issuer (default: the tenant's Entra v2.0 issuer).",
    )
    auth_jwks_url: AnyHttpUrl | None = Field(
        None,
        alias="AUTH_JWKS_URL",
        description="Signing keys (default: the tenant's Entra v2.0 JWKS).",
    )
    disable_budget: int = Field(
        10,
        alias="AUTO_DISABLE_BUDGET",
        ge=0,
        le=10_000,
        description="Automatic account disables allowed per window; more wait for approval.",
    )
    disable_window_minutes: int = Field(
        60,
        alias="AUTO_DISABLE_WINDOW_MINUTES",
        ge=1,
        le=7 * 24 * 60,
        description="The rolling window of AUTO_DISABLE_BUDGET.",
    )
    approval_ttl_minutes: int = Field(
        240,
        alias="APPROVAL_TTL_MINUTES",
        ge=5,
        le=7 * 24 * 60,
        description="How long an action waits for approval before it expires.",
    )
    breakglass_resting_state: RestingState = Field(
        RestingState.ENABLED,
        alias="BREAKGLASS_RESTING_STATE",
        description="enabled (and monitored) or disabled: the state deactivation returns to.",
    )
    breakglass_ttl_minutes: int = Field(
        240,
        alias="BREAKGLASS_TTL_MINUTES",
        ge=15,
        le=7 * 24 * 60,
        description="How long an activation lasts before deactivate_breakglass runs.",
    )
    breakglass_health_schedule: str = Field(
        "0 0 * * * *",
        alias="BREAKGLASS_HEALTH_SCHEDULE",
        description="NCRONTAB schedule of the emergency access health check.",
    )
    approval_sweep_schedule: str = Field(
        "0 */5 * * * *",
        alias="APPROVAL_SWEEP_SCHEDULE",
        description="NCRONTAB schedule of the sweep that expires unanswered approvals.",
    )
    readiness_schedule: str = Field(
        "0 0 6 * * *",
        alias="READINESS_SCHEDULE",
        description="NCRONTAB schedule of the daily readiness check (audits what fails).",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        alias="RESPONDER_WEBHOOK_SECRET",
        min_length=32,
        description="Shared secret the alert webhook expects in X-Responder-Key.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        alias="RESPONDER_MAX_BODY_BYTES",
        ge=1024,
        le=32 * 1_048_576,
        description="Largest accepted webhook body.",
    )

    notification_url: SecretStr | None = Field(
        None,
        alias="NOTIFICATION_URL",
        description="Public URL of notify_changes, with ?code=<function key>; unset: no "
        "change notification subscriptions.",
    )
    lifecycle_notification_url: SecretStr | None = Field(
        None,
        alias="LIFECYCLE_NOTIFICATION_URL",
        description="Public URL of notify_lifecycle, with ?code=<function key>.",
    )
    notification_tenant_id: str | None = Field(
        None,
        alias="NOTIFICATION_TENANT_ID",
        pattern=r"^[0-9a-fA-F-]{36}$",
        description="Tenant id every change notification must carry.",
    )
    watched_groups: CommaList = Field(
        (),
        alias="WATCHED_GROUPS",
        description="Object ids of privileged / role-assignable groups whose new members raise "
        "an alert.",
    )
    watch_all_users: bool = Field(
        False,
        alias="WATCH_ALL_USERS",
        description="Watch every user: new and re-enabled accounts during an incident raise an "
        "alert.",
    )
    subscription_renew_schedule: str = Field(
        "0 */30 * * * *",
        alias="SUBSCRIPTION_RENEW_SCHEDULE",
        description="NCRONTAB schedule of the timer that creates and renews subscriptions.",
    )
    notifications_queue: str = Field(
        "notifications",
        alias="NOTIFICATIONS_QUEUE",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$",
        description="Service Bus queue carrying accepted change notifications.",
    )
    defender_eventhub: str = Field(
        "defender-alerts",
        alias="DEFENDER_EVENTHUB",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$",
        description="Event Hub the Defender XDR streaming API writes AlertInfo/AlertEvidence to.",
    )
    defender_eventhub_namespace: str | None = Field(
        None,
        alias="DefenderEventHubConnection__fullyQualifiedNamespace",
        description="Event Hubs namespace of that hub (identity-based trigger connection).",
    )

    notices_queue: str = Field(
        "notices",
        alias="NOTICES_QUEUE",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,259}$",
        description="Service Bus queue carrying notices (Teams, e-mail, alert comments).",
    )
    notices_schedule: str = Field(
        "0 */1 * * * *",
        alias="NOTICES_SCHEDULE",
        description="NCRONTAB schedule of the notice dispatcher; one run is one digest.",
    )
    notice_teams_webhook_url: SecretStr | None = Field(
        None,
        alias="NOTICE_TEAMS_WEBHOOK_URL",
        description="URL of a Teams Workflows flow 'post to a channel when a webhook request is "
        "received' (https, on a Workflows host); unset: no Teams notices.",
    )
    notice_teams_events: CommaList = Field(
        tuple(ALL_CLASSES),
        alias="NOTICE_TEAMS_EVENTS",
        description="Event classes posted to Teams: executed, held, refused, failed, "
        "breakglass, block_expired, readiness.",
    )
    notice_mail_sender: str | None = Field(
        None,
        alias="NOTICE_MAIL_SENDER",
        description="Mailbox (UPN or object id) notices are sent from with Graph sendMail.",
    )
    notice_mail_routes: str | None = Field(
        None,
        alias="NOTICE_MAIL_ROUTES",
        description="Recipients per event class: 'held,failed=oncall@contoso.com;"
        "executed=soc@contoso.com,lead@contoso.com' (classes before '=', addresses after, "
        "routes split by ';'; '*' stands for every class).",
    )
    notice_alert_comments: bool = Field(
        False,
        alias="NOTICE_ALERT_COMMENTS",
        description="Comment on the originating alerts_v2 alert (needs "
        "SecurityAlert.ReadWrite.All).",
    )
    sentinel_workspace_id: str | None = Field(
        None,
        alias="SENTINEL_WORKSPACE_ID",
        pattern=r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
        r"Microsoft\.OperationalInsights/workspaces/[^/]+$",
        description="ARM id of the Sentinel workspace: its incidents get comments.",
    )
    arm_base_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://management.azure.com"),
        alias="ARM_BASE_URL",
        description="Azure Resource Manager endpoint (the simulated tenant's URL locally).",
    )
    notice_page_url: AnyHttpUrl | None = Field(
        None,
        alias="NOTICE_PAGE_URL",
        description="The audit page's URL (https://<app>/api/audit/ui), linked from notices.",
    )
    notice_max_per_minute: int = Field(
        20,
        alias="NOTICE_MAX_PER_MINUTE",
        ge=1,
        le=30,
        description="Notices per channel and dispatch pass; more are folded into the last one "
        "(Exchange Online sends at most 30 messages a minute per mailbox).",
    )

    @field_validator("notice_teams_webhook_url")
    @classmethod
    def _workflows_endpoint(cls, value: SecretStr | None) -> SecretStr | None:
        # The URL carries its own signature; only Workflows hosts receive it. Office 365
        # connector webhooks are retired. Plain http only for the simulated tenant.
        if value is None:
            return None
        url = urlsplit(value.get_secret_value())
        host = (url.hostname or "").lower()
        if url.scheme == "http" and host in LOOPBACK:
            return value
        if url.scheme != "https":
            raise ValueError("must be an https URL")
        if not host.endswith(WORKFLOW_HOSTS):
            raise ValueError(
                "must be a Teams Workflows webhook URL (a host under "
                + " or ".join(h.lstrip(".") for h in WORKFLOW_HOSTS)
                + ")"
            )
        return value

    @field_validator("notice_teams_events")
    @classmethod
    def _notice_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(NoticeClass(item.strip().lower())) for item in value)

    @field_validator("notice_mail_routes")
    @classmethod
    def _mail_routes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mail_routes(value)
        return value

    @property
    def mail_routes(self) -> dict[NoticeClass, tuple[str, ...]]:
        return parse_mail_routes(self.notice_mail_routes) if self.notice_mail_routes else {}

    @field_validator("watched_groups")
    @classmethod
    def _group_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return PolicySettings._object_ids(value)

    @field_validator("notification_url", "lifecycle_notification_url")
    @classmethod
    def _public_endpoint(cls, value: SecretStr | None) -> SecretStr | None:
        # Graph only delivers to https; the simulator on this machine is the exception.
        if value is None:
            return None
        url = AnyHttpUrl(value.get_secret_value())
        if url.scheme != "https" and url.host not in LOOPBACK:
            raise ValueError("must be an https URL (plain http only for 127.0.0.1 or localhost)")
        return value

    @property
    def watched_users(self) -> tuple[str, ...]:
        """Emergency accounts and protected identities given by object id: UPNs cannot be
        subscribed to."""
        ids = [*self.breakglass_accounts, *self.protected_identities]
        return tuple(dict.fromkeys(i.lower() for i in ids if _GUID.match(i)))

    @field_validator(
        "graph_base_url",
        "exchange_base_url",
        "tables_endpoint",
        "auth_jwks_url",
        "arm_base_url",
        "notice_page_url",
    )
    @classmethod
    def _https_off_loopback(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        # Bearer tokens travel to these hosts: plain http only to this machine.
        if value is not None and value.scheme != "https" and value.host not in LOOPBACK:
            raise ValueError("must use https (plain http only for 127.0.0.1 or localhost)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _resolved(cls, value: SecretStr | None) -> SecretStr | None:
        # App Service hands over the reference text itself when it cannot resolve it; that
        # text is long and predictable, so it must never serve as the secret.
        if value is not None and value.get_secret_value().startswith("@Microsoft.KeyVault("):
            raise ValueError("is an unresolved Key Vault reference (check the app's access)")
        return value

    @property
    def issuer(self) -> str | None:
        if self.auth_issuer or self.auth_tenant_id is None:
            return self.auth_issuer
        return f"https://login.microsoftonline.com/{self.auth_tenant_id}/v2.0"

    @property
    def jwks_url(self) -> str | None:
        if self.auth_jwks_url is not None or self.auth_tenant_id is None:
            return str(self.auth_jwks_url) if self.auth_jwks_url else None
        return f"https://login.microsoftonline.com/{self.auth_tenant_id}/discovery/v2.0/keys"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.tables_connection is None) == (self.tables_endpoint is None):
            raise ValueError(
                "set exactly one of RESPONDER_TABLES_CONNECTION and RESPONDER_TABLES_ENDPOINT"
            )
        if self.credential is CredentialKind.SIMULATOR and self.simulator_token is None:
            raise ValueError("SIMULATOR_TOKEN is required when RESPONDER_CREDENTIAL=simulator")
        if self.notification_url is not None and self.notification_tenant_id is None:
            raise ValueError("NOTIFICATION_TENANT_ID is required when NOTIFICATION_URL is set")
        if (self.notice_mail_sender is None) != (self.notice_mail_routes is None):
            raise ValueError("set both NOTICE_MAIL_SENDER and NOTICE_MAIL_ROUTES, or neither")
        if self.queue is QueueKind.SERVICE_BUS and not self.service_bus_namespace:
            raise ValueError(
                "ServiceBusConnection__fullyQualifiedNamespace is required when "
                "RESPONDER_QUEUE=servicebus"
            )
        return self


def parse_mail_routes(text: str) -> dict[NoticeClass, tuple[str, ...]]:
    """`held,failed=a@x.com;*=b@x.com` -> recipients per event class ('*': every class)."""
    routes: dict[NoticeClass, list[str]] = {}
    for route in filter(None, (r.strip() for r in text.split(";"))):
        classes, sep, addresses = route.partition("=")
        recipients = [a.strip() for a in addresses.split(",") if a.strip()]
        if not sep or not recipients:
            raise ValueError(f"route {route!r} is not 'classes=addresses'")
        for address in recipients:
            if not _MAIL_ADDRESS.match(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        names = [c.strip().lower() for c in classes.split(",") if c.strip()]
        chosen = ALL_CLASSES if names == ["*"] else tuple(NoticeClass(n) for n in names)
        for cls in chosen:
            routes.setdefault(cls, [])
            routes[cls] += [a for a in recipients if a not in routes[cls]]
    return {cls: tuple(addresses) for cls, addresses in routes.items()}


def settings_file_values(path: Path) -> dict[str, str]:
    """The `Values` object of a local.settings.json file (the Functions Core Tools format), so
    the command line reads the same settings as `func start`. Values must be strings."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"settings file {path} is not valid JSON: {exc}") from None
    values = document.get("Values") if isinstance(document, dict) else None
    if not isinstance(values, dict):
        raise ConfigError(f'settings file {path} has no "Values" object')
    wrong = sorted(key for key, value in values.items() if not isinstance(value, str))
    if wrong:
        raise ConfigError(f"settings file {path}: {', '.join(wrong)} must be strings")
    return dict(values)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "invalid settings: " + "; ".join(problems)
