"""Field readers the normalizers share: each checks a JSON value's type and, when it is wrong,
raises `InvalidInput` naming where the value sits, so bad payloads never leak other exceptions."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import InvalidInput
from shared.models import Severity

JsonObject = dict[str, Any]
M = TypeVar("M", bound=BaseModel)

# Graph and Sentinel send .NET ticks (7 fractional digits); trimming to microseconds here keeps
# parsing independent of how lenient the running Python's fromisoformat happens to be.
_EXCESS_FRACTION = re.compile(r"(\.\d{6})\d+")
_PREVIEW_CHARS = 60
_MAX_ERRORS_SHOWN = 3
# A lone UTF-16 surrogate is valid in JSON ("\\ud800") but cannot be encoded as UTF-8, which
# every store and queue the responder writes to needs; it is replaced like any undecodable text.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def scrub_text(text: str) -> str:
    """A text with every lone surrogate replaced by U+FFFD (valid pairs are already combined by
    the JSON decoder, so any surrogate left in a Python string is a lone one)."""
    if text.isascii():
        return text
    return _LONE_SURROGATE.sub(REPLACEMENT, text)


def scrub(payload: Any) -> Any:
    """A copy of a decoded JSON value with lone surrogates replaced in every key and string,
    walked without recursion (payloads may nest deeper than Python's recursion limit). Values
    that are not JSON types are kept as they are, for the normalizers to refuse by type. A
    payload without lone surrogates, the usual case, is returned as it is, uncopied."""
    if not _has_lone_surrogate(payload):
        return payload
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(payload, root, 0)]
    # Containers copied so far: Python callers may pass shared or cyclic structures.
    copies: dict[int, Any] = {}
    while stack:
        value, parent, slot = stack.pop()
        if isinstance(value, dict | list) and id(value) in copies:
            parent[slot] = copies[id(value)]
        elif isinstance(value, str):
            parent[slot] = scrub_text(value)
        elif isinstance(value, dict):
            copy: dict[Any, Any] = {}
            for key, item in value.items():
                clean_key = scrub_text(key) if isinstance(key, str) else key
                copy[clean_key] = None
                stack.append((item, copy, clean_key))
            parent[slot] = copies[id(value)] = copy
        elif isinstance(value, list):
            items: list[Any] = [None] * len(value)
            stack.extend((item, items, index) for index, item in enumerate(value))
            parent[slot] = copies[id(value)] = items
        else:
            parent[slot] = value
    return root[0]


def _has_lone_surrogate(payload: Any) -> bool:
    # Serializing in C finds one fastest: UTF-8 cannot encode a lone surrogate.
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (TypeError, ValueError, RecursionError):
        # Not plain JSON (Python callers): walk it.
        return _walk_has_lone_surrogate(payload)
    return False


def _walk_has_lone_surrogate(payload: Any) -> bool:
    stack = [payload]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            if isinstance(value, dict):
                stack.extend(key for key in value if isinstance(key, str))
                stack.extend(value.values())
            else:
                stack.extend(value)
    return False


def type_name(value: object) -> str:
    """The JSON name of a value's type; messages name types rather than echo payload values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def preview(text: str) -> str:
    """A short quoted form of a text for messages, so a huge id cannot bloat a log line."""
    if len(text) <= _PREVIEW_CHARS:
        return repr(text)
    return repr(text[:_PREVIEW_CHARS]) + "..."


def require_object(value: object, where: str) -> JsonObject:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type_name(value)}")
    return value


def require_list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be an array, got {type_name(value)}")
    return value


def optional_object(value: object, where: str) -> JsonObject:
    """An object that may be missing or null (sparse payloads); missing reads as empty."""
    return {} if value is None else require_object(value, where)


def optional_list(value: object, where: str) -> list[Any]:
    return [] if value is None else require_list(value, where)


def optional_text(value: object, where: str) -> str | None:
    """A string field; integers are accepted too because older APIs send numeric ids."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:
            # Python refuses to render integers beyond its digit limit.
            raise InvalidInput(f"{where} is a number too large to be an id") from None
    raise InvalidInput(f"{where} must be a string, got {type_name(value)}")


def text(value: object, where: str) -> str:
    return optional_text(value, where) or ""


def identifier(value: object, where: str) -> str | None:
    """An id-like field (object id, UPN, address); blank counts as absent, as sparse data has it."""
    result = optional_text(value, where)
    return result if result and result.strip() else None


def require_id(value: object, where: str) -> str:
    result = identifier(value, where)
    if result is None:
        raise InvalidInput(f"{where} is missing")
    return result


def lower_text(value: object, where: str) -> str | None:
    result = optional_text(value, where)
    return None if result is None else result.lower()


def roles(value: object, where: str) -> tuple[str, ...]:
    """Evidence roles, lower-cased so Graph camelCase and PascalCase values compare equal."""
    items = optional_list(value, where)
    result: list[str] = []
    for index, role in enumerate(items):
        if not isinstance(role, str):
            raise InvalidInput(f"{where}[{index}] must be a string, got {type_name(role)}")
        result.append(role.lower())
    return tuple(result)


def severity(value: object) -> Severity:
    # Every source sends severities as strings; anything else is simply not a known severity.
    return Severity.parse(value if isinstance(value, str) else None)


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 date-time (Z, offsets, up to 7 fractional digits); naive means UTC,
    as the fields this reads are all UTC (`...DateTime` in Graph, `...TimeUtc` in Sentinel)."""
    parsed = datetime.fromisoformat(_EXCESS_FRACTION.sub(r"\1", value.strip(), count=1))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def timestamp(value: object, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be an ISO 8601 date-time string, got {type_name(value)}")
    try:
        return parse_timestamp(value)
    except ValueError:
        raise InvalidInput(f"{where} is not an ISO 8601 date-time: {preview(value)}") from None


def describe(error: ValidationError) -> str:
    """A one-line summary of a pydantic error: the first few field paths and their problems."""
    problems = [_problem(detail) for detail in error.errors(include_url=False)]
    shown = "; ".join(problems[:_MAX_ERRORS_SHOWN])
    hidden = len(problems) - _MAX_ERRORS_SHOWN
    return f"{shown} (and {hidden} more)" if hidden > 0 else shown


def _problem(detail: Any) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in detail["loc"])
    return f"{path.lstrip('.')}: {detail['msg']}" if path else detail["msg"]


def build(model: type[M], where: str, **fields: Any) -> M:
    """Construct a model, turning a pydantic ValidationError into InvalidInput."""
    try:
        return model(**fields)
    except ValidationError as error:
        raise InvalidInput(f"{where}: {describe(error)}") from error
