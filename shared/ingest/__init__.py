"""Alert ingestion: `normalize` recognizes a payload's shape and turns it into `Alert`s;
docs/alert-formats.md describes the shapes and how they are told apart.

A shape is accepted on positive evidence only: a declared type, or properties that only that
shape has. Shapes that are recognized but carry nothing to act on here (Sentinel REST API
lists, Graph change notifications, Defender streaming records, incidents without their alerts)
and anything unrecognized are refused with `InvalidInput`, whose message names what was seen
and the shapes that are accepted. Every string is scrubbed of lone UTF-16 surrogates first.
"""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidInput
from shared.ingest._common import (
    JsonObject,
    optional_list,
    preview,
    require_list,
    require_object,
    scrub,
    type_name,
)
from shared.ingest.generic import generic_alert, is_generic, normalize_generic
from shared.ingest.graph_alerts import (
    graph_alert,
    incident_alerts,
    is_graph_alert,
    is_graph_incident,
    normalize_graph_alert,
    normalize_graph_alert_list,
    normalize_graph_incident,
)
from shared.ingest.sentinel import (
    is_sentinel_alert,
    is_sentinel_incident,
    normalize_sentinel,
    sentinel_alert,
)
from shared.models import Alert

__all__ = [
    "ACCEPTED_SHAPES",
    "normalize",
    "normalize_generic",
    "normalize_graph_alert",
    "normalize_graph_alert_list",
    "normalize_graph_incident",
    "normalize_sentinel",
]

ACCEPTED_SHAPES = (
    "a Graph alerts_v2 alert or list page; Graph incidents listed with $expand=alerts; "
    "a Sentinel incident or alert trigger body; Sentinel SecurityAlert rows (one row, a "
    '"value" list of rows, or a Log Analytics query result); a generic alert ("id" and '
    '"entities")'
)
_KEYS_SHOWN = 8
_NOTIFICATION_FIELDS = ("changeType", "lifecycleEvent", "clientState", "resourceData")
_STREAM_CATEGORIES = ("advancedhunting-",)


def normalize(payload: object) -> list[Alert]:
    """Normalize one payload into its alerts (a list page or an incident holds several, an empty
    page none). Raises InvalidInput, and nothing else, when the payload cannot be used."""
    body = require_object(scrub(payload), "alert payload")
    # Declared types and Sentinel's own field names first, then the generic format's markers,
    # then properties only one shape has, then containers of items.
    declared = body.get("@odata.type")
    if isinstance(declared, str) and is_graph_incident(body):
        return incident_alerts(body, "graph incident")
    if isinstance(declared, str) and is_graph_alert(body):
        return [graph_alert(body, "graph alert")]
    if is_sentinel_alert(body):
        return [sentinel_alert(body)]
    if is_generic(body):
        return [generic_alert(body)]
    if is_sentinel_incident(body):
        return [sentinel_alert(body)]
    if is_graph_incident(body):
        return incident_alerts(body, "graph incident")
    if is_graph_alert(body):
        return [graph_alert(body, "graph alert")]
    if "value" in body and "id" not in body:
        return _page(body)
    if "tables" in body:
        return _query_result(body)
    if "records" in body:
        return _records(body)
    raise InvalidInput(
        f"unrecognized alert payload: it is {_what(body)}; accepted: {ACCEPTED_SHAPES}"
    )


def _page(body: JsonObject) -> list[Alert]:
    """A `{"value": [...]}` list: Graph alerts, Graph incidents with their alerts, or
    SecurityAlert rows (the Logic App "Run query and list results" action); an empty page is
    valid and yields nothing."""
    items = require_list(body.get("value"), "list page: value")
    alerts: list[Alert] = []
    for index, raw in enumerate(items):
        label = f"list page: value[{index}]"
        item = require_object(raw, label)
        if is_graph_incident(item):
            alerts += incident_alerts(item, f"{label} (graph incident)")
        elif is_graph_alert(item):
            alerts.append(graph_alert(item, f"{label} (graph alert)"))
        elif is_sentinel_alert(item):
            alerts.append(sentinel_alert(item))
        else:
            raise InvalidInput(f"{label} is {_what(item)}; accepted: {ACCEPTED_SHAPES}")
    return alerts


def _query_result(body: JsonObject) -> list[Alert]:
    """A Log Analytics query API result: tables of named columns and rows of values."""
    alerts: list[Alert] = []
    for t, raw_table in enumerate(require_list(body.get("tables"), "query result: tables")):
        where = f"query result: tables[{t}]"
        table = require_object(raw_table, where)
        columns = []
        for c, column in enumerate(require_list(table.get("columns"), f"{where}: columns")):
            name = require_object(column, f"{where}: columns[{c}]").get("name")
            if not isinstance(name, str):
                raise InvalidInput(f"{where}: columns[{c}].name must be a string")
            columns.append(name)
        if "SystemAlertId" not in columns:
            raise InvalidInput(
                f"{where} has no SystemAlertId column: only SecurityAlert rows are accepted"
            )
        for r, raw_row in enumerate(optional_list(table.get("rows"), f"{where}: rows")):
            row = require_list(raw_row, f"{where}: rows[{r}]")
            if len(row) != len(columns):
                raise InvalidInput(
                    f"{where}: rows[{r}] has {len(row)} values for {len(columns)} columns"
                )
            alerts.append(sentinel_alert(dict(zip(columns, row, strict=True))))
    return alerts


def _records(body: JsonObject) -> list[Alert]:
    """A data export's `{"records": [...]}` of SecurityAlert rows."""
    alerts: list[Alert] = []
    for index, raw in enumerate(require_list(body.get("records"), "records")):
        label = f"records[{index}]"
        item = require_object(raw, label)
        if not is_sentinel_alert(item):
            raise InvalidInput(f"{label} is {_what(item)}; accepted: {ACCEPTED_SHAPES}")
        alerts.append(sentinel_alert(item))
    return alerts


def _what(item: JsonObject) -> str:
    """What an item that is not accepted looks like, for the refusal."""
    kind, entity_type = item.get("kind"), item.get("type")
    if isinstance(item.get("properties"), dict) and (
        _names_sentinel(kind) or _names_sentinel(entity_type)
    ):
        return (
            "a Sentinel REST API resource (kind "
            f"{preview(kind) if isinstance(kind, str) else type_name(kind)}), which carries no "
            "entities: send the automation rule's incident or alert trigger body instead"
        )
    if "subscriptionId" in item and any(name in item for name in _NOTIFICATION_FIELDS):
        return "a Graph change notification: these go to /api/notifications, not the alert webhook"
    category = item.get("category")
    if isinstance(category, str) and category.lower().startswith(_STREAM_CATEGORIES):
        return (
            "a Defender XDR streaming record: these arrive through the Event Hub trigger, "
            "not the alert webhook"
        )
    return f"not a recognized alert ({_keys(item)})"


def _names_sentinel(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    lowered = value.lower()
    return lowered in ("securityalert", "incident") or "microsoft.securityinsights" in lowered


def _keys(body: JsonObject) -> str:
    keys = sorted(preview(key) if isinstance(key, str) else type_name(key) for key in body)
    shown = ", ".join(keys[:_KEYS_SHOWN]) + (", ..." if len(keys) > _KEYS_SHOWN else "")
    return f"got keys: {shown or 'none'}"
