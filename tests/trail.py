"""Reading the audit trail in the order things happened, for assertions about sequence."""

from __future__ import annotations

from shared.models import AuditRecord
from shared.ports import AuditStore


async def oldest_first(store: AuditStore) -> list[AuditRecord]:
    """Every record, oldest first by the time its entry was made. Positions order records by
    second, then lane, then number: two writers on different lanes within one second (a CLI
    beside the host, say) are not in position order, so "the last record" needs the time."""
    records = [r async for r in store.newest_first()]
    return sorted(records, key=lambda r: (r.entry.at, r.seq))
