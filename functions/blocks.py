"""The IP block sweep (timer): queues the unblock of every temporary block past its expiry, so
a lost scheduled message never leaves an address blocked for good."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%IP_BLOCK_SWEEP_SCHEDULE%", run_on_startup=False)
async def sweep_ip_blocks(timer: func.TimerRequest) -> None:
    services = await worker.services()
    expired = await services.sweeper.sweep(services.clock())
    if expired:
        logger.info("IP block sweep queued %s unblocks", expired)
