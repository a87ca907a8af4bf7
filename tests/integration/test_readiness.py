"""The readiness check against the simulated tenant and Azurite: through the service, the
`readiness` route and the `check_readiness` timer (azure.functions objects, as the host calls
them), and `responder doctor`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from drill.azurite import Azurite
from shared.adapters.readiness_probes import AzureProbes
from shared.cli import main
from shared.container import Container
from shared.permissions import EXCHANGE_AUDIENCE, GRAPH_AUDIENCE, manifest
from shared.simulator import SimulatedTenant, SimUser
from shared.simulator.access import GLOBAL_ADMINISTRATOR
from tests.conftest import installed, settings_for

pytestmark = pytest.mark.integration

API_CLIENT_ID = "7d0b3c52-1f6e-4a8d-9b2c-5e4f3a2b1c0d"
EMERGENCY = tuple(
    SimUser(
        id=f"5bad0000-0000-4000-8000-{n:012d}",
        user_principal_name=f"bg-0{n}@contoso.onmicrosoft.com",
        display_name=f"bg-0{n}",
    )
    for n in (1, 2)
)
# Emergency accounts are watched (change notifications), but these tests have no public webhook
# URL: the subscriptions line fails, honestly, as it would in such a deployment.
NO_WEBHOOK = "change notification subscriptions"
# Features: always + breakglass (the default playbook blocks no address at sign-in).
DEPLOYMENT = manifest().grants(["breakglass"], GRAPH_AUDIENCE) | manifest().grants(
    ["breakglass"], EXCHANGE_AUDIENCE
)


def readiness_settings(sim: SimulatedTenant, azurite: Azurite) -> dict[str, Any]:
    return {
        "BREAKGLASS_ACCOUNTS": ",".join(u.id for u in EMERGENCY),
        "AUTH_AUDIENCE": API_CLIENT_ID,
        "AUTH_ISSUER": sim.issuer,
        "AUTH_JWKS_URL": sim.jwks_url,
    }


@pytest.fixture
def tenant(sim: SimulatedTenant) -> SimulatedTenant:
    for user in EMERGENCY:
        sim.add_user(SimUser(**vars(user)))
        sim.assign_role(user.id, GLOBAL_ADMINISTRATOR)
    sim.add_ca_policy("MFA for everyone", exclude_users=[u.id for u in EMERGENCY])
    sim.set_grants(DEPLOYMENT)
    return sim


@pytest.fixture
async def services(tenant: SimulatedTenant, azurite: Azurite) -> AsyncIterator[Container]:
    settings = settings_for(tenant, azurite, **readiness_settings(tenant, azurite))
    async with installed(settings) as built:
        yield built


def failed(report: Any) -> dict[str, Any]:
    return {c.name: c for c in report.failures}


async def test_a_ready_tenant_passes_everything_azurite_can_show(
    services: Container, tenant: SimulatedTenant
) -> None:
    tenant.reset_requests()
    report = await services.readiness.run()
    # Azurite enforces no roles: the insert-only probe fails, honestly.
    assert set(failed(report)) == {"audit table insert-only", NO_WEBHOOK}
    assert "NOTIFICATION_URL is not set" in failed(report)[NO_WEBHOOK].detail
    probe = failed(report)["audit table insert-only"]
    assert "accepted" in probe.detail and "connection string" in probe.detail
    assert "custom audit role" in probe.fix
    names = {c.name for c in report.checks}
    for permission in manifest().grants(["breakglass"], GRAPH_AUDIENCE):
        assert f"Graph permission {permission}" in names
    assert "Graph permission Group.Read.All" not in names, "no group is watched"
    assert {
        "Exchange permission Exchange.ManageAsApp",
        "Exchange role Transport Rules",
        "directory role Privileged Authentication Administrator",
        "emergency access",
        "tables reachable",
        "queue reachable",
        "API app registration",
        "settings",
    } <= names
    # It read the tenant and wrote nothing to it.
    assert all(method == "GET" for method, path in tenant.requests if "/adminapi/" not in path)
    assert [cmdlet for cmdlet, _ in tenant.exchange_calls] == ["Get-TransportRule"]


async def test_missing_and_extra_grants_and_roles_fail_with_their_fixes(
    tenant: SimulatedTenant, azurite: Azurite
) -> None:
    tenant.set_grants((DEPLOYMENT - {"User.RevokeSessions.All"}) | {"Directory.ReadWrite.All"})
    tenant.set_app_roles([])
    tenant.set_exchange_roles([])
    settings = settings_for(tenant, azurite, **readiness_settings(tenant, azurite))
    async with installed(settings) as built:
        report = await built.readiness.run()
    failures = failed(report)
    revoke = failures["Graph permission User.RevokeSessions.All"]
    assert revoke.fix.startswith("infra/grant-graph-permissions.sh --with-breakglass")
    extra = failures["no Graph permissions beyond the manifest"]
    assert (
        "Directory.ReadWrite.All" in extra.detail and "revoke Directory.ReadWrite.All" in extra.fix
    )
    role = failures["directory role Privileged Authentication Administrator"]
    assert "Roles & admins > Privileged Authentication Administrator" in role.fix
    exchange = failures["Exchange role Transport Rules"]
    assert 'New-ManagementRoleAssignment -App <object id> -Role "Transport Rules"' in exchange.fix
    assert set(failures) == {
        "Graph permission User.RevokeSessions.All",
        "no Graph permissions beyond the manifest",
        "directory role Privileged Authentication Administrator",
        "Exchange role Transport Rules",
        "audit table insert-only",
        NO_WEBHOOK,
    }


async def test_unhealthy_emergency_access_and_missing_subscriptions_fail(
    tenant: SimulatedTenant, azurite: Azurite
) -> None:
    policy = tenant.add_ca_policy("Block admins")  # excludes nobody
    settings = settings_for(
        tenant,
        azurite,
        **readiness_settings(tenant, azurite),
        NOTIFICATION_URL="https://responder.example/api/notifications?code=k",
        NOTIFICATION_TENANT_ID=tenant.tenant_id,
    )
    async with installed(settings) as built:
        report = await built.readiness.run()
    failures = failed(report)
    emergency = [c for name, c in failures.items() if name.startswith("emergency access ")]
    assert len(emergency) == 2 and all(
        policy in c.detail or "Block admins" in c.detail for c in emergency
    )
    subscriptions = [c for name, c in failures.items() if name.startswith("subscription users/")]
    # The emergency accounts and the protected identity given by object id.
    assert len(subscriptions) == 3 and all(c.detail == "not created yet" for c in subscriptions)


def doctor_environment(
    monkeypatch: pytest.MonkeyPatch, tenant: SimulatedTenant, azurite: Azurite
) -> None:
    settings = settings_for(tenant, azurite, **readiness_settings(tenant, azurite))
    # The tables exist, as infra creates them in Azure.
    asyncio.run(_create_tables(settings))
    values = {
        "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
        "RESPONDER_AUDIT_TABLE": settings.audit_table,
        "RESPONDER_STATE_TABLE": settings.state_table,
        "RESPONDER_AUDIT_INDEX_TABLE": settings.audit_index_table,
        "GRAPH_BASE_URL": tenant.base_url,
        "RESPONDER_CREDENTIAL": "simulator",
        "SIMULATOR_TOKEN": tenant.token,
        "RESPONDER_QUEUE": "memory",
        "RESPONDER_WEBHOOK_SECRET": "s" * 40,
        "EXCHANGE_BASE_URL": tenant.exchange_base_url,
        "EXCHANGE_TENANT": tenant.default_domain,
        **readiness_settings(tenant, azurite),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)


async def _create_tables(settings: Any) -> None:
    built = Container(settings)
    try:
        await built.prepare()
    finally:
        await built.close()


def test_doctor_prints_the_checklist_and_exits_1_on_a_failure(
    tenant: SimulatedTenant,
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doctor_environment(monkeypatch, tenant, azurite)
    tenant.revoke_grant("User.RevokeSessions.All")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "PASS  Graph permission User.Read.All" in out
    assert "FAIL  Graph permission User.RevokeSessions.All" in out
    assert "      fix: infra/grant-graph-permissions.sh --with-breakglass" in out

    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {c["name"] for c in report["checks"] if not c["passed"]} == {
        "Graph permission User.RevokeSessions.All",
        "audit table insert-only",
        NO_WEBHOOK,
    }


def test_doctor_usage_and_settings_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["doctor", "--bogus"])
    assert usage.value.code == 2
    monkeypatch.delenv("RESPONDER_TABLES_CONNECTION", raising=False)
    monkeypatch.delenv("RESPONDER_TABLES_ENDPOINT", raising=False)
    assert main(["doctor"]) == 2
    assert "RESPONDER_TABLES" in capsys.readouterr().err


class _RefusingTable:
    """A table client as the audit role leaves it: insert allowed, update refused (403)."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def create_entity(self, entity: dict[str, Any]) -> None:
        self.created.append(entity)

    async def update_entity(self, entity: dict[str, Any], mode: Any = None) -> None:
        error = HttpResponseError(
            message="This request is not authorized to perform this operation."
        )
        error.status_code = 403
        raise error


class _Tables:
    def __init__(self, table: _RefusingTable) -> None:
        self.table = table

    def get_table_client(self, name: str) -> _RefusingTable:
        return self.table


async def test_the_probe_passes_where_the_update_is_refused() -> None:
    table = _RefusingTable()
    probes = AzureProbes(_Tables(table), [], "AuditTrail", None)  # type: ignore[arg-type]
    refused, detail = await probes.audit_update_refused()
    assert refused and detail.startswith("update refused: 403")
    assert [e["PartitionKey"] for e in table.created] == ["readiness-probe"]


async def test_tables_that_cannot_be_read_fail_under_their_own_names(
    tenant: SimulatedTenant, azurite: Azurite
) -> None:
    settings = settings_for(tenant, azurite, **readiness_settings(tenant, azurite))
    built = Container(settings)  # not prepared: its tables were never created
    try:
        report = await built.readiness.run()
    finally:
        await built.close()
    failures = failed(report)
    assert "could not be checked: ResourceNotFoundError" in failures["tables reachable"].detail
    assert "could not be checked" in failures["audit table insert-only"].detail
    assert "Graph permission User.Read.All" not in failures
