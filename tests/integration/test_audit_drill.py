"""`responder drill --scenario audit`: concurrent writers against Azurite lose nothing, a
checkpoint lands in the blob service, and every kind of tampering applied to a copy of the
trail fails verification (smaller sizes than the drill's default)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.data.tables.aio import TableClient, TableServiceClient

from drill.audit_trail import TAMPERS, copy_trail
from drill.azurite import Azurite
from shared.cli import main

pytestmark = pytest.mark.integration


def test_the_audit_drill_reports_every_tampering_detected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["drill", "--scenario", "audit", "--json", "--set", "writers=4"]
    assert main([*args, "--set", "per_writer=30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 120 and report["append_failures"] == 0
    assert report["indexed_append_failures"] == 0
    assert report["checkpoint"] == {"count": 120, "intact_trail_verified": True}
    assert set(report["tamper"]) == set(TAMPERS)
    for kind, found in report["tamper"].items():
        assert found["detected"], kind
        assert isinstance(found["first_broken_seq"], int), kind
    assert report["appends_per_s"] > 0 and report["plain_inserts_per_s"] > 0


def test_the_audit_drill_refuses_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drill", "--scenario", "audit", "--set", "speed=11"]) == 2
    assert "unknown option 'speed'" in capsys.readouterr().err


async def test_a_copy_transaction_whose_answer_was_lost_is_sent_again(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azure-core does not resend a POST whose response never came; the drill's copy does,
    and since it upserts, a transaction that landed before its answer was lost lands again
    harmlessly."""
    suffix = uuid.uuid4().hex[:10]
    send = TableClient.submit_transaction
    dropped: list[int] = []

    async def drop_first_answer(self: TableClient, operations: Any, **kwargs: Any) -> Any:
        result = await send(self, operations, **kwargs)
        if self.table_name.startswith("AuditCopy") and not dropped:
            dropped.append(len(list(operations)))
            raise ServiceResponseError("connection reset before the response")
        return result

    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        source = await service.create_table(f"AuditSource{suffix}")
        for chain in ("c00", "c01"):
            for n in range(1, 151):
                await source.create_entity({"PartitionKey": chain, "RowKey": f"r{n:05d}"})
        monkeypatch.setattr(TableClient, "submit_transaction", drop_first_answer)
        copy = await copy_trail(service, source.table_name, f"AuditCopy{suffix}")
        copied = [e async for e in copy.list_entities()]
    assert len(dropped) == 1
    assert len(copied) == 300
