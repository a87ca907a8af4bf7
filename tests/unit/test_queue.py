"""Action queues: the Service Bus message the app sends, and the in-memory queue's delivery
semantics that stand in for Service Bus locally."""

from __future__ import annotations

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch

from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.queue import (
    InMemoryActionQueue,
    ServiceBusActionQueue,
    to_service_bus_message,
)
from shared.models import ActionKind, ActionRequest

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
