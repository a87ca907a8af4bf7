"""Storage clients and the environment's proxy settings: read once when a client is built. A
proxy configured in the environment still carries every storage request; without one, the
clients do not look it up again per request (docs/performance.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from drill.azurite import Azurite
from shared.adapters.proxy_settings import storage_client_options
from shared.adapters.table_service import table_service
from shared.simulator import SimulatedTenant
from tests.conftest import settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A proxy that records each request line and answers 404 (not retried by the SDK)."""
    lines: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0].decode())
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", lines


def test_the_environment_is_read_per_request_only_when_a_proxy_is_set(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    assert storage_client_options() == {"use_env_settings": False}
    no_proxy_settings.setenv("NO_PROXY", "localhost")
    assert storage_client_options() == {"use_env_settings": False}, "NO_PROXY is no proxy"
    no_proxy_settings.setenv("https_proxy", "http://proxy.contoso.com:3128")
    assert storage_client_options() == {"use_env_settings": True}


async def test_a_proxy_in_the_environment_carries_the_storage_requests(
    no_proxy_settings: pytest.MonkeyPatch,
    proxy: tuple[str, list[str]],
    sim: SimulatedTenant,
    azurite: Azurite,
) -> None:
    address, lines = proxy
    settings = settings_for(sim, azurite)
    table_name = settings.state_table
    no_proxy_settings.setenv("HTTP_PROXY", address)
    async with table_service(settings, None) as service:
        with pytest.raises(HttpResponseError):  # the proxy's 404
            await service.get_table_client(table_name).get_entity("p", "r")
    [line] = lines
    # A proxied request names the whole URL (absolute form), the service's host included.
    assert line.startswith("GET http://127.0.0.1:") and table_name in line

    no_proxy_settings.delenv("HTTP_PROXY")
    async with table_service(settings, None) as service:
        with pytest.raises(ResourceNotFoundError):  # the table does not exist: Azurite says so
            await service.get_table_client(table_name).get_entity("p", "r")
    assert len(lines) == 1, "without a proxy, the request went straight to the service"
