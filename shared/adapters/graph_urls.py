"""The URL of a msgraph-sdk request, expanded once from its request builder's template.

msgraph-sdk's request builders carry an RFC 6570 URL template, such as
`{+baseurl}/users/{user%2Did}{?%24expand,%24select}`, which `RequestInformation.url` expands
with std-uritemplate on every read: about 0.3 ms of CPU per Graph request on the development
machine, most of it percent-encoding one character at a time (docs/performance.md). The
templates the builders generate use three kinds of expression only: `{+name}` (reserved
expansion, the base URL), `{name}` (simple expansion, path segments such as an object id) and
`{?a,b,c}` (form-style query). Those are expanded here with `urllib.parse.quote`, to the same
text std-uritemplate gives (tests/unit/test_graph_urls.py compares the two on the templates of
every builder the adapters call, with arbitrary values). Anything else (another operator, a
prefix or explode modifier, a value of another type, a `%` in a reserved expansion) is left to
std-uritemplate.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from kiota_abstractions.request_information import RequestInformation
from stduritemplate import StdUriTemplate

# What a reserved expansion (`{+name}`) leaves as it is in std-uritemplate: every ASCII character
# but the space and `%` (RFC 6570 would encode some, such as `<`; the expansion follows the
# library the SDK uses, not the RFC). Other characters are percent-encoded as UTF-8.
_RESERVED_KEPT = "".join(chr(c) for c in range(128) if chr(c) not in " %")
_EXPRESSION = re.compile(r"\{([^{}]*)\}")
# A variable name (RFC 6570 section 2.3) without modifiers.
_NAME = re.compile(r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})+(?:\.(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})+)*")
# Literal text kept as it is: what the generated templates hold between expressions.
_LITERAL = re.compile(r"[A-Za-z0-9._~:/@!$&'()*+,;=-]*")

# A compiled template: literal text, or an expression (operator, variable names).
_Part = str | tuple[str, tuple[str, ...]]


class _Unsupported(Exception):
    """A value this module does not expand; std-uritemplate does."""


@functools.lru_cache(maxsize=512)
def _compiled(template: str) -> tuple[_Part, ...] | None:
    parts: list[_Part] = []
    at = 0
    for match in _EXPRESSION.finditer(template):
        parts.append(template[at : match.start()])
        body = match.group(1)
        operator = body[:1] if body[:1] in ("+", "?") else ""
        names = tuple(body[len(operator) :].split(","))
        if not all(_NAME.fullmatch(name) for name in names):
            return None
        if operator != "?" and len(names) != 1:
            return None
        parts.append((operator, names))
        at = match.end()
    parts.append(template[at:])
    if not all(isinstance(p, tuple) or _LITERAL.fullmatch(p) for p in parts):
        return None
    return tuple(p for p in parts if p)


def _text(value: Any, reserved: bool) -> str | None:
    """One value's expansion; None for an undefined value (None or an empty list: left out)."""
    if value is None:
        return None
    if isinstance(value, list):
        if not value:
            return None
        return ",".join(_item(item, reserved) for item in value)
    return _item(value, reserved)


def _item(value: Any, reserved: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise _Unsupported
    if reserved:
        if "%" in value:
            raise _Unsupported  # pct-encoded triplets pass through a reserved expansion
        return quote(value, safe=_RESERVED_KEPT)
    return quote(value, safe="")


def expand(template: str, values: Mapping[str, Any]) -> str:
    """`template` expanded with `values`, as std-uritemplate expands it."""
    compiled = _compiled(template)
    if compiled is not None:
        try:
            return _expanded(compiled, values)
        except _Unsupported:
            pass
    return str(StdUriTemplate.expand(template, dict(values)))


def _expanded(compiled: tuple[_Part, ...], values: Mapping[str, Any]) -> str:
    out: list[str] = []
    for part in compiled:
        if isinstance(part, str):
            out.append(part)
            continue
        operator, names = part
        if operator != "?":
            text = _text(values.get(names[0]), operator == "+")
            if text is not None:
                out.append(text)
            continue
        lead = "?"
        for name in names:
            text = _text(values.get(name), False)
            if text is not None:
                out.append(f"{lead}{name}={text}")
                lead = "&"
    return "".join(out)


def settle(request: RequestInformation, base_url: str) -> None:
    """Give `request` its URL once, expanded from its template with `base_url`, so the adapter
    and its middleware read a plain URL. The parameter dictionaries, which a request shares
    with its request builder, are replaced rather than cleared (setting the URL clears them):
    the builder stays usable. A request given a URL already keeps it."""
    if not (request.path_parameters or request.query_parameters):
        return  # a plain URL already (setting one cleared the parameters)
    if not request.url_template or RequestInformation.RAW_URL_KEY in request.path_parameters:
        url = request.url
    else:
        sanitized: Callable[[Any], Any] = request._get_sanitized_value
        values = {key: sanitized(value) for key, value in request.query_parameters.items()}
        values.update({key: sanitized(v) for key, v in request.path_parameters.items()})
        values["baseurl"] = base_url
        url = expand(request.url_template, values)
    request.path_parameters = {}
    request.query_parameters = {}
    request.url = url
