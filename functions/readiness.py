"""The readiness check: `GET /api/readiness` for engineers (role Responder.Act), and the daily
timer `check_readiness` that audits whatever fails as an internal alert."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http import HttpProblem, authenticate, json_response
from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.route(route="readiness", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def readiness(req: func.HttpRequest) -> func.HttpResponse:
    from shared.identity import ROLE_ACT

    services = await worker.services()
    try:
        await authenticate(req, services.validator, ROLE_ACT)
    except HttpProblem as problem:
        return problem.response()
    report = await services.readiness.run()
    return json_response(report.as_dict())


@bp.timer_trigger(arg_name="timer", schedule="%READINESS_SCHEDULE%", run_on_startup=False)
async def check_readiness(timer: func.TimerRequest) -> None:
    services = await worker.services()
    report = await services.readiness.run_and_audit(services.chain)
    if not report.ok:
        logger.error(
            "readiness check: %s of %s checks fail", len(report.failures), len(report.checks)
        )
