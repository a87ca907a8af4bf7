"""A stand-in for the Azure Functions host: invokes the app's registered functions with
azure.functions objects, exactly as the worker would, and pumps the in-memory action queue into
the Service Bus-triggered executor with peek-lock semantics (an exception abandons the message,
which comes back with a higher delivery count)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import azure.functions as func
from azure.functions.decorators.function_app import Function
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from shared.adapters.queue import Delivery, InMemoryQueue

logger = logging.getLogger(__name__)

Handler = Callable[..., Coroutine[Any, Any, Any]]


class MovableClock(Protocol):
    def __call__(self) -> datetime: ...

    def advance(self, delta: timedelta) -> None: ...


HOST_JSON = Path(__file__).resolve().parents[1] / "host.json"
MAX_CONCURRENT_CALLS = int(
    json.loads(HOST_JSON.read_text())["extensions"]["serviceBus"]["maxConcurrentCalls"]
)


def host_message(delivery: Delivery) -> ServiceBusMessage:
    """A delivery as the host hands it to a Service Bus-triggered function, its application
    properties included."""
    return ServiceBusMessage(
        body=delivery.body,
        message_id=delivery.message_id,
        content_type=delivery.content_type,
        delivery_count=delivery.delivery_count,
        application_properties=dict(delivery.properties),
        user_properties={},
    )


@cache
def registered_functions() -> dict[str, Function]:
    """The app's functions by name. Built once: the app refuses a second get_functions()."""
    from function_app import app

    return {fn.get_function_name() or "": fn for fn in app.get_functions()}


class LocalHost:
    def __init__(self) -> None:
        self.functions: dict[str, Handler] = {
            name: fn.get_user_function() for name, fn in registered_functions().items()
        }

    async def post_json(
        self, function: str, route: str, payload: Any, headers: dict[str, str] | None = None
    ) -> func.HttpResponse:
        request = func.HttpRequest(
            method="POST",
            url=f"http://127.0.0.1/api/{route}",
            headers={"Content-Type": "application/json", **(headers or {})},
            params={},
            route_params={},
            body=json.dumps(payload).encode(),
        )
        response: func.HttpResponse = await self.functions[function](request)
        return response

    async def fire_timer(self, function: str) -> None:
        await self.functions[function](TimerRequest(past_due=False))

    async def pump(
        self,
        queue: InMemoryQueue,
        function: str = "execute_action",
        concurrency: int = MAX_CONCURRENT_CALLS,
    ) -> int:
        """Deliver queued messages until the queue is empty, up to `concurrency` at a time as
        the host does (host.json serviceBus.maxConcurrentCalls); returns deliveries made."""
        deliveries = 0
        while True:
            batch: list[Delivery] = []
            while len(batch) < concurrency and (delivery := queue.receive()) is not None:
                batch.append(delivery)
            if not batch:
                return deliveries
            deliveries += len(batch)
            await asyncio.gather(*(self._deliver(queue, d, function) for d in batch))

    async def pump_through_time(
        self,
        queue: InMemoryQueue,
        clock: MovableClock,
        function: str = "execute_action",
        until: timedelta = timedelta(days=1),
    ) -> int:
        """Deliver queued messages, and whenever the queue is empty move `clock` to the next
        scheduled message (retries after backoff, expiries) and go on, up to `until` ahead;
        returns deliveries made."""
        deadline = clock() + until
        deliveries = await self.pump(queue, function)
        while queue.scheduled and queue.scheduled[0][0] <= deadline:
            due = queue.scheduled[0][0]
            if due > clock():
                clock.advance(due - clock())
            deliveries += await self.pump(queue, function)
        return deliveries

    async def _deliver(self, queue: InMemoryQueue, delivery: Delivery, function: str) -> None:
        try:
            await self.functions[function](host_message(delivery))
        except Exception as exc:
            logger.debug("delivery of %s failed", delivery.message_id, exc_info=True)
            logger.info(
                "delivery %s of %s abandoned: %s",
                delivery.delivery_count,
                delivery.message_id,
                type(exc).__name__,
            )
            queue.abandon(delivery)
