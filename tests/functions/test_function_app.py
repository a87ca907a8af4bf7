"""The app registers exactly its functions, with the bindings the host needs, and importing it
does no I/O and reads no settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from drill.host import registered_functions

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "poll_alerts",
    "ingest_alert",
    "execute_action",
    "sweep_ip_blocks",
    "check_breakglass",
    "expire_approvals",
    "request_action",
    "get_action",
    "approve_action",
    "reject_action",
    "list_approvals",
    "verify_audit",
    "query_audit",
    "export_audit",
    "openapi",
    "health",
    "audit_ui",
    "notify_changes",
    "notify_lifecycle",
    "process_notification",
    "renew_subscriptions",
    "ingest_defender_stream",
    "readiness",
    "check_readiness",
    "reconcile_actions",
    "clean_up_state",
    "dispatch_notices",
    "send_notice",
    "checkpoint_audit",
}


def test_the_app_registers_every_function() -> None:
    assert set(registered_functions()) == EXPECTED


def test_bindings_use_app_settings_not_literals() -> None:
    bindings = {
        name: json.loads(fn.get_function_json())["bindings"]
        for name, fn in registered_functions().items()
    }
    timer = bindings["poll_alerts"][0]
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "%ALERT_POLL_SCHEDULE%"
    sweep = bindings["sweep_ip_blocks"][0]
    assert sweep["type"] == "timerTrigger" and sweep["schedule"] == "%IP_BLOCK_SWEEP_SCHEDULE%"
    health = bindings["check_breakglass"][0]
    assert health["schedule"] == "%BREAKGLASS_HEALTH_SCHEDULE%"
    assert bindings["expire_approvals"][0]["schedule"] == "%APPROVAL_SWEEP_SCHEDULE%"
    queue = bindings["execute_action"][0]
    assert queue["type"] == "serviceBusTrigger"
    assert queue["queueName"] == "%ACTIONS_QUEUE%"
    assert queue["connection"] == "ServiceBusConnection"
    http = bindings["ingest_alert"][0]
    assert http["type"] == "httpTrigger" and http["authLevel"] == "FUNCTION"
    assert http["methods"] == ["POST"] and http["route"] == "alerts"
    # Graph keeps the notificationUrl's query string, so the function key travels in it.
    for name, route in (
        ("notify_changes", "notifications"),
        ("notify_lifecycle", "notifications/lifecycle"),
    ):
        webhook = bindings[name][0]
        assert webhook["authLevel"] == "FUNCTION" and webhook["route"] == route
    renew = bindings["renew_subscriptions"][0]
    assert renew["schedule"] == "%SUBSCRIPTION_RENEW_SCHEDULE%"
    assert bindings["dispatch_notices"][0]["schedule"] == "%NOTICES_SCHEDULE%"
    notices = bindings["send_notice"][0]
    assert notices["queueName"] == "%NOTICES_QUEUE%"
    assert notices["connection"] == "ServiceBusConnection"
    notifications = bindings["process_notification"][0]
    assert notifications["queueName"] == "%NOTIFICATIONS_QUEUE%"
    stream = bindings["ingest_defender_stream"][0]
    assert stream["type"] == "eventHubTrigger" and stream["cardinality"] == "MANY"
    assert stream["eventHubName"] == "%DEFENDER_EVENTHUB%"
    assert stream["connection"] == "DefenderEventHubConnection"
    # The API checks Entra tokens itself; the host adds no key of its own.
    api = {name: bindings[name][0] for name in ("request_action", "get_action", "verify_audit")}
    assert {b["authLevel"] for b in api.values()} == {"ANONYMOUS"}
    assert api["get_action"]["route"] == "actions/{action_id}"


def test_import_needs_no_settings_and_loads_no_graph_sdk() -> None:
    script = (
        "import sys, function_app; "
        "assert 'msgraph' not in sys.modules, 'msgraph imported at import time'; "
        "print(len(function_app.app.get_functions()))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPONDER_", "GRAPH_"))}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(EXPECTED))


# The SDKs a cold start must not pay for before a trigger runs (docs/performance.md).
DEFERRED = (
    "azure.identity",
    "azure.servicebus",
    "azure.data.tables",
    "azure.storage.blob",
    "msgraph",
    "msal",
    "jwt",
)


def loaded_after(statement: str, names: tuple[str, ...] = DEFERRED) -> set[str]:
    """Which of `names` a fresh interpreter has imported after `statement`."""
    script = f"import sys; {statement}; print(' '.join(m for m in {names!r} if m in sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPONDER_", "GRAPH_"))}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_import_defers_every_sdk_to_first_use() -> None:
    assert loaded_after("import function_app") == set()
    # The composition root, which the first trigger call imports, does load them: the check
    # above would see a trigger module that imported it at module level.
    assert "azure.data.tables" in loaded_after("import shared.container")


def test_token_checking_waits_for_the_first_signed_in_request() -> None:
    """The alert path takes no bearer tokens: PyJWT and cryptography load with the validator."""
    build = (
        "from shared.config import Settings; from shared.container import Container; "
        "c = Container(Settings.model_validate({'RESPONDER_TABLES_CONNECTION': "
        "'UseDevelopmentStorage=true', 'RESPONDER_QUEUE': 'memory', "
        "'AUTH_TENANT_ID': '72f988bf-86f1-41af-91ab-2d7cd011db47', "
        "'AUTH_AUDIENCE': 'api://responder'})); c.intake; c.runner"
    )
    assert "jwt" not in loaded_after(build)
    assert "jwt" in loaded_after(f"{build}; c.validator")


def test_the_blob_sdk_waits_for_the_first_checkpoint() -> None:
    build = (
        "from shared.config import Settings; from shared.container import Container; "
        "Container(Settings.model_validate({'RESPONDER_TABLES_CONNECTION': "
        "'UseDevelopmentStorage=true', 'RESPONDER_QUEUE': 'memory'}))"
    )
    loaded = loaded_after(build)
    assert "azure.data.tables" in loaded and "azure.storage.blob" not in loaded


# The modules of the features an alert's way to its executed actions does not use: the
# composition root loads them with the first use of their feature (docs/performance.md).
OTHER_FEATURES = (
    "shared.actions.reconciler",
    "shared.adapters.exchange",
    "shared.adapters.notice_queue",
    "shared.adapters.notification_queue",
    "shared.adapters.readiness_probes",
    "shared.adapters.state_retention",
    "shared.adapters.watch_table",
    "shared.approvals",
    "shared.audit_export",
    "shared.cleanup",
    "shared.defender_stream",
    "shared.emergency",
    "shared.manual",
    "shared.notices.service",
    "shared.poller",
    "shared.readiness",
    "shared.waiting",
    "shared.watch.changes",
    "shared.watch.gate",
    "shared.watch.subscriptions",
)


def test_the_alert_path_loads_no_other_features_modules() -> None:
    build = (
        "from shared.config import Settings; from shared.container import Container; "
        "c = Container(Settings.model_validate({'RESPONDER_TABLES_CONNECTION': "
        "'UseDevelopmentStorage=true', 'RESPONDER_QUEUE': 'memory'})); c.intake; c.runner"
    )
    assert loaded_after(build, OTHER_FEATURES) == set()
    # Each loads with its feature: the check above would pass on a misspelt list.
    features = "c.reconciler; c.readiness; c.notice_sender; c.notice_dispatcher; c.cleanup; "
    features += "c.manual; c.waiting; c.poller; c.defender_stream; c.monitor; c.audit_export; "
    features += "c.notification_dead_letters; c.notification_gate"
    with_exchange = build.replace(
        "'RESPONDER_QUEUE': 'memory'",
        "'RESPONDER_QUEUE': 'memory', 'EXCHANGE_TENANT': 'contoso.onmicrosoft.com'",
    )
    assert loaded_after(f"{with_exchange}; {features}; c.exchange", OTHER_FEATURES) == set(
        OTHER_FEATURES
    )
