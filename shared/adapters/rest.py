"""One JSON REST call with the app's bearer token, its failures typed for retry decisions:
throttling (429), server errors and timeouts are transient (with the service's Retry-After),
404 is "not found", anything else is permanent (a 403 is explained by the container's
`explain_refusals` wrapper where a manifest permission covers the call). Used by the notice adapters
(Graph sendMail and alert comments, Sentinel incident comments over ARM)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
from azure.core.credentials_async import AsyncTokenCredential

from shared.adapters.http_transport import http_client
from shared.errors import (
    ConfigError,
    NotFoundError,
    PermanentError,
    TransientError,
)

logger = logging.getLogger(__name__)

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form; the services send it that way)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def require_https(url: str, setting: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" and parts.hostname not in _LOOPBACK:
        # Bearer tokens must never travel in the clear; http is for the simulated tenant.
        raise ConfigError(f"{setting} must be an https URL")


def raise_for(response: httpx.Response, what: str) -> None:
    """Raise the typed error a failed answer stands for; return for a success."""
    status = response.status_code
    if status < 400:
        return
    request_id = response.headers.get("request-id") or response.headers.get("x-ms-request-id")
    code = _error_code(response)
    message = f"{what}: HTTP {status}{f' {code}' if code else ''}"
    if status == 429 or status >= 500:
        raise TransientError(
            message,
            status=status,
            request_id=request_id,
            retry_after=retry_after_s(response.headers.get("Retry-After")),
        )
    if status == 404:
        raise NotFoundError(message, status=status, request_id=request_id)
    raise PermanentError(message, status=status, request_id=request_id)


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code)[:80] if code else ""


class BearerJson:
    """JSON requests to one service with tokens for `scope`."""

    def __init__(self, credential: AsyncTokenCredential, scope: str, timeout_s: float) -> None:
        self._credential = credential
        self._scope = scope
        self._client = http_client(timeout_s)

    async def request(
        self, method: str, url: str, what: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        token = await self._credential.get_token(self._scope)
        try:
            response = await self._client.request(
                method, url, json=body, headers={"Authorization": f"Bearer {token.token}"}
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"{what}: timed out") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{what}: {type(exc).__name__}") from exc
        raise_for(response, what)
        return response

    async def close(self) -> None:
        await self._client.aclose()
