"""The token credential: the app's managed identity in Azure, an engineer's own sign-in for the
command line on a laptop, and for the simulated tenant the client credentials grant against its
token endpoint, so the product's tokens carry `roles` like real ones."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

from shared.adapters.http_transport import http_client
from shared.config import CredentialKind, Settings
from shared.errors import ConfigError


class StaticTokenCredential:
    """Hands out one fixed bearer token: only for the simulated tenant, which checks it."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class SimulatorCredential:
    """The client credentials grant against the simulated tenant's token endpoint, one token
    per audience, cached until five minutes before it expires (as azure-identity does)."""

    def __init__(self, token_url: str, client_secret: str, timeout_s: float = 30) -> None:
        self._token_url = token_url
        self._secret = client_secret
        self._client = http_client(timeout_s)
        self._tokens: dict[str, AccessToken] = {}
        self._lock = asyncio.Lock()

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        scope = " ".join(scopes)
        async with self._lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached.expires_on - 300 > time.time():
                return cached
            form = {
                "grant_type": "client_credentials",
                "client_id": "m365-responder",
                "client_secret": self._secret,
                "scope": scope,
            }
            try:
                response = await self._client.post(self._token_url, data=form)
            except httpx.HTTPError as exc:
                raise ClientAuthenticationError(f"token endpoint: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise ClientAuthenticationError(
                    f"token endpoint answered {response.status_code}: {response.text[:200]}"
                )
            issued = response.json()
            token = AccessToken(
                issued["access_token"], int(time.time()) + int(issued["expires_in"])
            )
            self._tokens[scope] = token
            return token

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> SimulatorCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def simulator_token_url(settings: Settings) -> str:
    """The simulated tenant's token endpoint, on the host that serves its Graph."""
    parts = urlsplit(str(settings.graph_base_url))
    tenant = (
        settings.exchange_tenant
        or settings.notification_tenant_id
        or settings.auth_tenant_id
        or "organizations"
    )
    return f"{parts.scheme}://{parts.netloc}/{tenant}/oauth2/v2.0/token"


def build_credential(settings: Settings) -> AsyncTokenCredential:
    if settings.credential is CredentialKind.SIMULATOR:
        # The deployment package leaves the simulated tenant out (.funcignore): a fixed token
        # has nothing to talk to there, so the setting is a mistake, not a fallback.
        if importlib.util.find_spec("shared.simulator") is None:
            raise ConfigError(
                "RESPONDER_CREDENTIAL=simulator needs the simulated tenant (shared/simulator), "
                "which this package does not contain; use managed_identity in Azure"
            )
        assert settings.simulator_token is not None  # guaranteed by Settings validation
        # The identity platform is not Graph: GRAPH_TIMEOUT_SECONDS does not bound it.
        return SimulatorCredential(
            simulator_token_url(settings), settings.simulator_token.get_secret_value()
        )
    # azure-identity (with msal and requests) is imported only for the kinds that use it.
    from azure.identity.aio import (
        AzureCliCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
    )

    if settings.credential is CredentialKind.AZURE_CLI:
        # An engineer of a service provider is signed in to many tenants: ask for the
        # customer's, the one whose tokens the app accepts.
        return AzureCliCredential(tenant_id=settings.auth_tenant_id or "")
    if settings.credential is CredentialKind.DEFAULT:
        return DefaultAzureCredential()
    return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
