"""Builds the Table Storage client from settings: a connection string locally (Azurite), the
managed identity against the account's table endpoint in Azure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableServiceClient

from shared.config import Settings


def table_service(
    settings: Settings,
    credential: AsyncTokenCredential | None,
    response_hook: Callable[[Any], None] | None = None,
) -> TableServiceClient:
    """`response_hook`, when given, sees every HTTP response of every table client made from
    this service (the benchmark and a test count storage round trips with it)."""
    options: dict[str, Any] = {"raw_response_hook": response_hook} if response_hook else {}
    if settings.tables_connection is not None:
        return TableServiceClient.from_connection_string(
            settings.tables_connection.get_secret_value(), **options
        )
    if credential is None or settings.tables_endpoint is None:
        raise ValueError("a table endpoint needs a credential")
    return TableServiceClient(
        endpoint=str(settings.tables_endpoint), credential=credential, **options
    )


async def ensure_tables(service: TableServiceClient, *names: str) -> None:
    """Create the tables if missing. Only for local development: in Azure the deployment
    creates them, and the app's role cannot."""
    for name in names:
        try:
            await service.create_table(name)
        except ResourceExistsError:
            continue
