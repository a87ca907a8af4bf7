"""Exchange Online transport rules through the admin REST endpoint behind Exchange Online
PowerShell v3 (`POST {base}/adminapi/beta/{tenant}/InvokeCommand`).

The endpoint is not officially documented and may change, so it stays behind this one adapter
(the `TransportRules` port). Permission: the Office 365 Exchange Online application permission
`Exchange.ManageAsApp`, plus an Exchange role for the app that holds transport rule management
(the "Transport Rules" management role in a custom role group; Exchange Administrator works
but is broader).

What live tenants do, and this adapter therefore assumes (sources in docs/fidelity.md):
- the HTTP status does not say what went wrong (mostly 400, also 403 and 500); the cmdlet's
  exception type in `error.details[]` or `error.innererror` does, so a missing rule is
  recognised by `ManagementObjectNotFoundException` whatever the status;
- a next link cannot be replayed ("Expired or Invalid pagination request"), so the whole
  result is asked for (`ResultSize: Unlimited`, `Prefer: odata.maxpagesize=1000`), and a read
  that still comes back truncated is a failed read, never a partial rule list;
- `@adminapi.warnings` carries what the cmdlet warned about; it is logged and kept for the
  action's outcome (`take_warnings`);
- throttling comes without Retry-After; a body that is not JSON at all is a real answer (403).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
from azure.core.credentials_async import AsyncTokenCredential

from shared.adapters.http_transport import http_client
from shared.errors import ConfigError, NotFoundError, PermanentError, TransientError
from shared.ports import TransportRule

logger = logging.getLogger(__name__)

EXCHANGE_SCOPE = "https://outlook.office365.com/.default"
REJECT_STATUS_CODE = "5.7.1"
REJECT_REASON = "Delivery from this address is blocked by the organization's incident response."
# The headers production users of the endpoint send (CIPP's New-ExoRequest): the largest page
# the service allows, and the routing anchor of the tenant's system mailbox.
PAGE_SIZE_PREFERENCE = "odata.maxpagesize=1000"
ANCHOR_MAILBOX = "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{tenant}"
NOT_FOUND_EXCEPTION = "ManagementObjectNotFoundException"
# A next link is followed at most this often before the read is given up as truncated.
MAX_PAGES = 5
# `details[].message` reads "|<exception type>|<text>", or "Ex6F9304|<exception type>|<text>".
_TYPED_DETAIL = re.compile(r"^(?:Ex[0-9A-Fa-f]+)?\|([^|]+)\|(.*)$", re.DOTALL)
_SNIPPET_CHARS = 200
_REASON_CHARS = 500


class CmdletFailed(PermanentError):
    """A cmdlet Exchange refused for good; `exception_type` is the cmdlet's exception (for
    example `Microsoft.Exchange.Management.Tasks.ValidationException`), None if not named."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        request_id: str | None,
        exception_type: str | None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.exception_type = exception_type


class RuleNotFound(CmdletFailed, NotFoundError):
    """The rule the cmdlet names does not exist (`ManagementObjectNotFoundException`)."""


class CmdletUnavailable(TransientError):
    """Throttled (429) or failing (5xx) without a cmdlet error that says retrying is futile."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        request_id: str | None,
        retry_after: float | None,
        exception_type: str | None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id, retry_after=retry_after)
        self.exception_type = exception_type


@dataclass
class CmdletResult:
    """What one cmdlet returned: its objects and the warnings Exchange attached."""

    value: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ExchangeAdmin:
    """`TransportRules` over InvokeCommand. `calls` counts the requests sent, for drills and
    benchmarks."""

    def __init__(
        self,
        base_url: str,
        tenant: str,
        credential: AsyncTokenCredential,
        timeout_s: float,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = urlsplit(base_url)
        if base.scheme != "https" and not _is_loopback(base.hostname):
            # The bearer token must never travel in the clear; plain http is for the local
            # simulated tenant only.
            raise ConfigError(f"EXCHANGE_BASE_URL must be an https URL, got {base_url!r}")
        self._url = f"{base_url.rstrip('/')}/adminapi/beta/{tenant}/InvokeCommand"
        self._anchor = ANCHOR_MAILBOX.format(tenant=tenant)
        self._credential = credential
        # `transport` replaces the network, for replaying recorded answers in tests.
        self._client = (
            http_client(timeout_s)
            if transport is None
            else httpx.AsyncClient(timeout=timeout_s, transport=transport)
        )
        self._warnings: list[str] = []
        self.calls = 0

    async def invoke(self, cmdlet: str, parameters: dict[str, Any]) -> CmdletResult:
        """Run one cmdlet and return everything it produced.

        A next link is only followed to this endpoint (same scheme, host, port and path), so
        the Exchange token never goes anywhere else; a result that stays truncated fails.
        """
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        result = CmdletResult()
        url = self._url
        for _ in range(MAX_PAGES):
            page = await self._post(cmdlet, url, body)
            result.value.extend(item for item in _list(page.get("value")) if isinstance(item, dict))
            for warning in _warnings(page.get("@adminapi.warnings")):
                logger.warning("Exchange warned about %s: %s", cmdlet, warning)
                result.warnings.append(warning)
                self._warnings.append(f"{cmdlet}: {warning}")
            next_link = page.get("@odata.nextLink")
            if not isinstance(next_link, str) or not next_link:
                return result
            if not self._is_own_link(next_link):
                raise PermanentError(
                    f"{cmdlet}: the result is truncated and its next page is on another "
                    f"endpoint ({_origin(next_link)}); not followed, and the partial result "
                    "is not used"
                )
            url = next_link
        raise PermanentError(
            f"{cmdlet}: the result is still truncated after {MAX_PAGES} pages; the partial "
            "result is not used"
        )

    async def _post(self, cmdlet: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
        token = await self._credential.get_token(EXCHANGE_SCOPE)
        self.calls += 1
        headers = {
            "Authorization": f"Bearer {token.token}",
            "Prefer": PAGE_SIZE_PREFERENCE,
            "X-AnchorMailbox": self._anchor,
        }
        try:
            response = await self._client.post(url, json=body, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientError(f"{cmdlet}: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            _raise_typed(cmdlet, response, following=url != self._url)
        return _json(cmdlet, response)

    def _is_own_link(self, link: str) -> bool:
        own, other = urlsplit(self._url), urlsplit(link)
        return (
            other.scheme == own.scheme
            and (other.hostname or "").lower() == (own.hostname or "").lower()
            and other.port == own.port
            and other.path == own.path
            and not other.username
            and not other.password
        )

    def take_warnings(self) -> list[str]:
        """The warnings of the cmdlets run since the last call, each prefixed with its cmdlet."""
        taken, self._warnings = self._warnings, []
        return taken

    async def list_rules(self) -> list[TransportRule]:
        found = await self.invoke("Get-TransportRule", {"ResultSize": "Unlimited"})
        return [_rule(item) for item in found.value]

    async def get_rule(self, name: str) -> TransportRule | None:
        try:
            found = await self.invoke("Get-TransportRule", {"Identity": name})
        except RuleNotFound:
            return None
        return _rule(found.value[0]) if found.value else None

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
        """Replace the ranges, and re-assert the rule's action, mode and place in the order.
        RuleNotFound if the rule is gone."""
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
        """RuleNotFound if the rule is already gone."""
        await self.invoke("Remove-TransportRule", {"Identity": name, "Confirm": False})

    async def close(self) -> None:
        await self._client.aclose()


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _origin(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _warnings(value: Any) -> list[str]:
    # Declared "#Collection(String)" and sent as an array; a lone string is taken as one.
    if isinstance(value, str):
        return [value] if value else []
    return [str(item) for item in _list(value) if item]


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


@dataclass(frozen=True)
class CmdletErrorBody:
    """What an InvokeCommand error body says: the cmdlet's exception types (from `details`,
    then `innererror.internalexception`) and its reason, without the `|type|` prefix."""

    exception_types: tuple[str, ...]
    reason: str | None
    is_json: bool

    @property
    def exception_type(self) -> str | None:
        return self.exception_types[0] if self.exception_types else None

    @property
    def not_found(self) -> bool:
        return any(t.rsplit(".", 1)[-1] == NOT_FOUND_EXCEPTION for t in self.exception_types)


def parse_error(content: bytes) -> CmdletErrorBody:
    """Read an error body of any shape; never raises."""
    try:
        decoded = json.loads(content)
    except ValueError:
        return CmdletErrorBody((), None, is_json=False)
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if not isinstance(error, dict):
        return CmdletErrorBody((), None, is_json=True)
    types: list[str] = []
    reasons: list[str] = []
    for detail in _list(error.get("details")):
        text = detail.get("message") if isinstance(detail, dict) else None
        if not isinstance(text, str):
            continue
        typed = _TYPED_DETAIL.match(text)
        if typed:
            types.append(typed.group(1).strip())
            text = typed.group(2)
        reasons.append(text.strip())
    inner = error.get("innererror") or error.get("innerError")
    internal = inner.get("internalexception") if isinstance(inner, dict) else None
    if isinstance(internal, dict):
        if isinstance(internal.get("type"), str) and internal["type"]:
            types.append(internal["type"])
        if isinstance(internal.get("message"), str):
            reasons.append(internal["message"].strip())
    if isinstance(error.get("message"), str):
        reasons.append(error["message"].strip())
    reason = next((r for r in reasons if r), None)
    return CmdletErrorBody(tuple(dict.fromkeys(types)), reason, is_json=True)


def _raise_typed(cmdlet: str, response: httpx.Response, following: bool) -> NoReturn:
    status = response.status_code
    request_id = response.headers.get("request-id")
    parsed = parse_error(response.content)
    if parsed.reason is not None:
        reason = parsed.reason[:_REASON_CHARS]
    elif not parsed.is_json:
        reason = (
            f"the body is not JSON ({len(response.content)} bytes); the usual cause is a "
            "missing Exchange.ManageAsApp grant or Exchange role for the app, or a cmdlet the "
            "endpoint does not offer"
        )
        snippet = _printable(response.text)
        reason += f": {snippet}" if snippet else ""
    else:
        reason = _printable(response.text) or "no reason given"
    page = " (following the result's next page)" if following else ""
    message = f"{cmdlet}: Exchange answered {status}{page}: {reason}"
    kind = parsed.exception_type
    if parsed.not_found:
        raise RuleNotFound(message, status=status, request_id=request_id, exception_type=kind)
    if status == 429 or status >= 500:
        raise CmdletUnavailable(
            message,
            status=status,
            request_id=request_id,
            retry_after=_seconds(response.headers.get("Retry-After")),
            exception_type=kind,
        )
    raise CmdletFailed(message, status=status, request_id=request_id, exception_type=kind)


def _seconds(retry_after: str | None) -> float | None:
    # Never seen on this endpoint; honoured should Exchange start sending it.
    try:
        return float(retry_after) if retry_after else None
    except ValueError:
        return None


def _printable(text: str) -> str:
    """A bounded, printable excerpt of a body (the live 403 is thousands of NUL bytes)."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return cleaned[:_SNIPPET_CHARS]
