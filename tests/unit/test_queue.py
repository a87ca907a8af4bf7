"""Action queues: the Service Bus message the app sends, and the in-memory queue's delivery
semantics that stand in for Service Bus locally."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusReceivedMessage
from azure.servicebus._pyamqp.message import Message, Properties

from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.notification_queue import ServiceBusNotificationQueue
from shared.adapters.queue import (
    InMemoryActionQueue,
    ServiceBusActionQueue,
    to_service_bus_message,
)
from shared.models import ActionKind, ActionRequest
from shared.ports import CLAIM_ETAG, DeadLetter, claim_etag

TARGET = "5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01"


def action(origin: str = "graph_alerts_v2:a-1") -> ActionRequest:
    return ActionRequest(
        id=ActionRequest.derive_id(ActionKind.DISABLE_ACCOUNT, TARGET, origin),
        kind=ActionKind.DISABLE_ACCOUNT,
        target=TARGET,
    )


def test_the_service_bus_message_id_is_the_action_id() -> None:
    request = action()
    message = to_service_bus_message(request)
    assert message.message_id == request.id
    assert message.content_type == "application/json"
    assert message.subject == "disable_account"
    assert ActionRequest.model_validate_json(b"".join(message.body)) == request


ETAG = "W/\"datetime'2026-12-01T14%3A35%3A13.5114041Z'\""


async def test_a_sent_message_carries_its_claims_etag_to_the_trigger() -> None:
    service_bus = ServiceBusActionQueue(
        "sb-test.servicebus.windows.net", "actions", StaticTokenCredential("t")
    )
    sender = RecordingSender()
    service_bus._sender = sender  # type: ignore[assignment]
    claimed, unclaimed = action(), action("graph_alerts_v2:a-2")
    await service_bus.send([claimed, unclaimed], {claimed.id: ETAG})
    [first, second] = sender.sent[0]
    assert first.application_properties is not None
    assert first.application_properties[CLAIM_ETAG] == ETAG
    assert CLAIM_ETAG not in (second.application_properties or {})
    memory = InMemoryActionQueue()
    await memory.send([claimed], {claimed.id: ETAG})
    await memory.schedule([unclaimed], datetime.now(UTC))
    received = [memory.receive(), memory.receive()]
    assert [claim_etag(d.properties) for d in received if d] == [ETAG, None]
    # What the trigger may be handed: nothing, an empty value, bytes.
    assert claim_etag(None) is None and claim_etag({CLAIM_ETAG: ""}) is None
    assert claim_etag({CLAIM_ETAG: ETAG.encode()}) == ETAG
    await service_bus.close()


async def test_duplicate_sends_are_dropped_like_service_bus_duplicate_detection() -> None:
    queue = InMemoryActionQueue()
    await queue.send([action(), action(), action("graph_alerts_v2:a-2")])
    await queue.send([action()])
    assert len(queue) == 2 and queue.duplicates_dropped == 2


async def test_abandoned_messages_come_back_then_go_to_dead_letter() -> None:
    queue = InMemoryActionQueue(max_delivery_count=3)
    await queue.send([action()])
    counts = []
    while (delivery := queue.receive()) is not None:
        counts.append(delivery.delivery_count)
        queue.abandon(delivery)
    assert counts == [1, 2, 3]
    assert [d.delivery_count for d in queue.dead_letters] == [3]


class RecordingSender:
    """Stands in for azure.servicebus.aio.ServiceBusSender: hands out real message batches
    of the Standard tier's size and keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[list[ServiceBusMessage]] = []
        self.closed = False

    async def create_message_batch(self) -> ServiceBusMessageBatch:
        return ServiceBusMessageBatch(max_size_in_bytes=256 * 1024)

    async def send_messages(self, batch: ServiceBusMessageBatch) -> None:
        self.sent.append(list(batch._messages))

    async def close(self) -> None:
        self.closed = True


async def test_a_large_send_is_split_into_batches_that_fit() -> None:
    queue = ServiceBusActionQueue(
        "sb-test.servicebus.windows.net", "actions", StaticTokenCredential("t")
    )
    sender = RecordingSender()
    queue._sender = sender  # type: ignore[assignment]
    requests = [
        action(f"generic:flood-{n}").model_copy(update={"reason": "x" * 900}) for n in range(500)
    ]
    await queue.send(requests)
    assert len(sender.sent) > 1
    assert [m.message_id for batch in sender.sent for m in batch] == [r.id for r in requests]


async def test_the_service_bus_queue_sends_one_batch_of_real_messages() -> None:
    queue = ServiceBusActionQueue(
        "sb-test.servicebus.windows.net", "actions", StaticTokenCredential("t")
    )
    sender = RecordingSender()
    queue._sender = sender  # type: ignore[assignment]
    requests = [action(), action("graph_alerts_v2:a-2")]
    await queue.send(requests)
    await queue.send([])
    assert len(sender.sent) == 1
    assert [m.message_id for m in sender.sent[0]] == [r.id for r in requests]
    assert all(isinstance(m, ServiceBusMessage) for m in sender.sent[0])
    await queue.close()
    assert sender.closed


class DeadLetterReceiver:
    """Stands in for the dead-letter receiver of azure.servicebus.aio: hands out real
    ServiceBusReceivedMessage objects (built from AMQP messages as the SDK builds them) and
    records how each was settled."""

    def __init__(self, messages: list[ServiceBusReceivedMessage]) -> None:
        self.messages = messages
        self.completed: list[str] = []
        self.abandoned: list[str] = []
        self.closed = False

    async def receive_messages(
        self, max_message_count: int | None, max_wait_time: float | None
    ) -> list[ServiceBusReceivedMessage]:
        batch = self.messages[: max_message_count or 1]
        self.messages = self.messages[len(batch) :]
        return batch

    async def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        self.completed.append(str(message.message_id))

    async def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        self.abandoned.append(str(message.message_id))

    async def close(self) -> None:
        self.closed = True


def dead_lettered(request: ActionRequest) -> ServiceBusReceivedMessage:
    amqp = Message(
        data=[request.model_dump_json().encode()],
        properties=Properties(message_id=request.message_id, content_type="application/json"),
        application_properties={
            b"DeadLetterReason": b"MaxDeliveryCountExceeded",
            b"DeadLetterErrorDescription": b"Message could not be consumed after 10 attempts.",
        },
        message_annotations={b"x-opt-enqueued-time": 1_764_500_000_000},
    )
    return ServiceBusReceivedMessage(amqp, receiver=object())


async def test_the_service_bus_queue_drains_its_dead_letters_and_keeps_the_unhandled() -> None:
    queue = ServiceBusActionQueue(
        "sb-test.servicebus.windows.net", "actions", StaticTokenCredential("t")
    )
    first, second = action(), action("graph_alerts_v2:a-2")
    receiver = DeadLetterReceiver([dead_lettered(first), dead_lettered(second)])
    queue._dead_letter_receiver = lambda: receiver  # type: ignore[method-assign]
    seen: list[DeadLetter] = []

    async def handler(letter: DeadLetter) -> bool:
        seen.append(letter)
        if letter.message_id == second.id:
            raise ConnectionError("table service unreachable")
        return True

    assert await queue.drain_dead_letters(handler, max_count=10) == 2
    assert [ActionRequest.model_validate_json(s.body) for s in seen] == [first, second]
    assert seen[0].reason == "MaxDeliveryCountExceeded"
    assert seen[0].enqueued_at is not None and seen[0].enqueued_at.year == 2025
    assert receiver.completed == [first.id] and receiver.abandoned == [second.id]
    assert receiver.closed
    await queue.close()


async def test_the_notifications_queue_drains_its_dead_letters_too() -> None:
    queue = ServiceBusNotificationQueue(
        "sb-test.servicebus.windows.net", "notifications", StaticTokenCredential("t")
    )
    receiver = DeadLetterReceiver([dead_lettered(action())])
    queue._dead_letter_receiver = lambda: receiver  # type: ignore[method-assign]

    async def handler(letter: DeadLetter) -> bool:
        return True

    assert await queue.drain_dead_letters(handler, max_count=10) == 1
    assert receiver.completed == [action().id] and receiver.closed
    await queue.close()


async def test_the_in_memory_queue_drains_its_dead_letters_and_keeps_the_unhandled() -> None:
    queue = InMemoryActionQueue(max_delivery_count=1)
    await queue.send([action(), action("graph_alerts_v2:a-2")])
    while (delivery := queue.receive()) is not None:
        queue.abandon(delivery)
    kept = action("graph_alerts_v2:a-2").id
    assert all(d.enqueued_at is not None for d in queue.dead_letters)

    async def handler(letter: DeadLetter) -> bool:
        assert letter.enqueued_at is not None, "the give-up time counts from it"
        return letter.message_id != kept

    assert await queue.drain_dead_letters(handler, max_count=10) == 2
    assert [d.message_id for d in queue.dead_letters] == [kept]


def test_a_retry_gets_a_message_id_of_its_own_and_keeps_when_retrying_began() -> None:
    request = action()
    began = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    first = request.retried(began)
    second = first.retried(began + timedelta(minutes=5))
    assert (first.message_id, second.message_id) == (
        f"{request.id}-retry-1",
        f"{request.id}-retry-2",
    )
    assert second.retrying_since == began and second.id == request.id
