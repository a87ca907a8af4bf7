"""State clean-up (timer): deletes working-state rows past their time to live. The audit trail
is never touched."""

from __future__ import annotations

import azure.functions as func

from shared import worker

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%CLEANUP_SCHEDULE%", run_on_startup=False)
async def clean_up_state(timer: func.TimerRequest) -> None:
    services = await worker.services()
    await services.cleanup.run()
