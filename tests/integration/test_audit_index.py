"""Audit queries on Azurite through the real container: the index written on append, queries by
target, incident, actor and outcome, a rebuild after the index is lost, paged exports, and
the `responder audit` commands reading the configured tables."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drill.azurite import Azurite
from drill.host import LocalHost
from shared import audit
from shared.actions.runner import OUTCOME_RECORDS, _own_outcome
from shared.adapters.audit_table import index_prefix, row_key
from shared.adapters.queue import InMemoryActionQueue
from shared.adapters.table_service import ensure_tables
from shared.audit import lane_chain
from shared.audit_export import CSV_FIELDS, export_lines, verify_export
from shared.audit_query import AuditFilter
from shared.cli import main
from shared.config import Settings
from shared.container import Container
from shared.models import (
    ActionKind,
    ActionRequest,
    Actor,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    utcnow,
)
from shared.ports import IndexDimension, IndexEntry
from shared.simulator import SimulatedTenant
from tests.conftest import ADELE, installed, settings_for

pytestmark = pytest.mark.integration

ATTACKER = "185.220.101.47"
ENGINEER = "Soc.Lead@contoso.onmicrosoft.com"


def indexed_settings(sim: SimulatedTenant, azurite: Azurite, **overrides: Any) -> Settings:
    """Settings with an index table of the test's own, beside its own audit table."""
    index = f"Index{uuid.uuid4().hex[:10]}"
    return settings_for(
        sim, azurite, RESPONDER_AUDIT_INDEX_TABLE=index, IP_BLOCK_BATCH_SECONDS=0, **overrides
    )


@pytest.fixture
async def responder(sim: SimulatedTenant, azurite: Azurite) -> AsyncIterator[Container]:
    async with installed(indexed_settings(sim, azurite)) as built:
        yield built


def compromised(alert_id: str, incident: str, *addresses: str) -> dict[str, Any]:
    """A generic alert naming Adele as compromised (and addresses as attackers): the default
    playbook disables her, revokes her sessions and blocks the addresses."""
    entities: list[dict[str, Any]] = [
        {"kind": "user", "upn": ADELE.user_principal_name, "roles": ["compromised"]}
    ]
    entities += [{"kind": "ip", "address": a, "roles": ["attacker"]} for a in addresses]
    return {
        "id": alert_id,
        "title": "Impossible travel followed by MFA registration",
        "severity": "high",
        "category": "InitialAccess",
        "incident_id": incident,
        "entities": entities,
    }


async def run_alerts(services: Container, *payloads: dict[str, Any]) -> None:
    for payload in payloads:
        await services.intake.handle_payload(payload)
    assert isinstance(services.queue, InMemoryActionQueue)
    await LocalHost().pump(services.queue)


async def chain(services: Container) -> list[AuditRecord]:
    return [record async for record in services.audit_store.newest_first()]


async def seqs(services: Container, flt: AuditFilter, limit: int = 3) -> list[int]:
    """Every match, page by page."""
    found: list[int] = []
    page = await services.audit_query.page(flt, limit)
    found += [r.seq for r in page.records]
    while page.continuation:
        page = await services.audit_query.page(flt, limit, page.continuation)
        found += [r.seq for r in page.records]
    return found


async def empty_index(services: Container) -> None:
    """Delete the index rows beside the records (as only the storage keys can)."""
    table = services.tables.get_table_client(services.settings.audit_table)
    async for entity in table.query_entities("RowKey ge 'x'"):
        await table.delete_entity(entity["PartitionKey"], entity["RowKey"])


def other_names(entry: AuditEntry) -> int:
    """Names of an account action's target that the directory returned beside the requested
    one (its object id for a UPN target): the record is filed under those too."""
    before = entry.result.get("before")
    if entry.kind not in ("disable_account", "enable_account", "revoke_sessions"):
        return 0
    if not isinstance(before, dict) or not entry.target:
        return 0
    names = {str(before[key]).lower() for key in ("id", "userPrincipalName") if before.get(key)}
    return len(names - {entry.target.lower()})


async def test_actions_are_indexed_as_they_are_audited(responder: Container) -> None:
    await run_alerts(responder, compromised("alert-1", "INC-1", ATTACKER))
    await run_alerts(responder, compromised("alert-2", "INC-2"))
    records = await chain(responder)
    target = ADELE.user_principal_name
    expected = {
        "target": [r.seq for r in records if r.entry.target == target],
        "incident": [r.seq for r in records if r.entry.incident_id == "INC-2"],
        "actor": [r.seq for r in records if r.entry.actor.name == "m365-responder"],
        "outcome": [r.seq for r in records if r.entry.event is AuditEvent.ACTION_ALREADY_DONE],
        "ip": [r.seq for r in records if r.entry.target == f"{ATTACKER}/32"],
    }
    # Two alerts for Adele: disabled the first time, already disabled the second.
    assert len(expected["target"]) == 8 and len(expected["outcome"]) == 1
    assert expected["incident"] and expected["ip"]

    assert await seqs(responder, AuditFilter(target=target.upper())) == expected["target"]
    assert await seqs(responder, AuditFilter(incident="INC-2")) == expected["incident"]
    assert await seqs(responder, AuditFilter(actor="M365-Responder")) == expected["actor"]
    outcome = AuditFilter(outcome="action.already_done")
    assert await seqs(responder, outcome) == expected["outcome"]
    assert await seqs(responder, AuditFilter(target=ATTACKER)) == expected["ip"]
    by_alert = [r.seq for r in records if r.entry.alert_id == "generic:alert-1"]
    assert await seqs(responder, AuditFilter(alert="generic:alert-1")) == by_alert
    both = AuditFilter(incident="INC-1", kind="revoke_sessions", outcome="action.executed")
    [revoked] = await seqs(responder, both)
    assert await responder.audit_store.get(revoked) in records

    # The index rows sit beside the records, the values hashed into their keys, never the
    # values themselves.
    table = responder.tables.get_table_client(responder.settings.audit_table)
    rows = [e async for e in table.query_entities("RowKey ge 'x'")]
    prefixes = {r["RowKey"][: -len(row_key(0))] for r in rows}
    assert prefixes >= {
        index_prefix(IndexDimension.TARGET, target),
        index_prefix(IndexDimension.INCIDENT, "INC-1"),
    }
    assert len(rows) == sum(
        len([v for v in (e.kind, e.target, e.incident_id, e.alert_id) if v]) + 2 + other_names(e)
        for e in (r.entry for r in records)
    )
    assert target not in json.dumps([dict(r) for r in rows], default=str)


async def test_reindex_rebuilds_identical_answers_after_the_index_is_emptied(
    responder: Container,
) -> None:
    await run_alerts(responder, compromised("alert-1", "INC-1", ATTACKER))
    await responder.chain.append(
        AuditEntry(
            event=AuditEvent.ACTION_REFUSED,
            actor=Actor(kind="engineer", name=ENGINEER),
            kind="disable_account",
            target="bg-emergency-01@contoso.onmicrosoft.com",
            incident_id="INC-1",
            reason="protected identity",
        )
    )
    filters = [
        AuditFilter(target=ADELE.user_principal_name),
        AuditFilter(incident="INC-1"),
        AuditFilter(actor=ENGINEER),
        AuditFilter(outcome="action.executed", kind="block_ip"),
    ]
    before = [await seqs(responder, flt) for flt in filters]
    assert all(before)

    await empty_index(responder)
    assert [await seqs(responder, flt) for flt in filters] == [[], [], [], []]
    rebuilt = await responder.audit_query.reindex()
    assert rebuilt.records == len(await chain(responder))
    assert [await seqs(responder, flt) for flt in filters] == before
    # A second rebuild over an intact index changes nothing.
    assert await responder.audit_query.reindex() == rebuilt
    assert [await seqs(responder, flt) for flt in filters] == before


def bulk(n: int) -> AuditEntry:
    return AuditEntry(
        event=AuditEvent.ACTION_EXECUTED,
        actor=Actor(kind="engineer", name=f"engineer{n % 3}@contoso.com"),
        action_id=f"act-{n}",
        kind="disable_account",
        target=ADELE.user_principal_name,
        incident_id=f"INC-{n % 4}",
        reason=f'=cmd|" /C calc"!A{n}, line\nbreak' if n % 50 == 0 else "Kennwort-Spray",
        result={"n": n},
    )


async def test_an_export_of_300_records_follows_its_pages_on_azurite(responder: Container) -> None:
    await responder.chain.append_all([bulk(n) for n in range(300)])
    export = responder.audit_export

    pages: list[int] = []
    positions = [r.seq for r in await chain(responder)]
    csv_lines = export_lines(
        export, AuditFilter(), "csv", 70, lambda page: pages.append(page.records)
    )
    csv_text = "".join([line async for line in csv_lines])
    assert pages == [70, 70, 70, 70, 20]
    rows = list(csv.reader(io.StringIO(csv_text, newline="")))
    assert len(rows) == 301 and [int(row[0]) for row in rows[1:]] == positions
    reason = CSV_FIELDS.index("reason")
    assert all(not row[reason].startswith("=") for row in rows[1:])

    whole = [line async for line in export_lines(export, AuditFilter(), "jsonl", 128)]
    verdict = verify_export(whole)
    assert verdict.ok and verdict.whole_trail and verdict.records_checked == 300
    by_target = AuditFilter(target=ADELE.user_principal_name)
    lines = [line async for line in export_lines(export, by_target, "jsonl", 64)]
    records = [json.loads(line) for line in lines[1:-1]]
    assert [record["position"] for record in records] == positions
    assert [record["seq"] for record in records] == list(range(300, 0, -1))
    by_incident = AuditFilter(incident="INC-1")
    lines = [line async for line in export_lines(export, by_incident, "jsonl", 64)]
    assert len(lines) == 75 + 2 and verify_export(lines).ok


async def test_an_outcome_is_looked_up_through_the_index_however_busy_the_trail(
    responder: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried action looks for the outcome an earlier delivery may have audited: through
    the index by its target, bounded by its recording mark, never by walking the trail."""
    chain = responder.chain
    executed = frozenset({str(AuditEvent.ACTION_EXECUTED)})
    [before] = await chain.append_all([bulk(1)])  # act-1 on Adele, up to the mark
    mark = before.seq
    [outcome] = await chain.append_all([bulk(2)])
    busy = [bulk(n).model_copy(update={"target": f"user{n}@contoso.com"}) for n in range(3, 250)]
    await chain.append_all(busy)
    # Adele under another spelling: the target is normalized as the index files it.
    upper = ADELE.user_principal_name.upper()
    walked = await chain.find({"act-1", "act-2"}, executed, mark)
    assert {i: r.seq for i, r in walked.items()} == {"act-2": outcome.seq}

    async def no_walk(before_seq: int | None = None) -> AsyncIterator[AuditRecord]:
        raise AssertionError("the trail was walked")
        yield  # pragma: no cover

    monkeypatch.setattr(responder.audit_store, "newest_first", no_walk)
    targets = {"act-1": upper, "act-2": upper}
    found = await chain.find({"act-1", "act-2"}, executed, mark, targets)
    assert {i: r.seq for i, r in found.items()} == {"act-2": outcome.seq}
    assert found["act-2"] == outcome
    # The mark bounds the lookup: nothing after the outcome itself; act-1 before the mark.
    assert await chain.find({"act-2"}, executed, outcome.seq, targets) == {}
    earlier = await chain.find({"act-1"}, executed, before.seq - 1, targets)
    assert earlier["act-1"].seq == before.seq
    assert await chain.find({"act-2"}, frozenset({"action.failed"}), mark, targets) == {}


async def test_an_approved_run_finds_its_outcome_below_its_held_record_in_one_second(
    responder: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positions order one second's records by lane: an approved run's outcome appended after
    the held record of the same action can stand below it. The run's lookup must still find
    its own outcome, through the index and by walking the trail alike."""
    chain = responder.chain
    second = audit._now_second()
    monkeypatch.setattr(audit, "_now_second", lambda: second)
    approved = ActionRequest(
        id="act-held",
        kind=ActionKind.DISABLE_ACCOUNT,
        target=ADELE.user_principal_name,
        params={"approved_by": "grace@contoso.com"},
    )
    mark = await chain.head_seq()
    held, executed = (
        bulk(1).model_copy(update={"action_id": approved.id, "event": event})
        for event in (AuditEvent.ACTION_HELD, AuditEvent.ACTION_EXECUTED)
    )
    chain._free = [lane_chain(20)]  # the held record takes a high lane...
    [held_record] = await chain.append_all([held])
    chain._free = [lane_chain(3)]  # ...the run's outcome, appended after it, a low one
    [outcome] = await chain.append_all([executed])
    assert outcome.seq < held_record.seq, "the later record stands below the earlier one"

    def own(record: AuditRecord) -> bool:
        return _own_outcome(approved, record)

    targets = {approved.id: approved.target}
    indexed = await chain.find({approved.id}, OUTCOME_RECORDS, mark, targets, accept=own)
    walked = await chain.find({approved.id}, OUTCOME_RECORDS, mark, accept=own)
    assert indexed[approved.id].seq == walked[approved.id].seq == outcome.seq
    newest = await chain.find({approved.id}, OUTCOME_RECORDS, mark, targets)
    assert newest[approved.id].seq == held_record.seq, "without `accept`, the highest position"


async def test_index_reads_are_bounded_on_both_sides(responder: Container) -> None:
    records = await responder.chain.append_all([bulk(n) for n in range(1, 6)])
    positions = [r.seq for r in records]
    index, target = responder.audit_index, ADELE.user_principal_name.lower()

    async def filed(**bounds: int) -> list[int]:
        return [s async for s in index.seqs(IndexDimension.TARGET, target, **bounds)]

    assert await filed() == positions[::-1]
    assert await filed(after_seq=positions[1]) == positions[:1:-1]
    assert await filed(before_seq=positions[3], after_seq=positions[0]) == positions[2:0:-1]
    # The older index table, of the single-chain layout's small sequence numbers.
    await index.add([IndexEntry(IndexDimension.TARGET, target, n, utcnow()) for n in (5, 9, 12)])
    assert (await filed())[-3:] == [12, 9, 5]
    assert await filed(after_seq=5) == [*positions[::-1], 12, 9]
    assert await filed(before_seq=12, after_seq=5) == [9]
    assert await filed(after_seq=positions[3]) == [positions[4]]


async def test_a_missing_index_table_never_fails_an_append(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    """The index rows of new records sit beside them: the older index table plays no part."""
    settings = indexed_settings(sim, azurite)
    services = Container(settings)
    try:
        await ensure_tables(services.tables, settings.audit_table)
        record = await services.chain.append(
            AuditEntry(event=AuditEvent.ACTION_PLANNED, actor=Actor(), reason="no index table")
        )
        assert record.chain_seq == 1 and (await services.chain.verify()).ok
    finally:
        await services.close()


# The command line -----------------------------------------------------------------------------


POSITIONS: dict[int, str] = {}


@pytest.fixture
def configured(sim: SimulatedTenant, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A trail of 12 records (their positions in POSITIONS, by bulk number), and the
    environment `responder` reads its settings from."""
    settings = indexed_settings(sim, azurite)

    async def write() -> None:
        services = await Container(settings).prepare()
        records = await services.chain.append_all([bulk(n) for n in range(1, 13)])
        POSITIONS.clear()
        POSITIONS.update({n: str(r.seq) for n, r in enumerate(records, 1)})
        await services.close()

    asyncio.run(write())
    monkeypatch.delenv("RESPONDER_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("RESPONDER_TABLES_CONNECTION", azurite.connection_string)
    monkeypatch.setenv("RESPONDER_AUDIT_TABLE", settings.audit_table)
    monkeypatch.setenv("RESPONDER_AUDIT_INDEX_TABLE", settings.audit_index_table)
    monkeypatch.setenv("RESPONDER_QUEUE", "memory")
    return settings


def test_cli_query_pages_with_the_same_filters(
    configured: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["audit", "query", "--actor", "ENGINEER1@contoso.com", "--kind", "disable_account"]
    assert main([*args, "--limit", "1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    at = POSITIONS
    assert [r["seq"] for r in first["records"]] == [at[10]] and first["continuation"]
    assert main([*args, "--limit", "5", "--json", "--continuation", first["continuation"]]) == 0
    second = json.loads(capsys.readouterr().out)
    assert [r["seq"] for r in second["records"]] == [at[7], at[4], at[1]]
    assert second["continuation"] is None
    assert set(second["records"][0]) >= {"seq", "at", "event", "actor", "reason", "hash"}

    assert main(["audit", "query", "--kind", "disable_account", "--limit", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["seq", "at", "event", "actor", "kind", "target", "incident", "reason"]
    assert [line.split()[0] for line in out[1:4]] == [at[12], at[11], at[10]]
    assert out[-1].startswith("more: --continuation ")

    assert main(["audit", "query", "--target", "nobody@contoso.com"]) == 0
    assert capsys.readouterr().out == "no matching audit records\n"


def test_cli_export_follows_the_pages_and_verifies_the_file_offline(
    configured: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "audit.csv"
    assert main(["audit", "export", "--format", "csv", "--output", str(output)]) == 0
    shown = capsys.readouterr()
    assert shown.out == f"exported 12 audit records to {output}\n"
    assert shown.err == "audit export: 12 records, done\n"
    rows = list(csv.reader(io.StringIO(output.read_text(encoding="utf-8"), newline="")))
    assert len(rows) == 13 and rows[0][0] == "seq"

    trail = tmp_path / "trail.jsonl"
    args = ["audit", "export", "--format", "jsonl", "--page-size", "5", "--output", str(trail)]
    assert main(args) == 0
    assert capsys.readouterr().err.splitlines() == [
        "audit export: 5 records…",
        "audit export: 10 records…",
        "audit export: 12 records, done",
    ]
    assert main(["audit", "verify", "--file", str(trail), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verified"] and verdict["records_checked"] == 12
    assert verdict["head_seq"] == int(POSITIONS[12])

    lines = trail.read_text(encoding="utf-8").splitlines(keepends=True)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(lines[:3] + [lines[3].replace("Kennwort", "Passwort")] + lines[4:]))
    assert main(["audit", "verify", "--file", str(tampered)]) == 1
    broken = capsys.readouterr().out
    assert broken.startswith(f"export BROKEN at record {POSITIONS[10]}: line 4: record c")
    assert f"#10 (position {POSITIONS[10]}) content does not match its hash" in broken
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:6]))
    assert main(["audit", "verify", "--file", str(cut)]) == 1
    assert "the file is cut off after record c" in capsys.readouterr().out

    assert main(["audit", "export", "--format", "jsonl", "--since", "2000-01-01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line).get("position") for line in lines[1:-1]] == [
        int(POSITIONS[n]) for n in range(12, 0, -1)
    ]

    assert main(["audit", "export", "--format", "xml", "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "responder: --format must be csv or jsonl\n"
    assert not (tmp_path / "x").exists()
    assert main(["audit", "verify", "--file", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_reindex_rebuilds_the_index(
    configured: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async def wipe() -> None:
        services = Container(configured)
        await services.tables.delete_table(configured.audit_index_table)
        await services.close()

    asyncio.run(wipe())
    assert main(["audit", "query", "--incident", "INC-2"]) == 2
    assert "index table does not exist" in capsys.readouterr().err
    assert main(["audit", "reindex"]) == 0
    # Each record: actor, kind, target, incident, outcome.
    assert capsys.readouterr().out == "audit index rebuilt: 60 entries for 12 records\n"
    assert main(["audit", "query", "--incident", "INC-2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert [r["seq"] for r in records] == [POSITIONS[10], POSITIONS[6], POSITIONS[2]]
