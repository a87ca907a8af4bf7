"""Defender XDR streaming API records from Event Hub. Unusable records are counted and
skipped; a storage or intake failure raises, and the retry policy runs the batch again (every
step is idempotent)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared import worker

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.retry(
    strategy="exponential_backoff",
    max_retry_count="5",
    minimum_interval="00:00:05",
    maximum_interval="00:05:00",
)
@bp.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%DEFENDER_EVENTHUB%",
    connection="DefenderEventHubConnection",
    cardinality=func.Cardinality.MANY,
)
async def ingest_defender_stream(events: list[func.EventHubEvent]) -> None:
    services = await worker.services()
    report = await services.defender_stream.ingest([event.get_body() for event in events])
    logger.info("defender stream: %s", report.as_dict())
