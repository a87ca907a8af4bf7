"""Alert triggers: the alerts_v2 poller (timer) and the alert webhook (HTTP) for Sentinel
playbooks and other senders."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http import HttpProblem, json_response, read_json, require_key
from shared import worker
from shared.errors import InvalidInput

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%ALERT_POLL_SCHEDULE%", run_on_startup=False)
async def poll_alerts(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.warning("alert poll is running late")
    from shared.models import utcnow

    services = await worker.services()
    report = await services.poller.poll(utcnow())
    logger.info(
        "alerts_v2 poll: %s seen, %s handled, %s duplicates, %s invalid, %s failed, "
        "%s actions queued",
        report.alerts_seen,
        report.alerts_handled,
        report.duplicates,
        report.invalid,
        report.failed,
        report.actions_queued,
    )


@bp.route(route="alerts", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def ingest_alert(req: func.HttpRequest) -> func.HttpResponse:
    services = await worker.services()
    try:
        require_key(req, services.settings.webhook_secret)
        payload = read_json(req, services.settings.max_body_bytes)
        results = await services.intake.handle_payload(payload)
    except HttpProblem as problem:
        return problem.response()
    except InvalidInput as exc:
        return HttpProblem(400, "Invalid alert", str(exc)).response()
    return json_response({"alerts": [r.as_dict() for r in results]}, status=202)
