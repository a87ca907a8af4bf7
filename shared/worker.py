"""The worker's services, as the triggers reach them. Importing this module loads nothing else:
the composition root, and with it the storage, Service Bus, identity and Graph SDKs, is imported
when a trigger first runs, so a cold start pays for the trigger definitions only
(docs/performance.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.container import Container


async def services() -> Container:
    """The worker's container, built from the environment on first use."""
    from shared import container

    return await container.current()
