"""Polls Graph security alerts_v2 so alerts are handled with no Logic App and no human.

The watermark (newest lastUpdateDateTime handled) persists in table storage. Each poll asks for
alerts updated since the watermark minus an overlap, because alerts can become visible a little
after their lastUpdateDateTime; alert versions already handled are skipped, so the overlap never
causes double handling.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.errors import InvalidInput
from shared.ingest import normalize_graph_alert
from shared.intake import AlertIntake
from shared.ports import AlertCheckpoint, AlertFeed

logger = logging.getLogger(__name__)

FEED = "graph_alerts_v2"
OVERLAP = timedelta(minutes=5)


@dataclass
class PollReport:
    pages: int = 0
    alerts_seen: int = 0
    alerts_handled: int = 0
    duplicates: int = 0
    invalid: int = 0
    actions_queued: int = 0
    watermark: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report["watermark"] = self.watermark.isoformat() if self.watermark else None
        return report


class AlertPoller:
    def __init__(
        self,
        feed: AlertFeed,
        checkpoint: AlertCheckpoint,
        intake: AlertIntake,
        lookback: timedelta,
    ) -> None:
        self._feed = feed
        self._checkpoint = checkpoint
        self._intake = intake
        self._lookback = lookback

    async def poll(self, now: datetime) -> PollReport:
        stored = await self._checkpoint.watermark(FEED)
        watermark = stored or now - self._lookback
        report = PollReport(watermark=watermark)
        async for page in self._feed.alerts_updated_since(watermark - OVERLAP):
            report.pages += 1
            for raw in page:
                report.alerts_seen += 1
                try:
                    alert = normalize_graph_alert(raw)
                except InvalidInput as exc:
                    report.invalid += 1
                    logger.warning("alerts_v2 record skipped: %s", exc)
                    continue
                result = await self._intake.handle(alert)
                if result.duplicate_alert:
                    report.duplicates += 1
                    continue
                report.alerts_handled += 1
                report.actions_queued += len(result.queued)
                if alert.updated_at and alert.updated_at > watermark:
                    watermark = alert.updated_at
            # Progress is saved page by page, so a crash mid-poll does not start over.
            if report.watermark != watermark or stored is None:
                await self._checkpoint.advance_watermark(FEED, watermark)
                report.watermark, stored = watermark, watermark
        return report
