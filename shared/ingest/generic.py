"""The generic alert format, for sources without a normalizer of their own (SIEM webhooks,
scripts, drills); it is described with examples in docs/alert-formats.md.

A generic alert is a JSON object::

    {
      "source": "generic",                      optional; if given, must be "generic"
      "id": "splunk-7f3c2a",                    required, 1-256 characters
      "title": "Impossible travel",             optional, default ""
      "severity": "high",                       informational|low|medium|high, any case;
                                                anything else is "unknown"
      "category": "InitialAccess",              optional strings: category, status,
      "status": "new",                            classification, provider, incident_id,
      "classification": "truePositive",           version
      "provider": "splunk",
      "incident_id": "4711",
      "version": "2024-05-01T10:00:00Z",        changes when the source updates the alert
      "created_at": "2024-05-01T09:58:00Z",     optional ISO 8601 date-times
      "updated_at": "2024-05-01T10:00:00Z",
      "entities": [                             required, may be empty
        {"kind": "user", "user_id": "<Entra object id>", "upn": "adele.vance@contoso.com",
         "roles": ["compromised"], "verdict": "malicious"},
        {"kind": "ip", "address": "203.0.113.45", "roles": ["attacker"]},
        {"kind": "mailbox", "mailbox": "adele.vance@contoso.com"}
      ]
    }

Entity kinds are `user`, `ip`, `mailbox` (any case); any other kind becomes an `other` entity
that keeps the kind as its `raw_type`. Every entity may carry `display_name`, `roles` and
`verdict` (both lower-cased); unknown entity fields are ignored, unknown alert fields are kept
in `Alert.extra`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from shared.errors import InvalidInput
from shared.ingest._common import (
    build,
    describe,
    parse_timestamp,
    preview,
    require_object,
    scrub,
)
from shared.models import Alert, AlertSource, Entity, EntityKind, Severity


def _timestamp(value: object) -> object:
    # Strings go through the shared parser, which accepts Graph's 7 fractional digits.
    return parse_timestamp(value) if isinstance(value, str) else value


Timestamp = Annotated[datetime | None, BeforeValidator(_timestamp)]


class GenericEntity(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: str = Field(min_length=1)
    user_id: str | None = None
    upn: str | None = None
    address: str | None = None
    mailbox: str | None = None
    display_name: str | None = None
    roles: list[str] = Field(default_factory=list)
    verdict: str | None = None


class GenericAlert(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: Literal["generic"] = "generic"
    id: str = Field(min_length=1, max_length=256)
    title: str = ""
    severity: str = ""
    category: str = ""
    status: str = ""
    classification: str = ""
    provider: str = ""
    incident_id: str | None = None
    version: str = ""
    created_at: Timestamp = None
    updated_at: Timestamp = None
    entities: list[GenericEntity]


def is_generic(payload: dict[str, object]) -> bool:
    return "entities" in payload or payload.get("source") == "generic"


def normalize_generic(payload: object) -> Alert:
    return generic_alert(scrub(payload))


def generic_alert(payload: object) -> Alert:
    """One (scrubbed) generic alert."""
    body = require_object(payload, "generic alert")
    try:
        alert = GenericAlert.model_validate(body)
    except ValidationError as error:
        raise InvalidInput(f"generic alert: {describe(error)}") from error
    where = f"generic alert {preview(alert.id)}"
    return build(
        Alert,
        where,
        source=AlertSource.GENERIC,
        alert_id=alert.id,
        version=alert.version,
        title=alert.title,
        severity=Severity.parse(alert.severity),
        category=alert.category,
        status=alert.status,
        classification=alert.classification,
        provider=alert.provider,
        incident_id=alert.incident_id,
        created_at=alert.created_at,
        updated_at=alert.updated_at,
        entities=[
            _entity(entity, f"{where}: entities[{index}]")
            for index, entity in enumerate(alert.entities)
        ],
        extra=dict(alert.model_extra or {}),
    )


def _entity(entity: GenericEntity, where: str) -> Entity:
    kind = _kind(entity.kind)
    return build(
        Entity,
        where,
        kind=kind,
        user_id=entity.user_id,
        upn=entity.upn,
        address=entity.address,
        mailbox=entity.mailbox,
        display_name=entity.display_name,
        roles=tuple(role.lower() for role in entity.roles),
        verdict=entity.verdict.lower() if entity.verdict is not None else None,
        raw_type=entity.kind if kind is EntityKind.OTHER else None,
    )


def _kind(value: str) -> EntityKind:
    try:
        return EntityKind(value.lower())
    except ValueError:
        return EntityKind.OTHER
