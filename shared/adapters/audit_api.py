"""Reading an audit export from a deployed app's API (`GET /api/audit/export`), page by page,
following its `Link: <…>; rel="next"` headers: for an auditor who holds the `Audit.Read` app
role but no access to the storage account.

The bearer token goes only to the origin it was given for: a next link to another scheme, host
or port is refused, and plain HTTP is accepted only to a loopback address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from shared.errors import InvalidInput

EXPORT_PATH = "/api/audit/export"
PAGE_TIMEOUT_S = 120.0
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)


class ApiRefused(Exception):
    """A page that cannot be read: the API answered with an error, or named a next page this
    client will not send the token to."""


def export_url(base_url: str, params: Mapping[str, str]) -> str:
    """The first page's address under `base_url` (the app's https origin)."""
    parts = urlsplit(base_url.strip())
    loopback = _is_loopback(parts.hostname or "")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise InvalidInput("--api must be an https:// address (http:// only to this machine)")
    if not parts.netloc:
        raise InvalidInput("--api must name the app, e.g. https://func-responder.azurewebsites.net")
    return f"{parts.scheme}://{parts.netloc}{EXPORT_PATH}?{urlencode(params)}"


def next_page(current: str, link: str | None) -> str | None:
    """The address a `Link` header names as next, resolved against the current page; None when
    there is none. A link leaving the current origin is refused."""
    if not link:
        return None
    found = _NEXT.search(link)
    if found is None:
        return None
    target = urljoin(current, str(found.group(1)))
    here, there = urlsplit(current), urlsplit(target)
    if (here.scheme, here.netloc) != (there.scheme, there.netloc):
        raise ApiRefused(
            f"the next page lies on another origin ({there.netloc[:80]}); not followed"
        )
    return target


async def export_pages(
    first: str, token: str, progress: Callable[[int, bool], None]
) -> AsyncIterator[str]:
    """The text of every page, in order; `progress` hears the records of each page and whether
    more follow."""
    headers = {"Authorization": f"Bearer {token}"}
    url: str | None = first
    async with httpx.AsyncClient(timeout=PAGE_TIMEOUT_S, follow_redirects=False) as http:
        while url is not None:
            response = await http.get(url, headers=headers)
            if response.status_code != 200:
                raise ApiRefused(f"the API answered {response.status_code}: {_detail(response)}")
            url = next_page(url, response.headers.get("Link"))
            progress(int(response.headers.get("X-Audit-Records", "0")), url is not None)
            yield response.text


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return " ".join(str(detail or response.reason_phrase).split())[:300]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
