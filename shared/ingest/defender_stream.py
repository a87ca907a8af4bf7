"""Defender XDR streaming API records (Event Hub) to `Alert`s.

An Event Hub message holds `{"records": [{"time", "tenantId", "category", "properties"}]}`.
`AdvancedHunting-AlertInfo` rows describe an alert, `AdvancedHunting-AlertEvidence` rows its
evidence, one row per entity with flat PascalCase columns; both carry `AlertId`, which is the
Graph alerts_v2 id, so a streamed alert normalizes to the key the poller gives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shared.ingest._common import (
    JsonObject,
    build,
    identifier,
    lower_text,
    require_id,
    scrub,
    severity,
    text,
    timestamp,
)
from shared.models import MAX_ID, Alert, AlertSource, Entity, EntityKind

ALERT_INFO = "AdvancedHunting-AlertInfo"
ALERT_EVIDENCE = "AdvancedHunting-AlertEvidence"
# A stored row must fit a Table Storage string property (64 KiB of UTF-16).
MAX_ROW_CHARS = 30_000


@dataclass
class StreamBatch:
    """The rows of one batch of Event Hub messages, and what could not be used."""

    tenant_id: str | None = None
    infos: dict[str, JsonObject] = field(default_factory=dict)
    evidence: list[JsonObject] = field(default_factory=list)
    unknown_category: int = 0
    broken: int = 0
    foreign: int = 0

    def add_message(self, body: bytes) -> None:
        """Take one Event Hub message; broken JSON and unusable records are counted, never
        raised, so one bad message cannot stop a batch."""
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.broken += 1
            return
        records = message.get("records") if isinstance(message, dict) else None
        if not isinstance(records, list):
            self.broken += 1
            return
        for record in records:
            self._add_record(record)

    def _add_record(self, record: object) -> None:
        if not isinstance(record, dict):
            self.broken += 1
            return
        tenant = record.get("tenantId")
        if self.tenant_id is not None and (
            not isinstance(tenant, str) or tenant.lower() != self.tenant_id.lower()
        ):
            # Another tenant's records (a shared hub, or a forged sender): never acted on.
            self.foreign += 1
            return
        category = record.get("category")
        if category not in (ALERT_INFO, ALERT_EVIDENCE):
            self.unknown_category += 1
            return
        # Lone surrogates are replaced before a row is stored: they cannot be written as UTF-8.
        properties = scrub(_properties(record.get("properties")))
        alert_id = properties.get("AlertId") if properties else None
        if properties is None or not isinstance(alert_id, str) or not alert_id.strip():
            self.broken += 1
            return
        if len(alert_id) > MAX_ID:
            self.broken += 1
            return
        if len(json.dumps(properties)) > MAX_ROW_CHARS:
            self.broken += 1
            return
        if category == ALERT_INFO:
            self.infos[alert_id] = properties
        else:
            self.evidence.append(properties)

    @property
    def alert_ids(self) -> set[str]:
        return set(self.infos) | {row["AlertId"] for row in self.evidence}


def _properties(value: object) -> JsonObject | None:
    # Some exports nest the row as a JSON string.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def normalize_stream_alert(info: JsonObject, evidence: list[JsonObject], version: str) -> Alert:
    """One alert from its AlertInfo row and every AlertEvidence row seen for it."""
    info, evidence = scrub(info), scrub(evidence)
    alert_id = require_id(info.get("AlertId"), "AlertInfo: AlertId")
    where = f"AlertInfo {alert_id[:60]!r}"
    return build(
        Alert,
        where,
        source=AlertSource.GRAPH_ALERTS_V2,
        alert_id=alert_id,
        version=version,
        title=text(info.get("Title"), f"{where}: Title"),
        severity=severity(info.get("Severity")),
        category=text(info.get("Category"), f"{where}: Category"),
        provider=text(info.get("ServiceSource"), f"{where}: ServiceSource"),
        created_at=timestamp(info.get("Timestamp"), f"{where}: Timestamp"),
        entities=[_entity(row, f"{where}: evidence[{i}]") for i, row in enumerate(evidence)],
        extra={"detectionSource": info.get("DetectionSource"), "stream": True},
    )


def _entity(row: JsonObject, where: str) -> Entity:
    role = lower_text(row.get("EvidenceRole"), f"{where}: EvidenceRole")
    common: dict[str, Any] = {"roles": (role,) if role else ()}
    entity_type = text(row.get("EntityType"), f"{where}: EntityType")
    account = {
        "user_id": identifier(row.get("AccountObjectId"), f"{where}: AccountObjectId"),
        "upn": identifier(row.get("AccountUpn"), f"{where}: AccountUpn"),
        "display_name": identifier(row.get("AccountName"), f"{where}: AccountName"),
    }
    match entity_type.lower():
        case "user":
            return build(Entity, where, kind=EntityKind.USER, **account, **common)
        case "ip":
            address = identifier(row.get("RemoteIP"), f"{where}: RemoteIP")
            return build(Entity, where, kind=EntityKind.IP, address=address, **common)
        case "mailbox":
            return build(
                Entity, where, kind=EntityKind.MAILBOX, mailbox=account["upn"], **account, **common
            )
    return build(Entity, where, kind=EntityKind.OTHER, raw_type=entity_type or None, **common)
