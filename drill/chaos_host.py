"""The Functions host as the chaos drill plays it: each invocation in a task of its own (so a
worker killed in one does not take the drill down), the webhook's sender with a Logic App's
retries, the timers, the Service Bus trigger with peek-lock (a dead worker's message returns
when its lock expires) and the dead-letter trigger, if the app has one."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest

from drill.crashes import INVOCATION, Invocation, WorkerKilled
from drill.host import MAX_CONCURRENT_CALLS, LocalHost, host_message, registered_functions
from functions.http import KEY_HEADER
from shared.adapters.queue import Delivery, InMemoryQueue

logger = logging.getLogger(__name__)

# Azure Logic Apps' default retry policy: up to 4 retries at exponentially growing intervals
# scaled by 7.5 s and capped between 5 and 45 s, on 408, 429, 5xx and no answer
# (https://learn.microsoft.com/azure/logic-apps/logic-apps-exception-handling).
SENDER_RETRIES_S = (7.5, 15.0, 30.0, 45.0)
SENDER_RETRY_STATUSES = frozenset({408, 429})


@dataclass
class SenderLog:
    """What the alert senders saw."""

    posts: int = 0
    accepted: set[str] = field(default_factory=set)
    given_up: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)


class ChaosHost:
    """Invokes the app's functions as the Functions host does, each invocation in a task of its
    own, so a worker killed in one does not take the drill down."""

    def __init__(self, queue: InMemoryQueue, lock_s: float, sender_retry_scale: float) -> None:
        self.functions = LocalHost().functions
        self.queue = queue
        self.lock_s = lock_s
        self.sender_retry_scale = sender_retry_scale
        self.deliveries = 0
        self.kills: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.timers_fired: Counter[str] = Counter()
        self.dead_letters_handled = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._relocks: set[asyncio.Task[None]] = set()
        registered = registered_functions()
        self.timers = sorted(
            name
            for name, fn in registered.items()
            if getattr(fn.get_trigger(), "type", None) == "timerTrigger"
        )
        self.dead_letter_handlers = sorted(
            name
            for name, fn in registered.items()
            if getattr(fn.get_trigger(), "type", None) == "serviceBusTrigger"
            and "deadletter" in str(getattr(fn.get_trigger(), "queue_name", "")).lower()
        )

    async def invoke(self, function: str, argument: Any) -> tuple[bool, Any]:
        """(True, result), or (False, None) when the worker died; exceptions propagate."""
        invocation = Invocation(function)

        async def run() -> Any:
            INVOCATION.set(invocation)
            return await self.functions[function](argument)

        try:
            return True, await asyncio.create_task(run())
        except WorkerKilled:
            self.kills[function] += 1
            return False, None

    async def post(self, payload: Any, key: str) -> int | None:
        """One webhook call: the status, or None when no answer came (the worker died)."""
        request = func.HttpRequest(
            method="POST",
            url="http://127.0.0.1/api/alerts",
            headers={"Content-Type": "application/json", KEY_HEADER: key},
            params={},
            route_params={},
            body=json.dumps(payload).encode(),
        )
        try:
            alive, response = await self.invoke("ingest_alert", request)
        except Exception:
            logger.debug("ingest_alert failed", exc_info=True)
            self.failures["ingest_alert"] += 1
            return 500  # the host answers an unhandled exception with 500
        return int(response.status_code) if alive else None

    async def send_alert(self, alert_id: str, payload: Any, key: str, log: SenderLog) -> None:
        """A Logic App's HTTP action with the default retry policy."""
        delays = [0.0, *(d * self.sender_retry_scale for d in SENDER_RETRIES_S)]
        for delay in delays:
            await asyncio.sleep(delay)
            log.posts += 1
            status = await self.post(payload, key)
            log.statuses[str(status)] += 1
            if status is not None and 200 <= status < 300:
                log.accepted.add(alert_id)
                return
            if status is not None and status < 500 and status not in SENDER_RETRY_STATUSES:
                log.refused.add(alert_id)
                return
        log.given_up.add(alert_id)

    async def fire_timer(self, name: str) -> None:
        self.timers_fired[name] += 1
        try:
            await self.invoke(name, TimerRequest(past_due=False))
        except Exception:
            logger.debug("timer %s failed", name, exc_info=True)
            self.failures[name] += 1

    async def fire_timers(self) -> None:
        """Every timer once, side by side, as the host runs them."""
        await asyncio.gather(*(self.fire_timer(name) for name in self.timers))

    async def deliver_dead_letters(self) -> None:
        """Hand dead-lettered messages to the app's dead-letter trigger, if it has one."""
        if not self.dead_letter_handlers:
            return
        handler = self.dead_letter_handlers[0]
        waiting, self.queue.dead_letters[:] = list(self.queue.dead_letters), []
        for delivery in waiting:
            try:
                alive, _ = await self.invoke(handler, host_message(delivery))
            except Exception:
                alive = False
                self.failures[handler] += 1
            if alive:
                self.dead_letters_handled += 1
            else:
                self.queue.dead_letters.append(delivery)

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            alive, _ = await self.invoke("execute_action", host_message(delivery))
        except Exception:
            self.failures["execute_action"] += 1
            self.queue.abandon(delivery)  # the host abandons; Service Bus redelivers at once
            return
        if not alive:
            # Nobody settles the message: it comes back when its lock expires.
            relock = asyncio.create_task(self._after_lock(delivery))
            self._relocks.add(relock)
            relock.add_done_callback(self._relocks.discard)

    async def _after_lock(self, delivery: Delivery) -> None:
        await asyncio.sleep(self.lock_s)
        self.queue.abandon(delivery)

    @property
    def idle(self) -> bool:
        """Nothing delivered, waiting to be delivered, or due: a scheduled message that has
        come due counts as waiting before the trigger has received it."""
        busy = self._in_flight or self._relocks or len(self.queue) > 0
        return not busy and not self.queue.due

    async def execute(self, stop: asyncio.Event) -> None:
        """The Service Bus trigger: up to maxConcurrentCalls deliveries at once, until `stop`
        is set and nothing is left to deliver."""
        while True:
            while len(self._in_flight) < MAX_CONCURRENT_CALLS:
                delivery = self.queue.receive()
                if delivery is None:
                    break
                self.deliveries += 1
                task = asyncio.create_task(self._deliver(delivery))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if stop.is_set() and self.idle:
                return
            if self._in_flight:
                await asyncio.wait(
                    set(self._in_flight), timeout=0.05, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(0.02)

    async def until_idle(self, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while not self.idle:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True
