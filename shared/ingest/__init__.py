"""Alert ingestion: `normalize` recognizes a payload's shape (Graph security alert or list page,
Sentinel incident or alert, generic alert) and turns it into `Alert`s; docs/alert-formats.md
describes the shapes and how they are told apart."""

from __future__ import annotations

from shared.errors import InvalidInput
from shared.ingest._common import JsonObject, preview, require_object, type_name
from shared.ingest.generic import is_generic, normalize_generic
from shared.ingest.graph_alerts import (
    is_graph_alert,
    looks_like_graph_alert,
    normalize_graph_alert,
    normalize_graph_alert_list,
)
from shared.ingest.sentinel import is_sentinel_alert, is_sentinel_incident, normalize_sentinel
from shared.models import Alert

__all__ = [
    "normalize",
    "normalize_generic",
    "normalize_graph_alert",
    "normalize_graph_alert_list",
    "normalize_sentinel",
]

_KEYS_SHOWN = 8


def normalize(payload: object) -> list[Alert]:
    """Normalize one payload into its alerts (a Graph list page holds many, may hold none).

    Raises InvalidInput, and nothing else, when the payload cannot be understood.
    """
    body = require_object(payload, "alert payload")
    # Explicit markers come first, then the fields each shape is known by.
    if is_graph_alert(body):
        return [normalize_graph_alert(body)]
    if is_sentinel_alert(body):
        return [normalize_sentinel(body)]
    if is_generic(body):
        return [normalize_generic(body)]
    if is_sentinel_incident(body):
        return [normalize_sentinel(body)]
    if _is_graph_list(body):
        return normalize_graph_alert_list(body)
    if looks_like_graph_alert(body):
        return [normalize_graph_alert(body)]
    raise InvalidInput(_unrecognized(body))


def _is_graph_list(body: JsonObject) -> bool:
    return isinstance(body.get("value"), list) and "id" not in body


def _unrecognized(body: JsonObject) -> str:
    keys = sorted(preview(key) if isinstance(key, str) else type_name(key) for key in body)
    shown = ", ".join(keys[:_KEYS_SHOWN]) + (", ..." if len(keys) > _KEYS_SHOWN else "")
    return (
        "unrecognized alert payload: expected a Graph security alert (@odata.type or evidence),"
        ' a Graph list ("value" array), a Sentinel incident ("object") or alert'
        ' ("SystemAlertId"), or a generic alert ("id" and "entities"); '
        f"got keys: {shown or 'none'}"
    )
