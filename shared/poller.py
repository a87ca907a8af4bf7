"""Polls Graph security alerts_v2 so alerts are handled with no Logic App and no human.

The watermark (newest lastUpdateDateTime handled) persists in table storage and moves only after
every page was read, since Graph lists the newest alerts first. Each poll asks for alerts updated
since the watermark minus an overlap, because alerts can become visible a little after their
lastUpdateDateTime; alert versions already handled are skipped, so the overlap never causes
double handling.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.errors import InvalidInput
from shared.ingest import normalize_graph_alert
from shared.intake import AlertIntake, IntakeResult
from shared.models import Alert
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
    failed: int = 0
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
        newest, held = watermark, None
        async for page in self._feed.alerts_updated_since(watermark - OVERLAP):
            report.pages += 1
            alerts: list[Alert] = []
            for raw in page:
                report.alerts_seen += 1
                try:
                    alerts.append(normalize_graph_alert(raw))
                except InvalidInput as exc:
                    report.invalid += 1
                    logger.warning("alerts_v2 record skipped: %s", exc)
            for alert, result in await self._handle_page(alerts):
                if result is None:
                    # One alert that cannot be handled now must not stop the others; the
                    # watermark stays below it, so the next poll tries it again.
                    report.failed += 1
                    stamp = alert.updated_at or watermark
                    held = stamp if held is None else min(held, stamp)
                    continue
                if alert.updated_at and alert.updated_at > newest:
                    newest = alert.updated_at
                if result.duplicate_alert:
                    report.duplicates += 1
                    continue
                report.alerts_handled += 1
                report.actions_queued += len(result.queued)
        # Graph lists newest first, so the watermark only moves once every page was read.
        if held is not None:
            newest = min(newest, max(watermark, held - timedelta(microseconds=1)))
        if newest != stored:
            await self._checkpoint.advance_watermark(FEED, newest)
        report.watermark = newest
        return report

    async def _handle_page(self, alerts: list[Alert]) -> list[tuple[Alert, IntakeResult | None]]:
        """The page's alerts as one batch; if the batch fails, one by one, so that one alert
        that cannot be handled does not hold up the others (None for those that failed)."""
        try:
            return list(zip(alerts, await self._intake.handle_many(alerts), strict=True))
        except Exception:
            logger.warning("a page of %s alerts failed as a batch; one by one", len(alerts))
        handled: list[tuple[Alert, IntakeResult | None]] = []
        for alert in alerts:
            try:
                handled.append((alert, await self._intake.handle(alert)))
            except Exception:
                logger.exception("alert %s could not be handled", alert.alert_id)
                handled.append((alert, None))
        return handled
