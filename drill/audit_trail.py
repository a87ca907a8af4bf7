"""Drill `audit`: many writers append to one trail against Azurite, a checkpoint anchors it in
the blob service, and each kind of tampering is applied to a copy of the trail, which must then
fail verification. An auditor can run it to see detection work:

    responder drill --scenario audit --json [--set writers=8 --set per_writer=1000]

The same run measures plain concurrent inserts of rows of the same size into another table, so
the audit throughput is compared with what the storage gives in this moment on this machine.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from drill.azurite import Azurite
from shared.adapters.audit_anchor_blob import blob_anchor
from shared.adapters.audit_table import RECORD, AuditTable, row_key
from shared.audit import AuditChain, Indexer, record_hash
from shared.audit_query import index_entries
from shared.config import Settings
from shared.models import Actor, AuditEntry, AuditEvent, AuditRecord

PARALLEL_COPIES = 8
# A copy transaction that lost its connection (azure-core does not retry a POST whose
# response never came) is sent again; it upserts, so sending it twice is harmless.
COPY_ATTEMPTS = 3


def _entry(writer: int, n: int) -> AuditEntry:
    return AuditEntry(
        event=AuditEvent.ACTION_EXECUTED,
        actor=Actor(),
        action_id=f"act-{writer:03d}-{n:06d}",
        kind="disable_account",
        target=f"user{n % 97}@contoso.onmicrosoft.com",
        alert_id=f"graph_alerts_v2:drill-{writer}-{n}",
        rule="contain-compromised-user",
        reason="rule contain-compromised-user: Suspicious sign-in",
        result={"status": "executed", "before": {"accountEnabled": True}},
    )


@dataclass
class Load:
    records: int
    failures: int
    seconds: float


async def append_load(
    table: TableClient, writers: int, per_writer: int, indexer: Indexer | None = None
) -> Load:
    """`writers` independent writers (as separate instances would be), each appending
    `per_writer` records one at a time."""
    failures = 0

    async def write(chain: AuditChain, writer: int) -> int:
        nonlocal failures
        done = 0
        for n in range(per_writer):
            try:
                await chain.append(_entry(writer, n))
                done += 1
            except Exception:
                failures += 1
        return done

    chains = [AuditChain(AuditTable(table), indexer=indexer) for _ in range(writers)]
    started = time.perf_counter()
    done = await asyncio.gather(*(write(chain, w) for w, chain in enumerate(chains)))
    return Load(sum(done), failures, time.perf_counter() - started)


async def plain_inserts(table: TableClient, writers: int, per_writer: int) -> float:
    """Seconds for the same number of plain concurrent inserts of rows of the same size."""
    body = json.dumps(_entry(0, 0).model_dump(mode="json"))

    async def write(writer: int) -> None:
        for n in range(per_writer):
            row = {"PartitionKey": f"w{writer}", "RowKey": f"{n:09d}", "Body": body}
            await table.create_entity(row)

    started = time.perf_counter()
    await asyncio.gather(*(write(w) for w in range(writers)))
    return time.perf_counter() - started


# --- tampering ------------------------------------------------------------------------------


async def _chain_records(table: TableClient, chain: str) -> list[AuditRecord]:
    """The chain's records, oldest first."""
    return [r async for r in AuditTable(table).chain_newest_first(chain)][::-1]


async def _longest_chain(table: TableClient) -> list[AuditRecord]:
    heads = await AuditTable(table).heads()
    chain = max(heads.values(), key=lambda head: head.seq).chain
    return await _chain_records(table, chain)


async def _row(table: TableClient, record: AuditRecord) -> dict[str, Any]:
    return dict(await table.get_entity(record.chain, RECORD + row_key(record.chain_seq)))


async def _delete(table: TableClient, record: AuditRecord) -> None:
    await table.delete_entity(record.chain, RECORD + row_key(record.chain_seq))


async def _rewrite(table: TableClient, records: list[AuditRecord], start: int, body: str) -> None:
    """Give record `start` a new stored text and re-hash it and every later record of its
    chain, as an attacker with the account keys and this code could."""
    prev = records[start].prev_hash
    for i, record in enumerate(records[start:], start):
        text = body if i == start else record.body
        digest = record_hash(record.chain_seq, prev, text)
        row = await _row(table, record)
        row.update({"Body": text, "PrevHash": prev, "Hash": digest})
        await table.update_entity(row, mode=UpdateMode.REPLACE)
        prev = digest


async def changed_field(table: TableClient) -> None:
    records = await _longest_chain(table)
    row = await _row(table, records[len(records) // 2])
    row["Body"] = row["Body"].replace("Suspicious sign-in", "Routine maintenance")
    await table.update_entity(row, mode=UpdateMode.REPLACE)


async def changed_copy(table: TableClient) -> None:
    """A readable column beside the hashed text that says something else (what Storage
    Explorer would show)."""
    records = await _longest_chain(table)
    row = await _row(table, records[len(records) // 2])
    row["Target"] = "someone.else@contoso.onmicrosoft.com"
    await table.update_entity(row, mode=UpdateMode.REPLACE)


async def deleted_record(table: TableClient) -> None:
    records = await _longest_chain(table)
    await _delete(table, records[len(records) // 2])


async def swapped_records(table: TableClient) -> None:
    records = await _longest_chain(table)
    middle = len(records) // 2
    first, second = await _row(table, records[middle]), await _row(table, records[middle + 1])
    moved = ("Body", "PrevHash", "Hash", "ChainSeq", "Seq")
    first_values = {name: first[name] for name in moved}
    first.update({name: second[name] for name in moved})
    second.update(first_values)
    await table.update_entity(first, mode=UpdateMode.REPLACE)
    await table.update_entity(second, mode=UpdateMode.REPLACE)


async def forged_rechained(table: TableClient) -> None:
    records = await _longest_chain(table)
    middle = len(records) // 2
    forged = records[middle].body.replace("Suspicious sign-in", "Routine maintenance")
    await _rewrite(table, records, middle, forged)


async def deleted_newest(table: TableClient) -> None:
    records = await _longest_chain(table)
    for record in records[-3:]:
        await _delete(table, record)


async def deleted_everything(table: TableClient) -> None:
    for head in (await AuditTable(table).heads()).values():
        for record in await _chain_records(table, head.chain):
            await _delete(table, record)


async def non_canonical_text(table: TableClient) -> None:
    """The same content written with spaces, hashed and chained consistently after it."""
    records = await _longest_chain(table)
    middle = len(records) // 2
    spaced = json.dumps(json.loads(records[middle].body), sort_keys=True, ensure_ascii=False)
    await _rewrite(table, records, middle, spaced)


TAMPERS: dict[str, Callable[[TableClient], Awaitable[None]]] = {
    "changed_field": changed_field,
    "changed_copy": changed_copy,
    "deleted_record": deleted_record,
    "swapped_records": swapped_records,
    "forged_rechained": forged_rechained,
    "deleted_newest": deleted_newest,
    "deleted_everything": deleted_everything,
    "non_canonical_text": non_canonical_text,
}


async def copy_trail(service: TableServiceClient, source: str, target: str) -> TableClient:
    """A copy of the trail's record rows (the index rows are not evidence)."""
    copy = await service.create_table(target)
    rows: dict[str, list[dict[str, Any]]] = {}
    async for entity in service.get_table_client(source).query_entities("RowKey lt 'x'"):
        rows.setdefault(entity["PartitionKey"], []).append(dict(entity))
    gate = asyncio.Semaphore(PARALLEL_COPIES)

    async def write(batch: list[dict[str, Any]]) -> None:
        async with gate:
            for attempt in range(1, COPY_ATTEMPTS + 1):
                try:
                    await copy.submit_transaction([("upsert", row) for row in batch])
                    return
                except (ServiceRequestError, ServiceResponseError):
                    if attempt == COPY_ATTEMPTS:
                        raise
                    await asyncio.sleep(0.2 * attempt)

    await asyncio.gather(
        *(
            write(part[start : start + 100])
            for part in rows.values()
            for start in range(0, len(part), 100)
        )
    )
    return copy


async def run(azurite: Azurite, writers: int = 8, per_writer: int = 1000) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:10]
    settings = Settings.model_validate(
        {
            "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
            "RESPONDER_AUDIT_ANCHOR_CONTAINER": f"drill-anchors-{suffix}",
            "RESPONDER_QUEUE": "memory",
        }
    )
    anchor = blob_anchor(settings, None)
    if anchor is None:
        raise RuntimeError("the audit drill needs Azurite's blob service (azurite-blob)")
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        trail = await service.create_table(f"AuditDrill{suffix}")
        plain = await service.create_table(f"PlainDrill{suffix}")
        indexed_trail = await service.create_table(f"AuditIndexed{suffix}")
        load = await append_load(trail, writers, per_writer)
        plain_s = await plain_inserts(plain, writers, per_writer)
        indexed = await append_load(indexed_trail, writers, per_writer, index_entries)
        chain = AuditChain(AuditTable(trail), anchor=anchor)
        checkpoint = await chain.checkpoint()
        intact = await chain.verify()
        tamper: dict[str, dict[str, Any]] = {}
        for n, (kind, apply) in enumerate(TAMPERS.items()):
            copy = await copy_trail(service, trail.table_name, f"AuditCopy{suffix}x{n}")
            await apply(copy)
            report = await AuditChain(AuditTable(copy), anchor=anchor).verify()
            tamper[kind] = {
                "detected": not report.ok,
                "first_broken_seq": report.first_broken_seq,
                "problem": report.problem,
            }
            await service.delete_table(copy.table_name)
        for name in (trail.table_name, plain.table_name, indexed_trail.table_name):
            await service.delete_table(name)
    await anchor.close()
    appends_per_s = load.records / load.seconds
    plain_per_s = writers * per_writer / plain_s
    indexed_per_s = indexed.records / indexed.seconds
    return {
        "writers": writers,
        "records": load.records,
        "append_failures": load.failures,
        "appends_per_s": round(appends_per_s, 1),
        "plain_inserts_per_s": round(plain_per_s, 1),
        "ratio": round(appends_per_s / plain_per_s, 3),
        # As the app is wired: each record's index rows in the record's own transaction.
        "indexed_append_failures": indexed.failures,
        "indexed_appends_per_s": round(indexed_per_s, 1),
        "indexed_ratio": round(indexed_per_s / plain_per_s, 3),
        "chains_used": len(checkpoint.heads),
        "checkpoint": {"count": checkpoint.count, "intact_trail_verified": intact.ok},
        "tamper": tamper,
    }


def passed(report: Mapping[str, Any]) -> bool:
    """Every record landed, the intact trail verifies and every tampering was detected."""
    return (
        report["append_failures"] == 0
        and report["indexed_append_failures"] == 0
        and report["records"] == report["writers"] * report["per_writer"]
        and report["checkpoint"]["intact_trail_verified"]
        and all(kind["detected"] for kind in report["tamper"].values())
    )


async def drill(writers: int, per_writer: int) -> dict[str, Any]:
    with Azurite() as azurite:
        report = await run(azurite, writers, per_writer)
    report["per_writer"] = per_writer
    report["passed"] = passed(report)
    return report
