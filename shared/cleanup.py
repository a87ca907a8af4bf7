"""State clean-up: the time to live of the responder's working state (never of the audit
trail). A timer runs it daily; the adapter decides which rows are safe to go."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.ports import StateRetention

logger = logging.getLogger(__name__)


class StateCleanup:
    def __init__(
        self,
        retention: StateRetention,
        ttl: timedelta,
        budget_window: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._retention = retention
        self._ttl = ttl
        self._budget_window = budget_window
        self._clock = clock

    async def run(self) -> dict[str, int]:
        """Delete expired state rows; how many of each kind."""
        now = self._clock()
        deleted = await self._retention.purge(now - self._ttl, now - self._budget_window)
        logger.info("state clean-up deleted %s", deleted)
        return deleted
