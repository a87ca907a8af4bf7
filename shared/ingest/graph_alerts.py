"""Microsoft Graph security alerts (`/security/alerts_v2`) to `Alert`s: one alert object, a list
page `{"value": [...]}` of them, or incidents listed with `$expand=alerts`, whose alerts are
unpacked (each keeps its own alert id, so the poller and the Defender stream coalesce with it)."""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidInput
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
    scrub,
    severity,
    text,
    timestamp,
)
from shared.models import Alert, AlertSource, Entity, EntityKind

ALERT_ODATA_TYPE = "#microsoft.graph.security.alert"
INCIDENT_ODATA_TYPE = "#microsoft.graph.security.incident"

# Properties only an alerts_v2 alert has (Microsoft Learn, "alert resource type"); one of them,
# or the declared @odata.type, is the positive evidence a payload is such an alert.
ALERT_ONLY_FIELDS = frozenset(
    {
        "providerAlertId",
        "serviceSource",
        "detectionSource",
        "detectorId",
        "evidence",
        "alertWebUrl",
        "alertPolicyId",
        "mitreTechniques",
        "threatFamilyName",
    }
)
# Properties only an incident has (Microsoft Learn, "incident resource type").
INCIDENT_ONLY_FIELDS = frozenset({"redirectIncidentId", "incidentWebUrl", "customTags"})

# Statuses and classifications of an incident that its unpacked alerts inherit when they do not
# say so themselves: resolving or classifying an incident in Defender XDR covers its alerts.
_CLOSED_INCIDENT_STATUSES = frozenset({"resolved"})
_BENIGN_CLASSIFICATIONS = frozenset({"falsepositive", "informationalexpectedactivity"})

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
        "classification",
        "serviceSource",
        "createdDateTime",
        "lastUpdateDateTime",
        "evidence",
    }
)


def _odata_type(payload: JsonObject) -> str | None:
    odata_type = payload.get("@odata.type")
    return odata_type.lower() if isinstance(odata_type, str) else None


def is_graph_alert(payload: JsonObject) -> bool:
    """Whether a payload is an alerts_v2 alert: declared by `@odata.type`, or carrying a property
    only such alerts have."""
    declared = _odata_type(payload)
    if declared is not None and declared != ALERT_ODATA_TYPE:
        return False
    return declared == ALERT_ODATA_TYPE or not ALERT_ONLY_FIELDS.isdisjoint(payload.keys())


def is_graph_incident(payload: JsonObject) -> bool:
    """Whether a payload is a Graph security incident (with or without its alerts)."""
    declared = _odata_type(payload)
    if declared is not None:
        return declared == INCIDENT_ODATA_TYPE
    if not ALERT_ONLY_FIELDS.isdisjoint(payload.keys()):
        return False
    return not INCIDENT_ONLY_FIELDS.isdisjoint(payload.keys()) or (
        "id" in payload and isinstance(payload.get("alerts"), list)
    )


def normalize_graph_alert(payload: object) -> Alert:
    return graph_alert(scrub(payload), "graph alert")


def normalize_graph_alert_list(payload: object) -> list[Alert]:
    """A Graph list response; an empty page is valid and yields no alerts."""
    page = require_object(scrub(payload), "graph alert list")
    items = require_list(page.get("value"), "graph alert list: value")
    return [
        graph_alert(item, f"graph alert list: value[{index}]") for index, item in enumerate(items)
    ]


def normalize_graph_incident(payload: object) -> list[Alert]:
    """The alerts of an incident listed with `$expand=alerts`."""
    return incident_alerts(scrub(payload), "graph incident")


def incident_alerts(payload: object, label: str) -> list[Alert]:
    """The alerts of one (scrubbed) incident. An incident without its alerts carries no evidence
    to act on and is refused, naming the query that includes them."""
    incident = require_object(payload, label)
    incident_id = identifier(incident.get("id"), f"{label}: id")
    where = f"{label} {preview(incident_id)}" if incident_id else label
    if "alerts" not in incident:
        raise InvalidInput(
            f"{where} has no alerts: list incidents with $expand=alerts "
            "(GET /security/incidents?$expand=alerts) so their evidence comes along"
        )
    alerts = require_list(incident.get("alerts"), f"{where}: alerts")
    inherited = _incident_closure(incident, where)
    result = []
    for index, item in enumerate(alerts):
        alert = graph_alert(item, f"{where}: alerts[{index}]")
        update: dict[str, Any] = {}
        if alert.incident_id is None and incident_id is not None:
            update["incident_id"] = incident_id
        update.update(_inherit(alert, inherited))
        # Built again rather than copied, so the incident's values are validated (and capped).
        result.append(build(Alert, where, **{**dict(alert), **update}) if update else alert)
    return result


def _incident_closure(incident: JsonObject, where: str) -> dict[str, str]:
    status = text(incident.get("status"), f"{where}: status")
    classification = text(incident.get("classification"), f"{where}: classification")
    closure = {}
    if status.lower() in _CLOSED_INCIDENT_STATUSES:
        closure["status"] = status
    if classification.lower() in _BENIGN_CLASSIFICATIONS:
        closure["classification"] = classification
    return closure


def _inherit(alert: Alert, closure: dict[str, str]) -> dict[str, str]:
    """The incident's closing status or benign classification, where the alert says neither."""
    update = {}
    if "status" in closure and alert.status.lower() not in _CLOSED_INCIDENT_STATUSES:
        update["status"] = closure["status"]
    if "classification" in closure and alert.classification.lower() not in _BENIGN_CLASSIFICATIONS:
        update["classification"] = closure["classification"]
    return update


def graph_alert(payload: object, label: str) -> Alert:
    """One (scrubbed) alerts_v2 alert."""
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
        classification=text(alert.get("classification"), f"{where}: classification"),
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
