"""What a drill scenario works with: the simulated tenant, the wired services, a stand-in for
the Functions host, the timeline it records, and a clock it can move forward."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import azure.functions as func

from drill.azurite import Azurite
from drill.host import LocalHost
from functions.http import KEY_HEADER
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.models import utcnow
from shared.simulator import SimulatedTenant


class DrillClock:
    """Real time plus an offset a scenario can advance, to let a day-long block expire."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class Mark:
    at: datetime
    stage: str
    text: str


@dataclass
class DrillContext:
    sim: SimulatedTenant
    services: Container
    host: LocalHost
    clock: DrillClock
    webhook_key: str
    marks: list[Mark] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    azurite: Azurite | None = None
    _queue: InMemoryActionQueue = field(init=False)

    def __post_init__(self) -> None:
        # Kept from the start: a scenario may wrap the container's queue afterwards.
        queue = self.services.queue
        assert isinstance(queue, InMemoryActionQueue)
        self._queue = queue

    @property
    def queue(self) -> InMemoryActionQueue:
        return self._queue

    def mark(self, stage: str, text: str) -> None:
        self.marks.append(Mark(utcnow(), stage, text))

    async def poll(self) -> None:
        self.mark("alert", "timer poll_alerts fires (Graph security/alerts_v2)")
        await self.host.fire_timer("poll_alerts")

    async def post_alert(self, payload: Any, note: str | None = None) -> func.HttpResponse:
        if note:
            self.mark("alert", note)
        response = await self.host.post_json(
            "ingest_alert", "alerts", payload, {KEY_HEADER: self.webhook_key}
        )
        if response.status_code != 202:
            self.problems.append(f"webhook answered {response.status_code}")
        return response

    async def drain(self) -> int:
        return await self.host.pump(self.queue)

    async def run_with_executor(self, feed: Callable[[], Awaitable[None]]) -> int:
        """Run `feed` while the executor keeps delivering the queue, as the Service Bus
        trigger would beside the alert triggers; returns the deliveries made."""
        done = asyncio.Event()
        deliveries = 0

        async def execute() -> None:
            nonlocal deliveries
            while True:
                deliveries += await self.drain()
                if done.is_set() and len(self.queue) == 0:
                    return
                await asyncio.sleep(0.002)

        async def feed_then_stop() -> None:
            try:
                await feed()
            finally:
                done.set()

        await asyncio.gather(feed_then_stop(), execute())
        return deliveries


class Scenario(ABC):
    """A drill: how the tenant starts, what happens, and what must hold afterwards."""

    name: str = ""
    description: str = ""
    # Whether the drill needs Azurite on disk (to stop and start it with its data).
    persistent_storage: bool = False

    def settings(self) -> dict[str, Any]:
        """Settings beside the drill's defaults (protected identities, allow-lists)."""
        return {}

    def grants(self, deployed: frozenset[str]) -> frozenset[str]:
        """The application permissions the drill's identity holds, given what the deployment
        grants (shared/permissions.json for the scenario's settings)."""
        return deployed

    @abstractmethod
    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        """Seed the simulated tenant."""

    @abstractmethod
    async def drive(self, ctx: DrillContext) -> None:
        """Send the scenario's alerts through the function handlers and let them execute."""

    @abstractmethod
    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        """Named facts about the tenant and the trail that must all be true."""
