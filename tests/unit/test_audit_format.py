"""The published hash format (docs/audit.md): known-answer vectors, checked against the product
and against an independent verifier written from the document alone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.audit import (
    GENESIS_HASH,
    LANE_CHAINS,
    AuditChain,
    canonical_json,
    chain_entry,
    entry_body,
)
from shared.audit_export import AuditExport, ChainCheckpoints, export_lines, verify_export
from shared.audit_query import AuditFilter, AuditQuery
from shared.models import Actor, AuditEntry, AuditEvent, utcnow
from shared.ports import AuditCheckpoints, IndexDimension, IndexEntry, NoCheckpoints
from tests import independent_verifier as auditor
from tests.fakes import MemoryAnchor, MemoryAuditStore

ROOT = Path(__file__).resolve().parents[2]
VECTORS: list[dict[str, Any]] = json.loads(
    (ROOT / "tests/fixtures/audit/vectors.json").read_text(encoding="utf-8")
)["vectors"]
DOC = (ROOT / "docs/audit.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"seq{v['seq']}")
def test_the_product_computes_every_known_answer(vector: dict[str, Any]) -> None:
    entry = AuditEntry.model_validate(vector["entry"])
    assert entry_body(entry) == vector["canonical"]
    record = chain_entry(vector["seq"], vector["prev_hash"], entry)
    assert (record.body, record.hash) == (vector["canonical"], vector["hash"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"seq{v['seq']}")
def test_the_independent_verifier_computes_every_known_answer(vector: dict[str, Any]) -> None:
    body = auditor.body_of(vector["entry"])
    assert body == vector["canonical"]
    assert auditor.record_hash(vector["seq"], vector["prev_hash"], body) == vector["hash"]


def test_the_vectors_form_a_chain_from_the_genesis_hash() -> None:
    assert VECTORS[0]["prev_hash"] == GENESIS_HASH == auditor.GENESIS
    for older, newer in zip(VECTORS, VECTORS[1:], strict=False):
        assert (newer["seq"], newer["prev_hash"]) == (older["seq"] + 1, older["hash"])


def test_the_document_publishes_the_same_vectors() -> None:
    for vector in VECTORS:
        assert f"`{vector['hash']}`" in DOC
        assert vector["prev_hash"] in DOC
        # the canonical text verbatim (for the oversized entry: its slim form)
        assert vector["canonical"] in DOC


async def test_the_vector_entries_chained_by_the_product_give_the_vector_hashes() -> None:
    store = MemoryAuditStore()
    records = await AuditChain(store).append_all(
        [AuditEntry.model_validate(v["entry"]) for v in VECTORS]
    )
    assert [r.hash for r in records] == [v["hash"] for v in VECTORS]


def test_canonical_text_is_sorted_compact_and_unescaped() -> None:
    # Code point order puts U+FF01 before U+1F6A8 (UTF-16 order would not).
    value = {"b": 1, "a": [True, None], "ü": "€\x7f", "🚨": 0, "！": 0.5}
    text = '{"a":[true,null],"b":1,"ü":"€\x7f","！":0.5,"🚨":0}'
    assert canonical_json(value) == text == auditor.canonical(value)


def entries() -> list[AuditEntry]:
    plain = [
        AuditEntry(
            event=AuditEvent.ACTION_EXECUTED,
            actor=Actor(),
            action_id=f"act-{n}",
            kind="disable_account",
            target="adele.vance@contoso.onmicrosoft.com",
            reason=f"drill {n}: Übung – 訓練",
            result={"before": {"accountEnabled": True}, "n": n, "ratio": n / 8},
        )
        for n in range(1, 6)
    ]
    huge = AuditEntry(
        event=AuditEvent.ACTION_EXECUTED,
        actor=Actor(kind="engineer", name="jürgen@contoso.de"),
        result={"before": {"blob": "ß" * 40_000}},
    )
    return [*[AuditEntry.model_validate(v["entry"]) for v in VECTORS], *plain, huge]


async def exported(store: MemoryAuditStore, checkpoints: AuditCheckpoints | None = None) -> str:
    """The trail as the product exports it (`responder audit export --format jsonl`)."""
    query = AuditQuery(store, NoIndex(), b"k" * 32)
    export = AuditExport(query, checkpoints or NoCheckpoints(), b"k" * 32, utcnow)
    return "".join([line async for line in export_lines(export, AuditFilter(), "jsonl", 4)])


class NoIndex:
    async def add(self, entries: list[IndexEntry]) -> None:
        return None

    async def seqs(
        self,
        dimension: IndexDimension,
        value: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> AsyncIterator[int]:
        for seq in ():
            yield seq


async def test_an_exported_trail_verifies_with_the_independent_verifier() -> None:
    store = MemoryAuditStore()
    records = await AuditChain(store).append_all(entries())
    verdict = auditor.verify_jsonl(await exported(store))
    assert verdict.first_broken is None, verdict.problem
    assert (verdict.records, verdict.head_hash) == (len(records), records[-1].hash)


def edit(text: str, seq: int, change: Any) -> str:
    """The export with record `seq`'s line changed: `change` gets the line and its entry,
    and the entry is written back as the line's body."""
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        if line["type"] == "record" and line["seq"] == seq:
            entry = json.loads(line["body"])
            change(line, entry)
            line["body"] = canonical_json(entry)
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


@pytest.mark.parametrize(
    ("seq", "change", "problem"),
    [
        (4, lambda _, entry: entry.update(target="someone.else@contoso.com"), "content"),
        (2, lambda _, entry: entry["result"].update(sha256="0" * 64), "content"),
        (6, lambda _, entry: entry.update(reason=entry["reason"] + " "), "content"),
        (5, lambda line, _: line.update(prev_hash="f" * 64), "link"),
        (1, lambda _, entry: entry["actor"].update(kind="engineer"), "content"),
        (3, lambda _, entry: entry["actor"].update(object_id="o-1"), "content"),
    ],
)
async def test_the_independent_verifier_finds_a_changed_record(
    seq: int, change: Any, problem: str
) -> None:
    store = MemoryAuditStore()
    await AuditChain(store).append_all(entries())
    verdict = auditor.verify_jsonl(edit(await exported(store), seq, change))
    assert verdict.first_broken == seq
    assert problem in (verdict.problem or "")


async def test_the_independent_verifier_finds_a_removed_record() -> None:
    store = MemoryAuditStore()
    await AuditChain(store).append_all(entries())
    lines = (await exported(store)).splitlines(keepends=True)
    removed = [line for line in lines if json.loads(line).get("seq") != 3]
    end = json.loads(removed[-1])
    removed[-1] = json.dumps({**end, "records": end["records"] - 1}) + "\n"
    verdict = auditor.verify_jsonl("".join(removed))
    assert verdict.first_broken == 3 and "missing" in (verdict.problem or "")


async def test_old_records_keep_their_text_and_new_ones_carry_the_actor_ids() -> None:
    """The actor's object and tenant ids are absent when unknown, so a record written before
    they existed reads back to the same canonical text, and verifies."""
    old = VECTORS[1]
    entry = AuditEntry.model_validate_json(old["canonical"])
    assert entry_body(entry) == old["canonical"] and "object_id" not in old["canonical"]
    signed_in = Actor(kind="engineer", name="lead@contoso.de", object_id="o-1", tenant_id="t-1")
    store = MemoryAuditStore()
    await AuditChain(store).append_all([entry, entry.model_copy(update={"actor": signed_in})])
    body = store.records[2].body
    assert '"actor":{"kind":"engineer","name":"lead@contoso.de","object_id":"o-1",' in body
    assert (await AuditChain(store).verify()).ok
    assert auditor.verify_jsonl(await exported(store)).first_broken is None


async def test_the_oversized_result_is_stored_as_its_digest_which_the_auditor_recomputes() -> None:
    huge = entries()[-1]
    [record] = await AuditChain(MemoryAuditStore()).append_all([huge])
    result = auditor.canonical({"before": {"blob": "ß" * 40_000}})
    assert record.entry.result == {
        "truncated": True,
        "chars": 40_000 + len('{"before":{"blob":""}}'),
        "sha256": hashlib.sha256(result.encode()).hexdigest(),
    }
    assert record.body == auditor.body_of(huge.model_dump(mode="json"))


# several chains and their checkpoints -----------------------------------------------------


async def lane_trail() -> tuple[MemoryAuditStore, str]:
    """A trail over three lane chains written by three writers, exported with a checkpoint."""
    store = MemoryAuditStore(chains=LANE_CHAINS[:3])
    anchor = MemoryAnchor()
    writers = [AuditChain(store, anchor=anchor) for _ in range(3)]
    for n, entry in enumerate(entries() * 2):
        await writers[n % 3].append(entry)
    await writers[0].checkpoint()
    return store, await exported(store, ChainCheckpoints(writers[0]))


async def test_an_export_of_several_chains_verifies_with_the_independent_verifier() -> None:
    store, text = await lane_trail()
    verdict = auditor.verify_jsonl(text)
    assert verdict.first_broken is None, verdict.problem
    assert verdict.records == len(store.records) and verdict.checkpoints == 1
    heads = await store.heads()
    assert len(heads) > 1 and verdict.heads == {n: h.hash for n, h in heads.items()}


async def test_the_independent_verifier_finds_newest_records_cut_off_against_a_checkpoint() -> None:
    store, text = await lane_trail()
    lines = [json.loads(line) for line in text.splitlines()]
    records = [line for line in lines if line["type"] == "record"]
    newest = max(records, key=lambda line: line["position"])
    kept = [line for line in lines if line is not newest]
    kept[-1]["records"] -= 1  # the end line made to agree, as a careful forger would
    verdict = auditor.verify_jsonl("".join(json.dumps(line) + "\n" for line in kept))
    assert verdict.first_broken == newest["position"]
    assert "missing" in (verdict.problem or "")


async def test_the_independent_verifier_finds_a_rechained_forgery_by_the_checkpoint() -> None:
    store, text = await lane_trail()
    lines = [json.loads(line) for line in text.splitlines()]
    records = [line for line in lines if line["type"] == "record"]
    chain = records[0]["chain"]
    mine = sorted((line for line in records if line["chain"] == chain), key=lambda x: x["seq"])
    entry = json.loads(mine[0]["body"])
    entry["reason"] = "nothing happened"
    mine[0]["body"] = auditor.canonical(entry)
    prev = GENESIS_HASH
    for line in mine:  # re-hash the whole chain consistently, as an attacker could
        line["prev_hash"] = prev
        line["hash"] = prev = auditor.record_hash(line["seq"], prev, line["body"])
    verdict = auditor.verify_jsonl("".join(json.dumps(line) + "\n" for line in lines))
    assert verdict.first_broken == mine[-1]["position"]
    assert "differs from the checkpoint" in (verdict.problem or "")


async def test_the_products_offline_check_reads_several_chains_and_their_checkpoints() -> None:
    """`responder audit verify --file` on an export of lane chains: intact, then with the
    newest record cut off (end line made to agree), then with one chain forged consistently."""
    store, text = await lane_trail()
    verdict = verify_export(text.splitlines())
    assert verdict.ok, verdict.problem
    assert (verdict.records_checked, verdict.checkpoints_checked) == (len(store.records), 1)

    lines = [json.loads(line) for line in text.splitlines()]
    records = [line for line in lines if line["type"] == "record"]
    newest = max(records, key=lambda line: line["position"])
    kept = [line for line in lines if line is not newest]
    kept[-1]["records"] -= 1
    cut = verify_export([json.dumps(line) for line in kept])
    assert cut.first_broken_seq == newest["position"] and "missing" in (cut.problem or "")

    mine = sorted((r for r in records if r["chain"] == newest["chain"]), key=lambda r: r["seq"])
    entry = json.loads(mine[0]["body"])
    entry["reason"] = "nothing happened"
    mine[0]["body"] = canonical_json(entry)
    prev = GENESIS_HASH
    for line in mine:
        line["prev_hash"] = prev
        line["hash"] = prev = auditor.record_hash(line["seq"], prev, line["body"])
    forged = verify_export([json.dumps(line) for line in lines])
    assert forged.first_broken_seq == newest["position"]
    assert "checkpoint" in (forged.problem or "")
