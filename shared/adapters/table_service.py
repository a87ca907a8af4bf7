"""Builds the Table Storage client from settings: a connection string locally (Azurite), the
managed identity against the account's table endpoint in Azure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import EdmType, EntityProperty
from azure.data.tables.aio import TableServiceClient

from shared.adapters.proxy_settings import storage_client_options
from shared.config import Settings


def table_service(
    settings: Settings,
    credential: AsyncTokenCredential | None,
    response_hook: Callable[[Any], None] | None = None,
) -> TableServiceClient:
    """`response_hook`, when given, sees every HTTP response of every table client made from
    this service (the benchmark and a test count storage round trips with it)."""
    options = storage_client_options()
    if response_hook:
        options["raw_response_hook"] = response_hook
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


def int64(value: int) -> EntityProperty:
    """An integer column that may exceed 32 bits (audit positions do): the SDK refuses a plain
    int beyond Int32 and hands Int64 columns back as `EntityProperty`, read with `as_int`."""
    return EntityProperty(value, EdmType.INT64)


def as_int(value: object) -> int:
    """An integer column as written by `int64` or as a plain Int32; 0 when absent."""
    if isinstance(value, EntityProperty):
        return int(value.value)
    return int(value) if isinstance(value, int | str) else 0
