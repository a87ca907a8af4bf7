"""The readiness route and timer invoked as the host invokes them (azure.functions objects),
against the simulated tenant and Azurite."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from drill.azurite import Azurite
from drill.host import LocalHost, registered_functions
from shared.container import Container
from shared.identity import ROLE_ACT, ROLE_AUDIT_READ
from shared.models import AuditEvent
from shared.simulator import SimulatedTenant
from tests.conftest import API_AUDIENCE, installed, settings_for
from tests.integration.test_readiness import (  # the same tenant and settings
    NO_WEBHOOK,
    readiness_settings,
    services,
    tenant,
)

pytestmark = pytest.mark.integration
__all__ = ["services", "tenant"]  # fixtures


async def test_the_timer_audits_a_failing_run_as_an_alert(services: Container) -> None:
    await LocalHost().fire_timer("check_readiness")
    records = [r async for r in services.audit_store.newest_first()]
    [alert] = [r for r in records if r.entry.event is AuditEvent.ALERT_RAISED]
    assert alert.entry.reason == "The responder is not ready"
    assert alert.entry.result["category"] == "ResponderReadiness"
    assert {f["name"] for f in alert.entry.result["failures"]} == {
        NO_WEBHOOK,
        "audit table insert-only",
    }
    assert (await services.chain.verify()).ok


def get(token: str | None) -> func.HttpRequest:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return func.HttpRequest(
        method="GET", url="http://127.0.0.1/api/readiness", headers=headers, params={}, body=b""
    )


async def invoke(req: func.HttpRequest) -> func.HttpResponse:
    response: func.HttpResponse = await registered_functions()["readiness"].get_user_function()(req)
    return response


async def test_the_route_needs_responder_act(tenant: SimulatedTenant, azurite: Azurite) -> None:
    settings = settings_for(
        tenant, azurite, **{**readiness_settings(tenant, azurite), "AUTH_AUDIENCE": API_AUDIENCE}
    )
    async with installed(settings):
        assert (await invoke(get(None))).status_code == 401
        reader = tenant.issue_token(audience=API_AUDIENCE, roles=[ROLE_AUDIT_READ])
        assert (await invoke(get(reader))).status_code == 403
        engineer = tenant.issue_token(audience=API_AUDIENCE, roles=[ROLE_ACT])
        response = await invoke(get(engineer))
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = json.loads(response.get_body())
    assert body["ok"] is False
    by_name = {c["name"]: c for c in body["checks"]}
    assert by_name["Graph permission User.Read.All"]["passed"] is True
    # api://... is no v2.0 client id: the registration line says so.
    assert by_name["API app registration"]["passed"] is False
    assert "not a client id" in by_name["API app registration"]["detail"]
