"""Graph change notification triggers: the webhook and its lifecycle twin (HTTP), the queue
processor behind them (Service Bus) and the timer keeping the subscriptions alive.

The webhooks use AuthLevel.FUNCTION: Graph cannot send a header of ours, but it keeps the query
string of the notificationUrl, so NOTIFICATION_URL carries `?code=<function key>` and requests
without the key never reach the code. Each notification then proves its origin with the
clientState secret of its subscription (compared in constant time) and the tenant id. A
notification carrying a lifecycleEvent is handled as a lifecycle notification on either route,
since Graph allows one URL for both.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http import HttpProblem, json_response, read_json
from shared import worker
from shared.errors import InvalidInput

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


def validation_answer(token: str) -> func.HttpResponse:
    """Graph's validation handshake: the decoded token, as plain text, and nothing else."""
    from shared.watch.gate import validation_token_problem

    problem = validation_token_problem(token)
    if problem is not None:
        return HttpProblem(400, "Bad Request", problem).response()
    return func.HttpResponse(
        token,
        status_code=200,
        mimetype="text/plain",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


async def receive(req: func.HttpRequest, lifecycle: bool) -> func.HttpResponse:
    token = req.params.get("validationToken")
    if token is not None:
        return validation_answer(token)
    from shared.watch.gate import BatchTooLarge

    services = await worker.services()
    try:
        payload = read_json(req, services.settings.max_body_bytes)
        report = await services.notification_gate.accept(payload, lifecycle)
    except HttpProblem as problem:
        return problem.response()
    except BatchTooLarge as exc:
        return HttpProblem(413, "Payload Too Large", str(exc)).response()
    except InvalidInput as exc:
        return HttpProblem(400, "Bad Request", str(exc)).response()
    if report.rejected and not report.accepted:
        return HttpProblem(403, "Forbidden", "no notification passed the origin checks").response()
    return json_response(report.as_dict(), status=202)


@bp.route(route="notifications", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def notify_changes(req: func.HttpRequest) -> func.HttpResponse:
    return await receive(req, lifecycle=False)


@bp.route(route="notifications/lifecycle", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def notify_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    return await receive(req, lifecycle=True)


@bp.service_bus_queue_trigger(
    arg_name="message", queue_name="%NOTIFICATIONS_QUEUE%", connection="ServiceBusConnection"
)
async def process_notification(message: func.ServiceBusMessage) -> None:
    """Raising abandons the message, so Service Bus redelivers it."""
    from pydantic import ValidationError

    from shared.watch.ports import ChangeNotice

    services = await worker.services()
    try:
        notice = ChangeNotice.model_validate_json(message.get_body())
    except ValidationError as exc:
        logger.warning(
            "notification message %s dropped: %s errors", message.message_id, exc.error_count()
        )
        return
    if notice.lifecycle_event:
        renewal = await services.subscriptions.on_lifecycle(notice)
        logger.info("lifecycle %s of %s: %s", notice.lifecycle_event, notice.resource, renewal)
        return
    outcome = await services.changes.process(notice)
    logger.info("notification %s (%s): %s", notice.id, notice.purpose, outcome)


@bp.timer_trigger(arg_name="timer", schedule="%SUBSCRIPTION_RENEW_SCHEDULE%", run_on_startup=False)
async def renew_subscriptions(timer: func.TimerRequest) -> None:
    services = await worker.services()
    report = await services.subscriptions.ensure()
    logger.info("subscriptions: %s", dict(report))
