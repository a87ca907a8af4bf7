"""Microsoft Graph security alerts (`/security/alerts_v2`) to `Alert`s: one alert object, or a
list page `{"value": [...]}` of them."""

from __future__ import annotations

from typing import Any

from shared.ingest._common import (
    JsonObject,
    build,
    identifier,
    lower_text,
    optional_list,
    optional_object,
    optional_text,
    preview,
    require_id,
    require_list,
    require_object,
    roles,
    severity,
    text,
    timestamp,
)
from shared.models import Alert, AlertSource, Entity, EntityKind

ALERT_ODATA_TYPE = "#microsoft.graph.security.alert"

# Fields mapped onto Alert; everything else is kept in Alert.extra. detectionSource stays there
# too, being more specific than serviceSource, which it only stands in for when that is absent.
_MAPPED_FIELDS = frozenset(
    {
        "id",
        "incidentId",
        "title",
        "severity",
        "category",
        "status",
        "serviceSource",
        "createdDateTime",
        "lastUpdateDateTime",
        "evidence",
    }
)


def is_graph_alert(payload: JsonObject) -> bool:
    """Whether a payload declares itself a Graph security alert by its `@odata.type`."""
    odata_type = payload.get("@odata.type")
    return isinstance(odata_type, str) and odata_type.lower() == ALERT_ODATA_TYPE


def looks_like_graph_alert(payload: JsonObject) -> bool:
    """Whether an undeclared payload has a Graph alert's fields: evidence, or an id and a source."""
    if "evidence" in payload:
        return True
    return "id" in payload and ("serviceSource" in payload or "detectionSource" in payload)


def normalize_graph_alert(payload: object) -> Alert:
    return _alert(payload, "graph alert")


def normalize_graph_alert_list(payload: object) -> list[Alert]:
    """A Graph list response; an empty page is valid and yields no alerts."""
    page = require_object(payload, "graph alert list")
    items = require_list(page.get("value"), "graph alert list: value")
    return [_alert(item, f"graph alert list: value[{index}]") for index, item in enumerate(items)]


def _alert(payload: object, label: str) -> Alert:
    alert = require_object(payload, label)
    alert_id = require_id(alert.get("id"), f"{label}: id")
    where = f"{label} {preview(alert_id)}"
    last_update = optional_text(alert.get("lastUpdateDateTime"), f"{where}: lastUpdateDateTime")
    evidence = optional_list(alert.get("evidence"), f"{where}: evidence")
    return build(
        Alert,
        where,
        source=AlertSource.GRAPH_ALERTS_V2,
        alert_id=alert_id,
        version=last_update or "",
        title=text(alert.get("title"), f"{where}: title"),
        severity=severity(alert.get("severity")),
        category=text(alert.get("category"), f"{where}: category"),
        status=text(alert.get("status"), f"{where}: status"),
        provider=_provider(alert, where),
        incident_id=identifier(alert.get("incidentId"), f"{where}: incidentId"),
        created_at=timestamp(alert.get("createdDateTime"), f"{where}: createdDateTime"),
        updated_at=timestamp(last_update, f"{where}: lastUpdateDateTime"),
        entities=[
            _entity(item, f"{where}: evidence[{index}]") for index, item in enumerate(evidence)
        ],
        extra={key: value for key, value in alert.items() if key not in _MAPPED_FIELDS},
    )


def _provider(alert: JsonObject, where: str) -> str:
    service = text(alert.get("serviceSource"), f"{where}: serviceSource")
    return service or text(alert.get("detectionSource"), f"{where}: detectionSource")


def _entity(payload: object, where: str) -> Entity:
    evidence = require_object(payload, where)
    odata_type = optional_text(evidence.get("@odata.type"), f"{where}: @odata.type")
    common: dict[str, Any] = {
        "roles": roles(evidence.get("roles"), f"{where}: roles"),
        "verdict": lower_text(evidence.get("verdict"), f"{where}: verdict"),
    }
    match (odata_type or "").lower():
        case "#microsoft.graph.security.userevidence":
            account = _account(evidence.get("userAccount"), f"{where}: userAccount")
            return build(Entity, where, kind=EntityKind.USER, **account, **common)
        case "#microsoft.graph.security.ipevidence":
            address = identifier(evidence.get("ipAddress"), f"{where}: ipAddress")
            return build(Entity, where, kind=EntityKind.IP, address=address, **common)
        case "#microsoft.graph.security.mailboxevidence":
            return _mailbox(evidence, where, common)
    return build(Entity, where, kind=EntityKind.OTHER, raw_type=odata_type, **common)


def _mailbox(evidence: JsonObject, where: str, common: dict[str, Any]) -> Entity:
    account = _account(evidence.get("userAccount"), f"{where}: userAccount")
    display_name = optional_text(evidence.get("displayName"), f"{where}: displayName")
    return build(
        Entity,
        where,
        kind=EntityKind.MAILBOX,
        mailbox=identifier(evidence.get("primaryAddress"), f"{where}: primaryAddress"),
        user_id=account["user_id"],
        upn=account["upn"],
        display_name=display_name or account["display_name"],
        **common,
    )


def _account(payload: object, where: str) -> dict[str, str | None]:
    """The Entra identity in a `userAccount`; a SID-only account yields no ids, which the policy,
    not ingestion, judges unusable."""
    account = optional_object(payload, where)
    return {
        "user_id": identifier(account.get("azureAdUserId"), f"{where}.azureAdUserId"),
        "upn": identifier(account.get("userPrincipalName"), f"{where}.userPrincipalName"),
        "display_name": optional_text(account.get("displayName"), f"{where}.displayName"),
    }
