"""What the app's own access tokens say it may do, and refusals explained with it.

An app-only token from Entra carries the application permissions granted to the identity on
that resource (`roles`) and its directory roles (`wids`). Reading them needs no permission at
all, unlike listing the service principal's app role assignments (Application.Read.All), and
it shows exactly what the services will enforce. A token is cached by the identity platform
for up to 24 hours, so a grant made a moment ago may only appear in the next token.

`explain_refusals` wraps an adapter so that a 401/403 names the application permission the
token lacks for the operation that failed (from the permission manifest), or the Exchange role.
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

from azure.core.credentials_async import AsyncTokenCredential

from shared.errors import MissingPermission, PermanentError
from shared.permissions import EXCHANGE_AUDIENCE, GRANT_SCRIPT, manifest

T = TypeVar("T")


class TokenGrants:
    def __init__(self, credential: AsyncTokenCredential) -> None:
        self._credential = credential

    async def claims(self, audience: str) -> dict[str, Any] | None:
        """The claims of the app's current token for `audience`; None when the token is not a
        JWT. Only read, never trusted for anything but this report: the token came from the
        identity platform, and the services check it themselves."""
        token = await self._credential.get_token(f"{audience}/.default")
        parts = token.token.split(".")
        if len(parts) != 3:
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None

    async def roles(self, audience: str) -> frozenset[str] | None:
        claims = await self.claims(audience)
        if claims is None:
            return None
        roles = claims.get("roles", [])
        return (
            frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else None
        )

    async def directory_roles(self, audience: str) -> frozenset[str] | None:
        """The directory role template ids (`wids`) the token names."""
        claims = await self.claims(audience)
        if claims is None:
            return None
        wids = claims.get("wids", [])
        return (
            frozenset(w.lower() for w in wids if isinstance(w, str))
            if isinstance(wids, list)
            else None
        )


class _Explainer:
    def __init__(self, grants: TokenGrants, audience: str, adapter: str) -> None:
        self._grants = grants
        self._audience = audience
        self._adapter = adapter

    async def explain(self, exc: PermanentError, operation: str) -> PermanentError:
        if exc.status not in (401, 403) or isinstance(exc, MissingPermission):
            return exc
        on_audience = manifest().for_audience(self._audience)
        needed = [p for p in on_audience if f"{self._adapter}.{operation}" in p.used_by]
        if not needed:
            # A method built on others (ExchangeAdmin.create_rule on invoke): whatever the
            # adapter needs.
            prefix = f"{self._adapter}."
            needed = [p for p in on_audience if any(u.startswith(prefix) for u in p.used_by)]
        try:
            held = await self._grants.roles(self._audience)
        except Exception:  # noqa: BLE001 - explaining must never hide the original error
            held = None
        missing = [p for p in needed if held is None or p.name not in held]
        if missing:
            names = ", ".join(p.name for p in missing)
            known = "" if held is not None else " (the token's roles could not be read)"
            message = (
                f"{exc} - missing application permission {names}{known}: "
                f"{missing[0].why}. Grant it with {GRANT_SCRIPT} (see `responder doctor`); "
                "not retried"
            )
            return MissingPermission(message, status=exc.status, request_id=exc.request_id)
        if self._audience == EXCHANGE_AUDIENCE:
            role = manifest().exchange_role
            message = (
                f"{exc} - the app holds Exchange.ManageAsApp but no Exchange role that covers "
                f'this cmdlet: assign the "{role.name}" role ({role.fix}); not retried'
            )
            return MissingPermission(message, status=exc.status, request_id=exc.request_id)
        return exc


def explain_refusals(adapter: T, grants: TokenGrants, audience: str) -> T:
    """`adapter` with every coroutine (and async generator) method wrapped: a PermanentError
    401/403 comes back as a MissingPermission naming what the token lacks, when it lacks
    something the manifest says the method needs."""
    explainer = _Explainer(grants, audience, type(adapter).__name__)
    return cast(T, _Explained(adapter, explainer))


class _Explained:
    def __init__(self, adapter: Any, explainer: _Explainer) -> None:
        self._adapter = adapter
        self._explainer = explainer

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._adapter, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        if inspect.isasyncgenfunction(attribute):
            return self._generator(attribute, name)
        if inspect.iscoroutinefunction(attribute):
            return self._coroutine(attribute, name)
        return attribute

    def _coroutine(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            except PermanentError as exc:
                raise await self._explainer.explain(exc, name) from exc

        return call

    def _generator(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            try:
                async for item in method(*args, **kwargs):
                    yield item
            except PermanentError as exc:
                raise await self._explainer.explain(exc, name) from exc

        return call
