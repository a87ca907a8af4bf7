"""A user target is found by any name the trail recorded for it: the alert's UPN and display
name are kept in the action's parameters at planning, the directory's object id, UPN and
display name in the result when the action runs; a query for one name finds the account's
records under the others, and the content still decides what is returned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.audit import AuditChain
from shared.audit_query import AuditFilter, AuditQuery, identities, index_entries, page_row
from shared.models import (
    Actor,
    Alert,
    AlertSource,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Entity,
    EntityKind,
)
from shared.policy import Guards, Playbook, Policy, PolicySettings
from shared.ports import IndexDimension, IndexEntry
from tests.unit.test_audit_query import CountingStore, MemoryIndex

KEY = b"k" * 32
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ADELE_ID = "5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01"
ADELE_UPN = "adele.vance@contoso.onmicrosoft.com"
MEGAN_ID = "9d3c1a7e-2b4f-4c6d-8e0f-1a2b3c4d5e6f"


def record(
    n: int,
    target: str,
    event: AuditEvent = AuditEvent.ACTION_PLANNED,
    params: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    kind: str = "disable_account",
) -> AuditEntry:
    return AuditEntry(
        event=event,
        actor=Actor(),
        action_id=f"act-{n}",
        kind=kind,
        target=target,
        params=params or {},
        result={"status": "executed", "before": before} if before else {"decision": "execute"},
        at=START + timedelta(minutes=n),
    )


def adele_seen(upn: str = ADELE_UPN) -> dict[str, Any]:
    return {"id": ADELE_ID, "userPrincipalName": upn, "displayName": "Adele Vance"}


async def trail(entries: list[AuditEntry]) -> tuple[CountingStore, MemoryIndex, AuditQuery]:
    store, index = CountingStore(), MemoryIndex()
    query = AuditQuery(store, index, KEY)
    await AuditChain(store, listeners=[query.index_records]).append_all(entries)
    store.reset_counts()
    return store, index, query


async def seqs(query: AuditQuery, flt: AuditFilter) -> list[int]:
    return [r.seq async for r in _all(query, flt)]


async def _all(query: AuditQuery, flt: AuditFilter) -> AsyncIterator[AuditRecord]:
    async for found in query.matching(flt):
        yield found


def the_account() -> list[AuditEntry]:
    """Adele's actions: one requested by object id (planned, then run), one by UPN (planned),
    one from an alert that named her UPN; Megan's action in between; an IP block."""
    return [
        record(1, ADELE_ID),
        record(2, MEGAN_ID),
        record(3, ADELE_ID, AuditEvent.ACTION_EXECUTED, before=adele_seen()),
        record(4, ADELE_UPN, kind="revoke_sessions"),
        record(5, ADELE_ID, params={"target_upn": "Adele.Vance@Contoso.onmicrosoft.com"}),
        record(6, "203.0.113.7/32", kind="block_ip", before={"blocked": False}),
    ]


def test_a_record_knows_the_names_the_trail_saw() -> None:
    entries = the_account()
    assert identities(entries[0]) == {ADELE_ID}
    assert identities(entries[2]) == {ADELE_ID, ADELE_UPN}
    assert identities(entries[4]) == {ADELE_ID, ADELE_UPN}
    # An address's result is no user: nothing but the target.
    assert identities(entries[5]) == {"203.0.113.7/32"}


async def test_the_index_files_a_run_action_under_each_name() -> None:
    [planned, _, executed, *_] = await AuditChain(CountingStore()).append_all(the_account())
    targets = {e.value for e in index_entries(executed) if e.dimension is IndexDimension.TARGET}
    assert targets == {ADELE_ID, ADELE_UPN}
    targets = {e.value for e in index_entries(planned) if e.dimension is IndexDimension.TARGET}
    assert targets == {ADELE_ID}


async def test_a_upn_finds_the_accounts_records_under_its_object_id_too() -> None:
    _, _, query = await trail(the_account())
    assert await seqs(query, AuditFilter(target=ADELE_UPN.upper())) == [5, 4, 3, 1]
    assert await seqs(query, AuditFilter(target=ADELE_ID)) == [5, 4, 3, 1]
    assert await seqs(query, AuditFilter(target=MEGAN_ID)) == [2]
    assert await seqs(query, AuditFilter(target="megan@contoso.onmicrosoft.com")) == []
    paged = await query.page(AuditFilter(target=ADELE_UPN), limit=2)
    rest = await query.page(AuditFilter(target=ADELE_UPN), 2, paged.continuation)
    assert [r.seq for r in paged.records + rest.records] == [5, 4, 3, 1]


async def test_without_a_linking_record_a_upn_finds_only_its_own_records() -> None:
    # Records 3 (the directory's names) and 5 (the alert's) are what tie the two names.
    entries = [e for n, e in enumerate(the_account(), start=1) if n not in (3, 5)]
    _, _, query = await trail(entries)
    assert await seqs(query, AuditFilter(target=ADELE_UPN)) == [3]
    assert await seqs(query, AuditFilter(target=ADELE_ID)) == [1]


async def test_a_forged_index_entry_cannot_link_another_account() -> None:
    store, index, query = await trail(the_account())
    # Megan's record filed under Adele's UPN: read, but its content does not name Adele.
    await index.add([IndexEntry(IndexDimension.TARGET, ADELE_UPN, 2, START)])
    assert await seqs(query, AuditFilter(target=ADELE_UPN)) == [5, 4, 3, 1]
    assert store.walks == 0


async def test_the_page_row_shows_the_names_seen_at_the_time() -> None:
    records = await AuditChain(CountingStore()).append_all(the_account())
    executed, by_alert, address = page_row(records[2]), page_row(records[4]), page_row(records[5])
    assert (executed["target_upn"], executed["target_name"]) == (ADELE_UPN, "Adele Vance")
    assert executed["action_id"] == "act-3" and executed["params"] == "{}"
    assert by_alert["target_upn"] == "Adele.Vance@Contoso.onmicrosoft.com"
    assert (address["target_upn"], address["target_name"]) == ("", "")


def test_the_plan_keeps_the_names_the_alert_gave_the_user() -> None:
    book = Playbook.model_validate(
        {
            "version": 1,
            "rules": [{"name": "contain", "actions": [{"kind": "disable_account"}]}],
        }
    )
    guards = Guards.from_settings(PolicySettings.model_validate({}))
    alert = Alert(
        source=AlertSource.GENERIC,
        alert_id="a-1",
        title="Token theft",
        entities=[
            Entity(
                kind=EntityKind.USER,
                user_id=ADELE_ID,
                upn=" Adele.Vance@contoso.onmicrosoft.com ",
                display_name="Adele <b>Vance</b>",
                roles=("compromised",),
            ),
            Entity(kind=EntityKind.USER, user_id=MEGAN_ID, roles=("compromised",)),
        ],
    )
    adele, megan = Policy(book, guards).plan(alert).actions
    assert adele.params == {
        "target_upn": "Adele.Vance@contoso.onmicrosoft.com",
        "target_name": "Adele <b>Vance</b>",
    }
    assert megan.params == {}
