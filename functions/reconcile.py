"""The reconciler (timer): sends claims that never reached the queue, settles blocks the
registry left pending or unblocking, re-drives or records dead-lettered actions, raises an
alert for actions stuck open, and processes again or records the change notifications the
notifications queue dead-lettered."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False)
async def reconcile_actions(timer: func.TimerRequest) -> None:
    services = await worker.services()
    try:
        report = await services.reconciler.run()
        if any(report.as_dict().values()):
            logger.warning("action reconciler: %s", report.as_dict())
    finally:
        # Attempted even when the actions' steps failed; a failure of either fails the run.
        drained = await services.notification_dead_letters.drain()
        if drained.dead_letters:
            logger.warning("notification dead letters: %s", drained.as_dict())
