"""The audit checkpoint (timer): writes every audit chain's head to the write-once blob
container. A checkpoint that cannot be written is retried, logged as an error and fails the
run (a failed function run is what the platform alerts on); the readiness check names it too."""

from __future__ import annotations

import azure.functions as func

from shared import worker

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(arg_name="timer", schedule="%AUDIT_CHECKPOINT_SCHEDULE%", run_on_startup=False)
async def checkpoint_audit(timer: func.TimerRequest) -> None:
    services = await worker.services()
    await services.chain.checkpoint()
