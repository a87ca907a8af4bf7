"""Microsoft Sentinel payloads to `Alert`s: incidents (automation rule or Logic App incident
trigger, `object.properties`), alerts (Logic App alert trigger, `SystemAlertId` with
`AlertDisplayName` and `Severity`) and `SecurityAlert` table rows (a Log Analytics query or a
data export, `SystemAlertId` with `AlertName`/`DisplayName` and `AlertSeverity`)."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidInput
from shared.ingest._common import (
    JsonObject,
    build,
    identifier,
    optional_list,
    optional_object,
    optional_text,
    preview,
    require_id,
    require_object,
    scrub,
    severity,
    text,
    timestamp,
    type_name,
)
from shared.models import Alert, AlertSource, Entity, EntityKind

# Alert.alert_id's limit. ARM ids with long resource group and workspace names exceed it; the
# incident's name (its GUID) is unique on its own and stands in for such ids.
_MAX_ALERT_ID = 256

_KINDS = {"account": EntityKind.USER, "ip": EntityKind.IP, "mailbox": EntityKind.MAILBOX}

_INCIDENT_FIELDS = frozenset(
    {
        "incidentNumber",
        "title",
        "severity",
        "status",
        "classification",
        "providerName",
        "createdTimeUtc",
        "lastModifiedTimeUtc",
        "relatedEntities",
    }
)
_ALERT_FIELDS = frozenset(
    {
        "SystemAlertId",
        "AlertDisplayName",
        "AlertName",
        "DisplayName",
        "Severity",
        "AlertSeverity",
        "Status",
        "ProviderName",
        "TimeGenerated",
        "Entities",
    }
)
# The alert trigger names title and severity `AlertDisplayName`/`Severity`; a SecurityAlert row
# (Log Analytics) `DisplayName`/`AlertName` and `AlertSeverity`. Either set is read, in order.
_TITLE_FIELDS = ("AlertDisplayName", "DisplayName", "AlertName")
_SEVERITY_FIELDS = ("Severity", "AlertSeverity")
INCIDENT_RESOURCE_TYPE = "microsoft.securityinsights/incidents"


def is_sentinel_alert(payload: JsonObject) -> bool:
    """An alert trigger body or a SecurityAlert row: both carry the Sentinel-only SystemAlertId."""
    return "SystemAlertId" in payload


def is_sentinel_incident(payload: JsonObject) -> bool:
    """An incident trigger body: the incident resource in `object`, declared by the envelope's
    `objectSchemaType`, the resource's type or id, or an incident's properties."""
    incident = payload.get("object")
    if not isinstance(incident, dict):
        return False
    schema = payload.get("objectSchemaType")
    if isinstance(schema, str) and schema.lower() == "incident":
        return True
    for name in ("type", "id"):
        value = incident.get(name)
        if isinstance(value, str) and INCIDENT_RESOURCE_TYPE in value.lower():
            return True
    properties = incident.get("properties")
    return isinstance(properties, dict) and "incidentNumber" in properties


def normalize_sentinel(payload: object) -> Alert:
    return sentinel_alert(scrub(payload))


def sentinel_alert(payload: object) -> Alert:
    """One (scrubbed) Sentinel incident trigger, alert trigger or SecurityAlert row."""
    body = require_object(payload, "sentinel payload")
    if is_sentinel_alert(body):
        return _alert(body)
    if is_sentinel_incident(body):
        return _incident(body)
    raise InvalidInput(
        "sentinel payload has neither SystemAlertId (an alert) nor an object (an incident)"
    )


def _incident(body: JsonObject) -> Alert:
    incident = require_object(body.get("object"), "sentinel incident: object")
    properties = require_object(incident.get("properties"), "sentinel incident: object.properties")
    alert_id = _incident_key(incident)
    where = f"sentinel incident {preview(alert_id)}"
    modified = optional_text(properties.get("lastModifiedTimeUtc"), f"{where}: lastModifiedTimeUtc")
    etag = optional_text(incident.get("etag"), f"{where}: object.etag")
    related = optional_list(properties.get("relatedEntities"), f"{where}: relatedEntities")
    return build(
        Alert,
        where,
        source=AlertSource.SENTINEL,
        alert_id=alert_id,
        version=modified or etag or "",
        title=text(properties.get("title"), f"{where}: title"),
        severity=severity(properties.get("severity")),
        status=text(properties.get("status"), f"{where}: status"),
        classification=text(properties.get("classification"), f"{where}: classification"),
        provider=text(properties.get("providerName"), f"{where}: providerName"),
        incident_id=identifier(properties.get("incidentNumber"), f"{where}: incidentNumber"),
        created_at=timestamp(properties.get("createdTimeUtc"), f"{where}: createdTimeUtc"),
        updated_at=timestamp(modified, f"{where}: lastModifiedTimeUtc"),
        entities=[
            _related_entity(item, f"{where}: relatedEntities[{index}]")
            for index, item in enumerate(related)
        ],
        extra=_incident_extra(body, incident, properties),
    )


def _incident_key(incident: JsonObject) -> str:
    arm_id = identifier(incident.get("id"), "sentinel incident: object.id")
    name = identifier(incident.get("name"), "sentinel incident: object.name")
    if arm_id is not None and (len(arm_id) <= _MAX_ALERT_ID or name is None):
        return arm_id
    if name is not None:
        return name
    raise InvalidInput("sentinel incident: object.id and object.name are both missing")


def _incident_extra(body: JsonObject, incident: JsonObject, properties: JsonObject) -> JsonObject:
    """The trigger envelope, the incident resource and its unmapped properties, flattened; the
    ARM id stays available as `id` even when the incident name became the alert id."""
    extra = {key: value for key, value in body.items() if key != "object"}
    extra.update((key, value) for key, value in incident.items() if key != "properties")
    extra.update((key, value) for key, value in properties.items() if key not in _INCIDENT_FIELDS)
    return extra


def _related_entity(payload: object, where: str) -> Entity:
    entity = require_object(payload, where)
    properties = optional_object(entity.get("properties"), f"{where}: properties")
    return _entity(entity.get("kind"), properties, where)


def _alert(body: JsonObject) -> Alert:
    alert_id = require_id(body.get("SystemAlertId"), "sentinel alert: SystemAlertId")
    where = f"sentinel alert {preview(alert_id)}"
    generated = optional_text(body.get("TimeGenerated"), f"{where}: TimeGenerated")
    return build(
        Alert,
        where,
        source=AlertSource.SENTINEL,
        alert_id=alert_id,
        version=generated or "",
        title=_first_text(body, _TITLE_FIELDS, where),
        severity=severity(_first(body, _SEVERITY_FIELDS)),
        status=text(body.get("Status"), f"{where}: Status"),
        provider=text(body.get("ProviderName"), f"{where}: ProviderName"),
        created_at=timestamp(generated, f"{where}: TimeGenerated"),
        entities=_alert_entities(body.get("Entities"), f"{where}: Entities"),
        extra={key: value for key, value in body.items() if key not in _ALERT_FIELDS},
    )


def _first(body: JsonObject, names: tuple[str, ...]) -> object:
    """The first of `names` the body has with a non-empty value."""
    for name in names:
        value = body.get(name)
        if value not in (None, ""):
            return value
    return None


def _first_text(body: JsonObject, names: tuple[str, ...], where: str) -> str:
    for name in names:
        value = text(body.get(name), f"{where}: {name}")
        if value:
            return value
    return ""


def _alert_entities(value: object, where: str) -> list[Entity]:
    """Entities of an alert. They are serialized with Json.NET reference handling: an entity is
    written in full (perhaps nested in another) at its first occurrence, later as `{"$ref": id}`.
    """
    items = _decode_entities(value, where)
    index = _index_by_id(items)
    entities: list[Entity] = []
    taken: set[int] = set()
    for position, item in enumerate(items):
        item_where = f"{where}[{position}]"
        target = _resolve(require_object(item, item_where), index, item_where)
        # The same entity listed in full and by reference is one entity.
        if id(target) in taken:
            continue
        taken.add(id(target))
        entities.append(_entity(target.get("Type"), target, item_where))
    return entities


def _decode_entities(value: object, where: str) -> list[Any]:
    if isinstance(value, str):
        value = _parse_json(value, where) if value.strip() else None
    return optional_list(value, where)


def _parse_json(value: str, where: str) -> object:
    try:
        return json.loads(value)
    except RecursionError:
        raise InvalidInput(f"{where} is nested too deeply") from None
    except ValueError as error:
        raise InvalidInput(f"{where} is not valid JSON: {error}") from None


def _index_by_id(items: list[Any]) -> dict[str, JsonObject]:
    """Every object carrying an `$id`, nested ones included, walked without recursion. Objects
    that are themselves references are left out, so resolving never follows a chain or cycle."""
    index: dict[str, JsonObject] = {}
    # Visited containers, so Python callers passing shared or cyclic structures cannot loop.
    visited: set[int] = set()
    stack: list[Any] = list(reversed(items))
    while stack:
        node = stack.pop()
        if not isinstance(node, dict | list) or id(node) in visited:
            continue
        visited.add(id(node))
        children = list(node.values()) if isinstance(node, dict) else node
        stack.extend(reversed(children))
        if isinstance(node, dict) and "$ref" not in node:
            key = _reference_key(node.get("$id"))
            if key is not None:
                index.setdefault(key, node)
    return index


def _resolve(item: JsonObject, index: dict[str, JsonObject], where: str) -> JsonObject:
    if "$ref" not in item:
        return item
    reference = item["$ref"]
    key = _reference_key(reference)
    if key is None:
        raise InvalidInput(f"{where}: $ref must be a string, got {type_name(reference)}")
    target = index.get(key)
    if target is None:
        raise InvalidInput(f"{where}: $ref {preview(key)} names no entity")
    return target


def _reference_key(value: object) -> str | None:
    # Json.NET writes `$id` and `$ref` as strings; other values cannot match any entity.
    return value if isinstance(value, str) else None


class _Fields:
    """An entity's properties, camelCase (incidents) or PascalCase (alerts), looked up
    case-insensitively; messages name a property as it was sent."""

    def __init__(self, properties: JsonObject, where: str) -> None:
        self._properties = properties
        self._names = {key.lower(): key for key in properties if isinstance(key, str)}
        self._where = where

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def identifier(self, name: str) -> str | None:
        key = self._names.get(name)
        if key is None:
            return None
        return identifier(self._properties[key], f"{self._where}: {key}")

    def text(self, name: str) -> str | None:
        key = self._names.get(name)
        if key is None:
            return None
        return optional_text(self._properties[key], f"{self._where}: {key}")


def _entity(kind_value: object, properties: JsonObject, where: str) -> Entity:
    """One entity from its kind (`Account`, `ip`, ...) and its properties."""
    kind_name = optional_text(kind_value, f"{where}: kind")
    kind = _KINDS.get((kind_name or "").lower(), EntityKind.OTHER)
    fields = _Fields(properties, where)
    if kind is EntityKind.USER:
        return _account(fields, where)
    if kind is EntityKind.IP:
        return build(Entity, where, kind=kind, address=fields.identifier("address"))
    if kind is EntityKind.MAILBOX:
        return _mailbox(fields, where)
    return build(Entity, where, kind=kind, raw_type=kind_name)


def _account(fields: _Fields, where: str) -> Entity:
    return build(
        Entity,
        where,
        kind=EntityKind.USER,
        user_id=fields.identifier("aaduserid"),
        upn=_account_upn(fields),
        display_name=fields.text("displayname"),
    )


def _account_upn(fields: _Fields) -> str | None:
    name = fields.identifier("accountname" if "accountname" in fields else "name")
    suffix = fields.identifier("upnsuffix")
    if name is not None and suffix is not None:
        # Some connectors already put the whole UPN into the account name.
        return name if "@" in name else f"{name}@{suffix}"
    return fields.identifier("userprincipalname")


def _mailbox(fields: _Fields, where: str) -> Entity:
    return build(
        Entity,
        where,
        kind=EntityKind.MAILBOX,
        mailbox=fields.identifier("mailboxprimaryaddress"),
        upn=fields.identifier("upn"),
        # The mailbox owner's Entra object id.
        user_id=fields.identifier("externaldirectoryobjectid"),
        display_name=fields.text("displayname"),
    )
