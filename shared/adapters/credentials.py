"""The token credential: the app's managed identity in Azure, an engineer's own sign-in for the
command line on a laptop, a fixed token for the simulator."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import (
    AzureCliCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

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
        return StaticTokenCredential(settings.simulator_token.get_secret_value())
    if settings.credential is CredentialKind.AZURE_CLI:
        # An engineer of a service provider is signed in to many tenants: ask for the
        # customer's, the one whose tokens the app accepts.
        return AzureCliCredential(tenant_id=settings.auth_tenant_id or "")
    if settings.credential is CredentialKind.DEFAULT:
        return DefaultAzureCredential()
    return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
