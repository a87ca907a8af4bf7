"""Housekeeping timers of the guards: the emergency access health check, and the sweep that
expires approvals nobody answered (each expiry is audited)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%BREAKGLASS_HEALTH_SCHEDULE%", run_on_startup=False)
async def check_breakglass(timer: func.TimerRequest) -> None:
    services = await worker.services()
    findings = await services.monitor.check()
    if findings:
        logger.error("emergency access health check: %s problems audited", len(findings))


@bp.timer_trigger(arg_name="timer", schedule="%APPROVAL_SWEEP_SCHEDULE%", run_on_startup=False)
async def expire_approvals(timer: func.TimerRequest) -> None:
    services = await worker.services()
    expired = await services.approvals.expire_due()
    if expired:
        logger.info("approval sweep expired %s unanswered approvals", expired)
