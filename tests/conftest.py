"""Shared fixtures: Azurite (one per test session, started and stopped here), a simulated
tenant per test, and a container wired to both with tables of its own."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import pytest
from msgraph import GraphServiceClient

from drill.azurite import Azurite
from drill.context import DrillClock
from shared import container
from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.graph import build_graph_client
from shared.config import Settings
from shared.models import utcnow
from shared.simulator import SimulatedTenant, SimUser

ADELE = SimUser(
    id="5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01",
    user_principal_name="adele.vance@contoso.onmicrosoft.com",
    display_name="Adele Vance",
)
BREAK_GLASS = SimUser(
    id="0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20",
    user_principal_name="bg-emergency-01@contoso.onmicrosoft.com",
    display_name="Emergency Access 01",
)
WEBHOOK_SECRET = secrets.token_urlsafe(32)
PARTNER_NETWORK = "52.96.0.0/14"
API_AUDIENCE = "api://m365-responder"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as running:
        yield running


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant() as tenant:
        tenant.add_user(SimUser(**vars(ADELE)))
        tenant.add_user(SimUser(**vars(BREAK_GLASS)))
        yield tenant


def settings_for(sim: SimulatedTenant, azurite: Azurite, **overrides: Any) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
        "RESPONDER_AUDIT_TABLE": f"Audit{suffix}",
        "RESPONDER_STATE_TABLE": f"State{suffix}",
        "RESPONDER_AUDIT_INDEX_TABLE": f"Index{suffix}",
        "GRAPH_BASE_URL": sim.base_url,
        "RESPONDER_CREDENTIAL": "simulator",
        "SIMULATOR_TOKEN": sim.token,
        "RESPONDER_QUEUE": "memory",
        "RESPONDER_PROTECTED_IDENTITIES": BREAK_GLASS.id,
        "RESPONDER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GRAPH_MAX_RETRIES": 1,
        "GRAPH_RETRY_DELAY_SECONDS": 0,
        "ACTIONS_MAX_DELIVERIES": 3,
        "EXCHANGE_BASE_URL": sim.exchange_base_url,
        "EXCHANGE_TENANT": sim.default_domain,
        "RESPONDER_IP_ALLOWLIST": PARTNER_NETWORK,
        "AUTH_AUDIENCE": API_AUDIENCE,
        "AUTH_ISSUER": sim.issuer,
        "AUTH_JWKS_URL": sim.jwks_url,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def sdk_client(
    sim: SimulatedTenant, **overrides: Any
) -> tuple[GraphServiceClient, httpx.AsyncClient]:
    """msgraph-sdk wired to the simulated tenant exactly as the product wires it (settings
    `overrides` aside), and the HTTP client underneath it (for closing)."""
    settings = Settings.model_validate(
        {
            "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
            "GRAPH_BASE_URL": sim.base_url,
            "RESPONDER_CREDENTIAL": "simulator",
            "SIMULATOR_TOKEN": sim.token,
            "RESPONDER_QUEUE": "memory",
            **overrides,
        }
    )
    client = build_graph_client(settings, StaticTokenCredential(sim.token))
    http_client: httpx.AsyncClient = client.request_adapter._http_client
    return client, http_client


@asynccontextmanager
async def installed(
    settings: Settings, clock: Callable[[], datetime] = utcnow
) -> AsyncIterator[container.Container]:
    """A container built from `settings`, installed as the worker's container meanwhile."""
    built = container.Container(settings, clock)
    container.install(built)
    try:
        yield await built.prepare()
    finally:
        container.install(None)
        await built.close()


@pytest.fixture
async def services(sim: SimulatedTenant, azurite: Azurite) -> AsyncIterator[container.Container]:
    """The container the functions use in this test."""
    async with installed(settings_for(sim, azurite)) as built:
        yield built


@pytest.fixture
def clock() -> DrillClock:
    """A clock the test moves."""
    return DrillClock()


@pytest.fixture
async def timed(
    sim: SimulatedTenant, azurite: Azurite, clock: DrillClock
) -> AsyncIterator[container.Container]:
    """The container on `clock`, so what is scheduled for later comes due as the test moves
    it."""
    async with installed(settings_for(sim, azurite), clock) as built:
        yield built


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable in the environment, either case; set one with the returned patch."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch
