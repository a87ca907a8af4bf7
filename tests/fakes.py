"""Fakes that record what happened, for unit tests of the services without Azurite."""

from __future__ import annotations

from collections.abc import AsyncIterator

from shared.models import AuditRecord
from shared.ports import AppendConflict


class MemoryAuditStore:
    """An insert-only `AuditStore` in a dict; `tamper` lets a test break it on purpose."""

    def __init__(self) -> None:
        self.records: dict[int, AuditRecord] = {}
        self.conflicts = 0

    async def head(self) -> AuditRecord | None:
        return self.records[max(self.records)] if self.records else None

    async def insert_all(self, records: list[AuditRecord]) -> None:
        if any(record.seq in self.records for record in records):
            self.conflicts += 1
            raise AppendConflict("sequence taken")
        for record in records:
            self.records[record.seq] = record

    async def get(self, seq: int) -> AuditRecord | None:
        return self.records.get(seq)

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        for seq in sorted(self.records, reverse=True):
            if before_seq is None or seq < before_seq:
                yield self.records[seq]
