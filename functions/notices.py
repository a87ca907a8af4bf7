"""Notices to the people on call: the dispatcher's timer (one pass per minute over the audit
records added since the last, which is the per-minute digest) and the sender's Service Bus
trigger. Neither touches containment: both start after the records are audited."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%NOTICES_SCHEDULE%", run_on_startup=False)
async def dispatch_notices(timer: func.TimerRequest) -> None:
    services = await worker.services()
    report = await services.notice_dispatcher.run()
    if report.records:
        logger.info("notices: %s", report.as_dict())


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name="%NOTICES_QUEUE%", connection="ServiceBusConnection"
)
async def send_notice(message: func.ServiceBusMessage) -> None:
    """Raising abandons the message (Service Bus redelivers it); a notice that cannot be
    delivered is audited as notify.failed by the sender, not raised."""
    from pydantic import ValidationError

    from shared.notices.model import NoticeTask

    services = await worker.services()
    try:
        task = NoticeTask.model_validate_json(message.get_body())
    except ValidationError as exc:
        logger.warning(
            "notice message %s dropped: %s errors", message.message_id, exc.error_count()
        )
        return
    outcome = await services.notice_sender.deliver(task)
    logger.info("notice %s (%s): %s", task.id, task.channel, outcome)
