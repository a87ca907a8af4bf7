"""Action queues: Azure Service Bus in Azure, an in-memory queue with the same delivery
semantics (deduplication by message id, peek-lock, redelivery, dead-lettering) locally.

The message id is the deterministic action id, so Service Bus duplicate detection drops a
repeated request, and the executor's ledger makes a redelivered one harmless. A message sent
by the intake's outbox carries its claim's ETag (application property `claim_etag`): the
executor writes its first ledger entry on that condition instead of reading the claim first.
Messages the queue gave up on (max delivery count) wait in its dead-letter queue, which the
action reconciler drains. Least privilege: the `Azure Service Bus Data Sender` role on the
queue, and `Azure Service Bus Data Receiver` (which the trigger needs anyway) to read its
dead-letter queue.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError

from shared.models import ActionRequest, utcnow
from shared.ports import CLAIM_ETAG, DeadLetter, DeadLetterHandler

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"

# Service Bus duplicate detection's default window (the queue in infra/ uses the same).
DUPLICATE_WINDOW = timedelta(minutes=10)
# How long one drain waits for the first dead-lettered message.
DEAD_LETTER_WAIT_S = 5.0


def message_properties(action: ActionRequest, claim_etag: str | None) -> dict[str, str | bool]:
    properties: dict[str, str | bool] = {"kind": str(action.kind), "dry_run": action.dry_run}
    if claim_etag:
        properties[CLAIM_ETAG] = claim_etag
    return properties


def to_service_bus_message(
    action: ActionRequest, claim_etag: str | None = None
) -> ServiceBusMessage:
    properties: dict[str | bytes, Any] = dict(message_properties(action, claim_etag).items())
    return ServiceBusMessage(
        action.model_dump_json(),
        message_id=action.message_id,
        content_type=CONTENT_TYPE,
        subject=str(action.kind),
        application_properties=properties,
    )


class ServiceBusQueue:
    """One Service Bus queue's sender, over the app's managed identity, built on first use."""

    def __init__(self, namespace: str, queue_name: str, credential: AsyncTokenCredential) -> None:
        self._client = ServiceBusClient(namespace, credential)
        self._queue_name = queue_name
        self._sender: ServiceBusSender | None = None

    async def send_messages(self, messages: list[ServiceBusMessage]) -> None:
        """Send in as few batches as the size limit allows."""
        sender = self._get_sender()
        batch = await sender.create_message_batch()
        for message in messages:
            try:
                batch.add_message(message)
            except MessageSizeExceededError:
                # The batch is full (256 KB on the Standard tier): send it, start the next.
                await sender.send_messages(batch)
                batch = await sender.create_message_batch()
                batch.add_message(message)
        if len(batch):
            await sender.send_messages(batch)

    def _get_sender(self) -> ServiceBusSender:
        if self._sender is None:
            self._sender = self._client.get_queue_sender(self._queue_name)
        return self._sender

    def _dead_letter_receiver(self) -> DeadLetterReceiver:
        receiver: DeadLetterReceiver = self._client.get_queue_receiver(
            self._queue_name, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        )
        return receiver

    async def drain_dead_letters(self, handler: DeadLetterHandler, max_count: int) -> int:
        """Peek-lock up to `max_count` dead-lettered messages; complete those `handler`
        took care of, abandon the rest (they stay in the dead-letter queue)."""
        receiver = self._dead_letter_receiver()
        try:
            messages = await receiver.receive_messages(
                max_message_count=max_count, max_wait_time=DEAD_LETTER_WAIT_S
            )
            for message in messages:
                try:
                    handled = await handler(dead_letter_of(message))
                except Exception:
                    logger.exception("dead-lettered message %s not handled", message.message_id)
                    handled = False
                if handled:
                    await receiver.complete_message(message)
                else:
                    await receiver.abandon_message(message)
            return len(messages)
        finally:
            await receiver.close()

    async def close(self) -> None:
        if self._sender is not None:
            await self._sender.close()
        await self._client.close()


def dead_letter_of(message: ServiceBusReceivedMessage) -> DeadLetter:
    return DeadLetter(
        message_id=str(message.message_id or ""),
        body=b"".join(message.body),
        reason=str(message.dead_letter_reason or ""),
        enqueued_at=message.enqueued_time_utc,
    )


class DeadLetterReceiver(Protocol):
    """What the dead-letter drain uses of azure.servicebus.aio.ServiceBusReceiver."""

    async def receive_messages(
        self, max_message_count: int | None, max_wait_time: float | None
    ) -> list[ServiceBusReceivedMessage]: ...

    async def complete_message(self, message: ServiceBusReceivedMessage) -> None: ...

    async def abandon_message(self, message: ServiceBusReceivedMessage) -> None: ...

    async def close(self) -> None: ...


class ServiceBusActionQueue(ServiceBusQueue):
    """`ActionQueue` on a Service Bus queue."""

    async def send(
        self, actions: list[ActionRequest], claims: Mapping[str, str] | None = None
    ) -> None:
        claims = claims or {}
        await self.send_messages([to_service_bus_message(a, claims.get(a.id)) for a in actions])

    async def schedule(self, actions: list[ActionRequest], at: datetime) -> None:
        if not actions:
            return
        sender = self._get_sender()
        await sender.schedule_messages([to_service_bus_message(a) for a in actions], at)


@dataclass
class Delivery:
    """One delivery of a message, as a peek-lock receiver sees it."""

    message_id: str
    body: bytes
    content_type: str
    delivery_count: int
    enqueued_at: datetime | None = None
    properties: dict[str, str | bool] = field(default_factory=dict)


class InMemoryQueue:
    """A queue for local runs and tests with Service Bus's delivery semantics. Time comes
    from `clock`, so a drill can let scheduled messages come due without waiting."""

    def __init__(
        self,
        max_delivery_count: int = 10,
        clock: Callable[[], datetime] = utcnow,
        duplicate_window: timedelta = DUPLICATE_WINDOW,
    ) -> None:
        self._max_delivery_count = max_delivery_count
        self._clock = clock
        self._duplicate_window = duplicate_window
        self._pending: deque[Delivery] = deque()
        self._scheduled: list[tuple[datetime, int, Delivery]] = []
        self._seen_ids: dict[str, datetime] = {}
        self.dead_letters: list[Delivery] = []
        self.sent = 0
        self.duplicates_dropped = 0

    def _accept(
        self, message_id: str, body: bytes, properties: dict[str, str | bool]
    ) -> Delivery | None:
        now = self._clock()
        seen = self._seen_ids.get(message_id)
        if seen is not None and now - seen < self._duplicate_window:
            self.duplicates_dropped += 1
            return None
        self._seen_ids[message_id] = now
        self.sent += 1
        return Delivery(message_id, body, CONTENT_TYPE, 1, now, properties)

    def put(
        self,
        message_id: str,
        body: bytes,
        at: datetime | None = None,
        properties: dict[str, str | bool] | None = None,
    ) -> None:
        """Enqueue one message (due at `at`, or now) with its application `properties`; a
        repeated id inside the window is dropped, as Service Bus duplicate detection does."""
        delivery = self._accept(message_id, body, properties or {})
        if delivery is None:
            return
        if at is None:
            self._pending.append(delivery)
        else:
            heapq.heappush(self._scheduled, (at, self.sent, delivery))

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def scheduled(self) -> list[tuple[datetime, str]]:
        return sorted((at, d.message_id) for at, _, d in self._scheduled)

    @property
    def due(self) -> bool:
        """Whether a scheduled message has come due and waits to be received."""
        return bool(self._scheduled) and self._scheduled[0][0] <= self._clock()

    def receive(self) -> Delivery | None:
        now = self._clock()
        while self._scheduled and self._scheduled[0][0] <= now:
            self._pending.append(heapq.heappop(self._scheduled)[2])
        return self._pending.popleft() if self._pending else None

    def abandon(self, delivery: Delivery) -> None:
        """The handler failed: redeliver, or dead-letter after the max delivery count."""
        if delivery.delivery_count >= self._max_delivery_count:
            logger.warning(
                "message %s dead-lettered after %s deliveries",
                delivery.message_id,
                delivery.delivery_count,
            )
            self.dead_letters.append(delivery)
            return
        delivery.delivery_count += 1
        self._pending.append(delivery)

    async def drain_dead_letters(self, handler: DeadLetterHandler, max_count: int) -> int:
        """Hand dead-lettered messages to `handler`; those it took care of leave."""
        taken, self.dead_letters = self.dead_letters[:max_count], self.dead_letters[max_count:]
        kept = []
        for delivery in taken:
            letter = DeadLetter(
                delivery.message_id,
                delivery.body,
                "MaxDeliveryCountExceeded",
                delivery.enqueued_at,
            )
            try:
                handled = await handler(letter)
            except Exception:
                logger.exception("dead-lettered message %s not handled", delivery.message_id)
                handled = False
            if not handled:
                kept.append(delivery)
        self.dead_letters = kept + self.dead_letters
        return len(taken)


class InMemoryActionQueue(InMemoryQueue):
    """`ActionQueue` in memory."""

    async def send(
        self, actions: list[ActionRequest], claims: Mapping[str, str] | None = None
    ) -> None:
        claims = claims or {}
        for action in actions:
            body = action.model_dump_json().encode()
            properties = message_properties(action, claims.get(action.id))
            self.put(action.message_id, body, properties=properties)

    async def schedule(self, actions: list[ActionRequest], at: datetime) -> None:
        for action in actions:
            properties = message_properties(action, None)
            self.put(action.message_id, action.model_dump_json().encode(), at, properties)
