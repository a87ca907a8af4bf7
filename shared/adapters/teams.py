"""Teams notices through a Workflows webhook: the "Post to a channel when a webhook request is
received" flow takes an HTTP POST of a message with an Adaptive Card attachment and posts the
card in its channel. The URL carries its own authorization (the `sig` query parameter), so it
is a secret: it never appears in a log line or an error. Office 365 connectors (incoming
webhooks on webhook.office.com) are retired; only Workflows hosts are accepted (settings)."""

from __future__ import annotations

from typing import Any

import httpx

from shared.adapters.http_transport import http_client
from shared.adapters.rest import raise_for
from shared.errors import TransientError


class TeamsWorkflow:
    """`TeamsChannel` posting to one Workflows webhook URL."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._url = url
        self._client = http_client(timeout_s)
        self.posted = 0

    async def post(self, card: dict[str, Any]) -> None:
        try:
            response = await self._client.post(self._url, json=card)
        except httpx.TimeoutException as exc:
            raise TransientError("Teams workflow webhook: timed out") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"Teams workflow webhook: {type(exc).__name__}") from exc
        raise_for(response, "Teams workflow webhook")
        self.posted += 1

    async def close(self) -> None:
        await self._client.aclose()
