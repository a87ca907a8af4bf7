"""The action executor: a Service Bus queue trigger. Returning completes the message (an action
that met an infrastructure error was put back on the queue, scheduled for later); raising
abandons it, so Service Bus redelivers it and, after the max delivery count, dead-letters it."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name="%ACTIONS_QUEUE%", connection="ServiceBusConnection"
)
async def execute_action(message: func.ServiceBusMessage) -> None:
    from pydantic import ValidationError

    from shared.models import ActionRequest
    from shared.ports import claim_etag

    services = await worker.services()
    try:
        action = ActionRequest.model_validate_json(message.get_body())
    except ValidationError as exc:
        await services.runner.reject_message(message.message_id, exc.error_count())
        return
    await services.runner.run(action, claim_etag(message.application_properties))
