"""Exchange Online transport rules through the admin REST endpoint behind Exchange Online
PowerShell v3 (`POST {base}/adminapi/beta/{tenant}/InvokeCommand`).

The endpoint is not officially documented and may change, so it stays behind this one adapter
(the `TransportRules` port). Permission: the Office 365 Exchange Online application permission
`Exchange.ManageAsApp`, plus an Exchange role for the app that holds transport rule management
(the "Transport Rules" management role in a custom role group; Exchange Administrator works
but is broader).
"""

from __future__ import annotations

import logging
import re
from typing import Any, NoReturn

import httpx
from azure.core.credentials_async import AsyncTokenCredential

from shared.errors import PermanentError, TransientError
from shared.ports import TransportRule

logger = logging.getLogger(__name__)

EXCHANGE_SCOPE = "https://outlook.office365.com/.default"
REJECT_STATUS_CODE = "5.7.1"
# Reasons in `details` start with "ExNNNNNN|exception type|".
_EXCEPTION_PREFIX = re.compile(r"^Ex[0-9A-Fa-f]+\|[^|]*\|")
REJECT_REASON = "Delivery from this address is blocked by the organization's incident response."


class ExchangeAdmin:
    """`TransportRules` over InvokeCommand. `calls` counts the cmdlets sent, for drills and
    benchmarks."""

    def __init__(
        self,
        base_url: str,
        tenant: str,
        credential: AsyncTokenCredential,
        timeout_s: float,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/adminapi/beta/{tenant}/InvokeCommand"
        self._credential = credential
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self.calls = 0

    async def invoke(self, cmdlet: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one cmdlet; returns the objects it produced (all pages)."""
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        url: str | None = self._url
        results: list[dict[str, Any]] = []
        while url is not None:
            token = await self._credential.get_token(EXCHANGE_SCOPE)
            self.calls += 1
            try:
                response = await self._client.post(
                    url, json=body, headers={"Authorization": f"Bearer {token.token}"}
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise TransientError(f"{cmdlet}: {type(exc).__name__}") from exc
            if response.status_code >= 400:
                _raise_typed(cmdlet, response)
            page = _json(cmdlet, response)
            results.extend(item for item in page.get("value", []) if isinstance(item, dict))
            next_link = page.get("@odata.nextLink")
            url = next_link if isinstance(next_link, str) else None
        return results

    async def list_rules(self) -> list[TransportRule]:
        return [_rule(item) for item in await self.invoke("Get-TransportRule", {})]

    async def get_rule(self, name: str) -> TransportRule | None:
        try:
            found = await self.invoke("Get-TransportRule", {"Identity": name})
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return _rule(found[0]) if found else None

    async def create_rule(
        self, name: str, ranges: list[str], comments: str, mode: str, reject: bool
    ) -> None:
        parameters: dict[str, Any] = {
            "Name": name,
            "Comments": comments,
            "SenderIpRanges": ranges,
            "Mode": mode,
            "StopRuleProcessing": True,
            # First, so that no earlier rule that stops processing lets attackers through.
            "Priority": 0,
            **_action(reject),
        }
        await self.invoke("New-TransportRule", parameters)

    async def set_ranges(self, name: str, ranges: list[str], mode: str, reject: bool) -> None:
        """Replace the ranges, and re-assert the rule's action, mode and place in the order."""
        parameters: dict[str, Any] = {
            "Identity": name,
            "SenderIpRanges": ranges,
            "Mode": mode,
            "StopRuleProcessing": True,
            "Priority": 0,
            **_action(reject),
        }
        await self.invoke("Set-TransportRule", parameters)

    async def remove_rule(self, name: str) -> None:
        await self.invoke("Remove-TransportRule", {"Identity": name, "Confirm": False})

    async def close(self) -> None:
        await self._client.aclose()


def _action(reject: bool) -> dict[str, Any]:
    if reject:
        return {
            "RejectMessageEnhancedStatusCode": REJECT_STATUS_CODE,
            "RejectMessageReasonText": REJECT_REASON,
        }
    return {"DeleteMessage": True}


def _rule(item: dict[str, Any]) -> TransportRule:
    ranges = item.get("SenderIpRanges") or []
    return TransportRule(
        name=str(item.get("Name") or item.get("Identity") or ""),
        ranges=tuple(str(r) for r in ranges) if isinstance(ranges, list) else (),
        comments=str(item.get("Comments") or ""),
        mode=str(item.get("Mode") or ""),
        when_changed=str(item.get("WhenChanged") or ""),
    )


def _json(cmdlet: str, response: httpx.Response) -> dict[str, Any]:
    try:
        page = response.json()
    except ValueError as exc:
        raise TransientError(f"{cmdlet}: the endpoint returned invalid JSON") from exc
    if not isinstance(page, dict):
        raise TransientError(f"{cmdlet}: the endpoint returned a non-object")
    return page


def _raise_typed(cmdlet: str, response: httpx.Response) -> NoReturn:
    status = response.status_code
    request_id = response.headers.get("request-id")
    message = f"{cmdlet}: Exchange answered {status}: {_reason(response)}"
    if status == 429 or status >= 500:
        retry_after = response.headers.get("Retry-After")
        try:
            delay = float(retry_after) if retry_after else None
        except ValueError:
            delay = None
        raise TransientError(message, status=status, request_id=request_id, retry_after=delay)
    raise PermanentError(message, status=status, request_id=request_id)


def _reason(response: httpx.Response) -> str:
    """The useful part of an error. The top-level message is often just "Invalid Operation";
    the real reason is in `details[0].message`, after an `ExNNNNNN|exception type|` prefix, or
    else in `innererror.internalexception`."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return response.text[:300]
    if not isinstance(error, dict):
        return str(error)[:300]
    details = error.get("details")
    inner = error.get("innererror") or error.get("innerError") or {}
    internal = inner.get("internalexception") if isinstance(inner, dict) else None
    for candidate in (
        details[0].get("message") if isinstance(details, list) and details else None,
        internal.get("message") if isinstance(internal, dict) else None,
        error.get("message"),
    ):
        if isinstance(candidate, str) and candidate:
            return _EXCEPTION_PREFIX.sub("", candidate).strip()[:500]
    return "no reason given"
