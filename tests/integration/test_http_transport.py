"""The httpx clients' aiohttp transport against a real socket: requests leave exactly as httpx
built them, answers come back as httpx would have read them, and aiohttp's errors arrive as
the httpx errors the adapters map to transient ones (docs/performance.md)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from drill.azurite import Azurite
from shared.adapters.http_transport import AiohttpTransport, http_client
from shared.container import Container
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, settings_for

pytestmark = pytest.mark.integration

Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A socket server that hands each request's head and body to `handler`."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.heads: list[bytes] = []
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        assert self.handler is not None
        await self.handler(head, body, writer)
        writer.close()


@pytest.fixture
async def server(no_proxy_settings: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    state = Server()
    listener = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield state


def answer(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_request_leaves_as_httpx_built_it_and_its_answer_is_read_as_httpx_would(
    server: Server,
) -> None:
    seen: list[bytes] = []

    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        seen.append(body)
        payload = gzip.compress(json.dumps({"accountEnabled": False}).encode())
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("request-id", "a"),
            ("Link", "<one>"),
            ("Link", "<two>"),
        ]
        writer.write(answer("201 Created", headers, payload))
        await writer.drain()

    server.handler = handler
    # A path and query as Graph URLs carry them: a quoted key and an encoded $select.
    path = "/users('adele%40contoso.com')?%24select=id,displayName&%24filter=a%20eq%20%27b%27"
    async with http_client(5.0) as client:
        response = await client.patch(
            f"{server.url}{path}",
            json={"accountEnabled": False},
            headers={"Authorization": "Bearer token", "client-request-id": "c-1"},
        )
    assert response.status_code == 201 and response.reason_phrase == "Created"
    assert response.json() == {"accountEnabled": False}, "the gzip body is decoded once"
    assert response.headers.get_list("link") == ["<one>", "<two>"]
    assert response.headers["request-id"] == "a"
    [head] = server.heads
    request_line, *header_lines = head.decode().rstrip("\r\n").split("\r\n")
    assert request_line == f"PATCH {path} HTTP/1.1", "the URL is sent exactly as encoded"
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert headers["Authorization"] == "Bearer token"
    assert headers["client-request-id"] == "c-1"
    assert headers["Content-Type"] == "application/json"
    assert seen == [b'{"accountEnabled":false}']


async def test_a_slow_answer_is_an_httpx_read_timeout(server: Server) -> None:
    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)

    server.handler = handler
    async with http_client(0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{server.url}/slow")


async def test_a_connection_closed_without_an_answer_is_an_httpx_read_error(
    server: Server,
) -> None:
    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        return None  # the connection is closed unanswered

    server.handler = handler
    async with http_client(5.0) as client:
        with pytest.raises(httpx.ReadError):
            await client.get(f"{server.url}/dropped")


async def test_a_port_nobody_listens_on_is_an_httpx_connect_error(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with http_client(5.0) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_proxy_in_the_environment_carries_the_requests(
    server: Server, no_proxy_settings: pytest.MonkeyPatch
) -> None:
    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer("204 No Content", [], b""))
        await writer.drain()

    server.handler = handler
    target = "http://graph.invalid/v1.0/users"
    no_proxy_settings.setenv("HTTP_PROXY", server.url)
    async with http_client(5.0) as client:
        assert (await client.get(target)).status_code == 204
    assert server.heads[0].startswith(f"GET {target} HTTP/1.1".encode())

    no_proxy_settings.delenv("HTTP_PROXY")
    async with http_client(5.0) as client:
        assert (await client.get(f"{server.url}/direct")).status_code == 204
    assert server.heads[1].startswith(b"GET /direct HTTP/1.1"), "no proxy: straight there"


async def test_a_request_after_the_client_closed_fails_and_opens_nothing(server: Server) -> None:
    async def handler(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer("204 No Content", [], b""))
        await writer.drain()

    server.handler = handler
    transport = AiohttpTransport()
    request = httpx.Request("GET", f"{server.url}/late", extensions={"timeout": {}})
    assert (await transport.handle_async_request(request)).status_code == 204
    await transport.aclose()
    # A request already past its client's closed check when the client closed.
    with pytest.raises(httpx.ConnectError, match="closed"):
        await transport.handle_async_request(request)
    assert len(server.heads) == 1


def test_each_event_loop_gets_a_session_of_its_own(no_proxy_settings: pytest.MonkeyPatch) -> None:
    """A session's timers and connections belong to the loop it was opened in; reused from
    another loop it would wait forever. The second loop's request opens its own."""

    async def serve_once() -> int:
        received: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer("204 No Content", [], b""))
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/"
        async with listener:
            request = httpx.Request("GET", url, extensions={"timeout": {"read": 5.0}})
            status = (await transport.handle_async_request(request)).status_code
        return status

    transport = AiohttpTransport()
    assert asyncio.run(serve_once()) == 204
    assert asyncio.run(serve_once()) == 204
    asyncio.run(transport.aclose())


async def test_closing_the_container_closes_the_graph_clients_connections(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    """The Graph SDK wraps the client's transport in its own, whose close does not reach the
    transport underneath: the container closes that one itself."""
    services = Container(settings_for(sim, azurite))
    await services.graph.get_user(ADELE.id)
    session = services.graph_transport._session
    assert session is not None and not session.closed
    await services.close()
    assert session.closed
