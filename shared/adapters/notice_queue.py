"""The queue between the notice dispatcher and the sender: Service Bus in Azure (message id =
the task id, so duplicate detection drops a repeat), in memory locally. Least privilege: Azure
Service Bus Data Sender and Receiver on the `notices` queue."""

from __future__ import annotations

from datetime import datetime

from azure.servicebus import ServiceBusMessage

from shared.adapters.queue import CONTENT_TYPE, InMemoryQueue, ServiceBusQueue
from shared.notices.model import NoticeTask


def _message(task: NoticeTask) -> ServiceBusMessage:
    return ServiceBusMessage(
        task.model_dump_json(),
        message_id=task.message_id,
        content_type=CONTENT_TYPE,
        subject=str(task.channel),
    )


class ServiceBusNoticeQueue(ServiceBusQueue):
    async def send(self, tasks: list[NoticeTask]) -> None:
        await self.send_messages([_message(t) for t in tasks])

    async def schedule(self, tasks: list[NoticeTask], at: datetime) -> None:
        if tasks:
            await self._get_sender().schedule_messages([_message(t) for t in tasks], at)


class InMemoryNoticeQueue(InMemoryQueue):
    async def send(self, tasks: list[NoticeTask]) -> None:
        for task in tasks:
            self.put(task.message_id, task.model_dump_json().encode())

    async def schedule(self, tasks: list[NoticeTask], at: datetime) -> None:
        for task in tasks:
            self.put(task.message_id, task.model_dump_json().encode(), at)
