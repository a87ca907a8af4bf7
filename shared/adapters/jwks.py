"""The token signing keys an issuer publishes as a JSON Web Key Set, fetched over HTTP and cached.

For Microsoft Entra ID: `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`. The
endpoint is public; fetching it needs no permission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from shared.adapters.http_transport import http_client
from shared.errors import TransientError
from shared.identity import ALGORITHM, AuthError

logger = logging.getLogger(__name__)


class JwksKeys:
    """`SigningKeys` over HTTP. The key set is fetched on first use and again when a token names
    a key it lacks, at most once per `min_refresh_s` so that a flood of made-up key ids cannot
    hammer the endpoint; a set older than `max_age_s` is refreshed too, so that a key the issuer
    withdrew stops being accepted."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        min_refresh_s: float = 300.0,
        *,
        max_age_s: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._client = http_client(timeout_s)
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._keys: dict[str, RSAPublicKey] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._attempts = 0
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> Any:
        """The RSA public key with id `kid`.

        AuthError(401) when the issuer does not publish it; TransientError when the key set
        cannot be fetched and no usable copy is cached.
        """
        if kid in self._keys and not self._stale():
            return self._keys[kid]
        attempts_seen = self._attempts
        async with self._lock:
            # Callers queued behind a fetch use its outcome instead of fetching again.
            if self._attempts == attempts_seen and self._may_fetch():
                await self._refresh(keep_stale=kid in self._keys)
        found = self._keys.get(kid)
        if found is not None:
            return found
        if self._loaded_at is None:
            raise TransientError("the token signing keys could not be fetched")
        raise AuthError(401, "unknown signing key")

    async def published(self) -> int:
        """How many RSA signing keys the endpoint publishes now (a fresh read, for readiness)."""
        return len(await self._fetch())

    async def close(self) -> None:
        await self._client.aclose()

    def _stale(self) -> bool:
        return self._loaded_at is not None and self._clock() - self._loaded_at >= self._max_age_s

    def _may_fetch(self) -> bool:
        # Until a first fetch succeeds there is nothing to fall back on, so every (coalesced)
        # request may try; after that, attempts are spaced by min_refresh_s.
        if self._loaded_at is None or self._attempted_at is None:
            return True
        return self._clock() - self._attempted_at >= self._min_refresh_s

    async def _refresh(self, *, keep_stale: bool) -> None:
        self._attempts += 1
        self._attempted_at = self._clock()
        try:
            keys = await self._fetch()
        except TransientError as exc:
            if not keep_stale:
                raise
            # Tokens signed with a key already known keep working through an outage.
            logger.warning("Keeping the cached signing keys: %s", exc)
            return
        self._keys = keys
        self._loaded_at = self._attempted_at
        logger.info("Loaded %s token signing keys from %s", len(keys), self._url)

    async def _fetch(self) -> dict[str, RSAPublicKey]:
        try:
            response = await self._client.get(self._url, headers={"Accept": "application/json"})
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientError(f"signing keys: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise TransientError(
                f"signing keys: the endpoint answered {response.status_code}",
                status=response.status_code,
            )
        try:
            document = response.json()
        except ValueError as exc:
            raise TransientError("signing keys: the endpoint returned invalid JSON") from exc
        return signing_keys(document)


def signing_keys(document: Any) -> dict[str, RSAPublicKey]:
    """The RS256 signature keys of a JWKS document, by kid; other and malformed keys are left
    out. TransientError if the document is not a key set at all."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise TransientError("signing keys: the endpoint returned no key set")
    keys: dict[str, RSAPublicKey] = {}
    for entry in entries:
        key = _rsa_signing_key(entry)
        if key is not None:
            keys[entry["kid"]] = key
    return keys


def _rsa_signing_key(entry: Any) -> RSAPublicKey | None:
    if not isinstance(entry, dict):
        return None
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        return None
    if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
        return None
    if entry.get("alg", ALGORITHM) != ALGORITHM:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm=ALGORITHM).key
    except (jwt.PyJWTError, TypeError, ValueError):
        logger.warning("Skipping signing key %s: not a valid RSA key", kid)
        return None
    # A published private key is a broken key set, not something to verify with.
    return key if isinstance(key, RSAPublicKey) else None
