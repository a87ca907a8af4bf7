"""Defender XDR alerts streamed through Event Hub: store AlertInfo and AlertEvidence rows,
join them by AlertId (evidence may come in a later batch than its alert), and hand the joined
alert to the intake. The alert keeps its Graph id, so the poller and the stream plan the same
action ids; its version is a digest of the rows seen, so new evidence re-handles it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from shared.audit import canonical_json
from shared.errors import InvalidInput
from shared.ingest.defender_stream import StreamBatch, normalize_stream_alert
from shared.intake import AlertIntake

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]


def row_digest(row: JsonObject) -> str:
    return hashlib.sha256(canonical_json(row).encode()).hexdigest()[:40]


class StreamRows(Protocol):
    """AlertInfo and AlertEvidence rows kept until their partner arrives."""

    async def put_info(self, alert_id: str, info: JsonObject) -> None: ...

    async def add_evidence(self, rows: list[JsonObject]) -> None:
        """Store rows; a row stored before (same content) is stored once."""
        ...

    async def info(self, alert_id: str) -> JsonObject | None: ...

    async def evidence(self, alert_id: str) -> list[JsonObject]: ...


@dataclass
class StreamReport:
    messages: int = 0
    infos: int = 0
    evidence: int = 0
    unknown_category: int = 0
    broken: int = 0
    foreign: int = 0
    waiting: int = 0
    invalid: int = 0
    handled: int = 0
    duplicates: int = 0
    actions_queued: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DefenderStream:
    def __init__(self, rows: StreamRows, intake: AlertIntake, tenant_id: str | None) -> None:
        self._rows = rows
        self._intake = intake
        self._tenant_id = tenant_id

    async def ingest(self, bodies: list[bytes]) -> StreamReport:
        """Handle one batch of Event Hub messages. Unusable messages and records are counted
        and skipped; storage or intake failures raise, and the batch is retried whole, which
        is safe because every step is idempotent."""
        batch = StreamBatch(tenant_id=self._tenant_id)
        for body in bodies:
            batch.add_message(body)
        report = StreamReport(
            messages=len(bodies),
            infos=len(batch.infos),
            evidence=len(batch.evidence),
            unknown_category=batch.unknown_category,
            broken=batch.broken,
            foreign=batch.foreign,
        )
        for alert_id, info in batch.infos.items():
            await self._rows.put_info(alert_id, info)
        await self._rows.add_evidence(batch.evidence)
        for alert_id in sorted(batch.alert_ids):
            await self._join(alert_id, batch.infos.get(alert_id), report)
        return report

    async def _join(self, alert_id: str, info: JsonObject | None, report: StreamReport) -> None:
        info = info or await self._rows.info(alert_id)
        if info is None:
            report.waiting += 1
            return
        evidence = sorted(await self._rows.evidence(alert_id), key=row_digest)
        version = "stream-" + row_digest({"info": info, "evidence": evidence})
        try:
            alert = normalize_stream_alert(info, evidence, version)
        except InvalidInput as exc:
            report.invalid += 1
            logger.warning("streamed alert skipped: %s", exc)
            return
        result = await self._intake.handle(alert)
        if result.duplicate_alert:
            report.duplicates += 1
            return
        report.handled += 1
        report.actions_queued += len(result.queued)
