"""Fakes that record what happened, for unit tests of the services without Azurite."""

from __future__ import annotations

from collections.abc import AsyncIterator

from shared.models import LEGACY_CHAIN, AuditRecord
from shared.ports import AppendConflict, ChainHead, Checkpoint, IndexEntry


class MemoryAuditStore:
    """An insert-only `AuditStore` in a dict, by position; `records` lets a test break it on
    purpose. By default one chain numbered like the single-chain layout (position = number);
    with `chains`, lane chains as the table keeps them."""

    def __init__(self, chains: tuple[str, ...] = (LEGACY_CHAIN,)) -> None:
        self.chains = chains
        self.records: dict[int, AuditRecord] = {}
        self.index: list[IndexEntry] = []
        self.conflicts = 0

    async def head(self) -> AuditRecord | None:
        return self.records[max(self.records)] if self.records else None

    def _of(self, chain: str) -> list[AuditRecord]:
        mine = [r for r in self.records.values() if r.chain == chain]
        return sorted(mine, key=lambda r: r.chain_seq, reverse=True)

    async def chain_head(self, chain: str) -> ChainHead | None:
        mine = self._of(chain)
        if not mine:
            return None
        top = mine[0]
        return ChainHead(chain, top.chain_seq, top.hash, top.seq)

    async def heads(self) -> dict[str, ChainHead]:
        names = {r.chain for r in self.records.values()}
        return {name: head for name in names if (head := await self.chain_head(name))}

    async def insert_all(self, records: list[AuditRecord], index: list[IndexEntry]) -> None:
        taken = {(r.chain, r.chain_seq) for r in self.records.values()}
        if any((r.chain, r.chain_seq) in taken or r.seq in self.records for r in records):
            self.conflicts += 1
            raise AppendConflict("sequence taken")
        for record in records:
            self.records[record.seq] = record
        self.index += index

    async def get(self, seq: int) -> AuditRecord | None:
        return self.records.get(seq)

    async def newest_first(self, before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        for seq in sorted(self.records, reverse=True):
            if before_seq is None or seq < before_seq:
                yield self.records[seq]

    async def chain_newest_first(
        self, chain: str, whole: bool = False
    ) -> AsyncIterator[AuditRecord]:
        for record in self._of(chain):
            yield record


class MemoryAnchor:
    """An `AuditAnchor` in a list; `fail` makes the next appends fail."""

    def __init__(self) -> None:
        self.written: list[Checkpoint] = []
        self.fail = 0

    async def append(self, checkpoint: Checkpoint) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("anchor unreachable")
        self.written.append(checkpoint)

    async def checkpoints(self) -> list[Checkpoint]:
        return list(self.written)
