"""The queue between the change notification webhook and its processing: Service Bus in
Azure (message id = the notification's key, so duplicate detection drops a replay), in memory
locally. Its dead-letter queue is drained by the reconciler's timer. Least privilege: Azure
Service Bus Data Sender on the `notifications` queue, and Data Receiver (which the trigger
needs anyway) to read its dead-letter queue."""

from __future__ import annotations

from azure.servicebus import ServiceBusMessage

from shared.adapters.queue import CONTENT_TYPE, InMemoryQueue, ServiceBusQueue
from shared.watch.ports import ChangeNotice


def _message(notice: ChangeNotice) -> ServiceBusMessage:
    return ServiceBusMessage(
        notice.model_dump_json(), message_id=notice.id, content_type=CONTENT_TYPE
    )


class ServiceBusNotificationQueue(ServiceBusQueue):
    async def send(self, notices: list[ChangeNotice]) -> None:
        await self.send_messages([_message(n) for n in notices])


class InMemoryNotificationQueue(InMemoryQueue):
    async def send(self, notices: list[ChangeNotice]) -> None:
        for notice in notices:
            self.put(notice.id, notice.model_dump_json().encode())
