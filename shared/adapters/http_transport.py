"""The httpx clients of the Graph, Exchange and token adapters send their requests through
aiohttp, the HTTP client the storage SDKs load anyway.

httpx's own transport (httpcore, with h11, anyio and the HTTP/2 stack it imports whenever h2
is installed, which msgraph-sdk requires) costs about 0.8 ms more CPU per request than aiohttp
on the development machine, and about 0.15 s of imports in a fresh process
(docs/performance.md). The clients keep httpx's interface, which msgraph-sdk's request adapter
and its middleware (retries, redirects, headers inspection) are written against; only the
wire underneath changes:

- HTTP/1.1 with keep-alive, as before (the clients never asked for HTTP/2).
- Bodies are handed over as the server sent them (aiohttp decompresses nothing), so httpx
  decodes `Content-Encoding` exactly as it did.
- httpx's timeouts apply: connect (waiting for a pooled connection included) and read.
- aiohttp's errors become httpx's (`ConnectTimeout`, `ReadTimeout`, `ConnectError`,
  `ReadError`), which the adapters already map to transient errors.
- Proxies: read from the environment once, when the transport is built, like the storage
  clients (`proxy_settings`): with `HTTPS_PROXY` or another proxy variable set, every request
  looks up its proxy and `NO_PROXY`; without one, none does.
- TLS is verified against the system's trust store, as for the storage clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
import httpx
from yarl import URL

from shared.adapters.proxy_settings import proxy_configured


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, opened with the first request (inside the
    event loop that uses it) and closed with the client."""

    def __init__(self) -> None:
        self._trust_env = proxy_configured()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def _open(self, request: httpx.Request) -> aiohttp.ClientSession:
        if self._closed:
            # A request that passed its client's check before the client was closed: it fails
            # like an unreachable service rather than open a session nobody closes.
            raise httpx.ConnectError("the HTTP client was closed", request=request)
        # A session serves the event loop it was opened in; another loop gets its own.
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            self._loop = loop
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                trust_env=self._trust_env,
                # The request carries httpx's headers; aiohttp adds none of its own defaults.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        connect, read = timeouts.get("connect"), timeouts.get("read")
        pool = timeouts.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None and pool is None else (connect or 0) + (pool or 0),
            sock_connect=connect,
            sock_read=read,
        )
        body = await request.aread()
        try:
            async with self._open(request).request(
                request.method,
                # As httpx encoded it: aiohttp would otherwise normalise the quoting again.
                URL(str(request.url), encoded=True),
                headers=_text(request.headers.raw),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            ) as answer:
                content = await answer.read()
                headers = _text(answer.raw_headers)
                status, reason = answer.status, answer.reason or ""
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(_describe(exc), request=request) from exc
        except TimeoutError as exc:  # aiohttp.ServerTimeoutError is one too
            raise httpx.ReadTimeout(_describe(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(_describe(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(_describe(exc), request=request) from exc
        # A stream, not `content`: httpx adds no headers of its own, and decodes the body as
        # the client reads it.
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason.encode("latin-1")},
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _text(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def http_client(
    timeout_s: float, transport: AiohttpTransport | None = None, **options: Any
) -> httpx.AsyncClient:
    """An httpx client over `transport` (a new `AiohttpTransport` unless given). httpx reads no
    environment itself: the transport decides about proxies, and a client that read them too
    would route around it."""
    return httpx.AsyncClient(
        timeout=timeout_s, transport=transport or AiohttpTransport(), trust_env=False, **options
    )
