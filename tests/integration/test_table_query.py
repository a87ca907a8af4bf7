"""Entity queries read as plain JSON (shared/adapters/table_query.py) against Azurite: the
same entities, in the same order, as the SDK's own query, across continuation pages."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty
from pydantic import SecretStr

from drill.azurite import Azurite
from shared.adapters import table_query
from shared.adapters.table_query import get_json, query_json
from shared.adapters.table_service import as_int, ensure_tables, table_service
from shared.simulator import SimulatedTenant
from tests.conftest import settings_for

pytestmark = pytest.mark.integration


async def test_a_query_reads_what_the_sdk_reads_page_after_page(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    settings = settings_for(sim, azurite)
    name = f"Query{uuid.uuid4().hex[:8]}"
    async with table_service(settings, None) as service:
        await ensure_tables(service, name)
        table = service.get_table_client(name)
        for n in range(7):
            await table.create_entity(
                {
                    "PartitionKey": "lane-1",
                    "RowKey": f"r{n:03d}",
                    "Seq": EntityProperty(2**40 + n, EdmType.INT64),
                    "ChainSeq": n,
                    "Body": f'{{"n": {n}, "text": "Grüße \\u2713 \'quoted\'"}}',
                    "Flag": n % 2 == 0,
                }
            )
        await table.create_entity({"PartitionKey": "lane-2", "RowKey": "r000", "Body": "x"})
        query = "PartitionKey eq 'lane-1' and RowKey ge 'r001'"
        expected = [e async for e in table.query_entities(query)]
        read = [e async for e in query_json(table, query, page_size=2)]
        ahead = [e async for e in query_json(table, query, page_size=2, read_ahead=True)]
        tagged = [e async for e in query_json(table, query, page_size=2, etags=True)]
        first = None
        async for entity in query_json(table, query, page_size=2, read_ahead=True):
            first = entity
            break  # the page read ahead is let go
        with pytest.raises(ResourceNotFoundError):
            [e async for e in query_json(service.get_table_client("Missing" + name), query)]
    # A signature the service refuses raises what the SDK's own query raises, with its status
    # (the command line tells a sign-in failure from a refused role by them).
    forged = settings.model_copy(
        update={"tables_connection": SecretStr(_wrong_key(azurite.connection_string))}
    )
    async with table_service(forged, None) as service:
        table = service.get_table_client(name)
        with pytest.raises(HttpResponseError) as by_sdk:
            [e async for e in table.query_entities(query)]
        with pytest.raises(HttpResponseError) as by_json:
            [e async for e in query_json(table, query)]
    assert type(by_json.value) is type(by_sdk.value)
    assert by_json.value.status_code == by_sdk.value.status_code == 403

    assert [e["RowKey"] for e in read] == [f"r{n:03d}" for n in range(1, 7)], "in order, 3 pages"
    assert ahead == read, "reading a page ahead changes nothing"
    # With ETags: the SDK's, and the service's timestamp, beside the same columns.
    assert [e["odata.etag"] for e in tagged] == [e.metadata["etag"] for e in expected]
    assert [datetime.fromisoformat(e["Timestamp"]) for e in tagged] == [
        e.metadata["timestamp"] for e in expected
    ]
    for ours, plain in zip(tagged, read, strict=True):
        assert {k: v for k, v in ours.items() if k in plain} == plain
    assert first == read[0]
    for ours, theirs in zip(read, expected, strict=True):
        assert set(ours) == set(theirs), "the same columns, no annotations, no Timestamp"
        assert as_int(ours["Seq"]) == as_int(theirs["Seq"])
        assert {k: v for k, v in ours.items() if k != "Seq"} == {
            k: v for k, v in theirs.items() if k != "Seq"
        }


async def test_the_page_read_ahead_is_requested_while_the_caller_still_reads_this_one(
    sim: SimulatedTenant, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that never waits on anything but the entities (the verifier walking a chain)
    still lets the next page's request go out at the start of this page, so the service
    answers while the caller works instead of after it."""
    started: list[dict[str, str]] = []
    page = table_query._page

    async def watched(*args: Any) -> Any:
        started.append(dict(args[3]))
        return await page(*args)

    monkeypatch.setattr(table_query, "_page", watched)
    name = f"Ahead{uuid.uuid4().hex[:8]}"
    async with table_service(settings_for(sim, azurite), None) as service:
        await ensure_tables(service, name)
        table = service.get_table_client(name)
        for n in range(5):
            await table.create_entity({"PartitionKey": "p", "RowKey": f"r{n}"})
        seen: list[int] = []
        async for entity in query_json(table, "PartitionKey eq 'p'", 2, read_ahead=True):
            seen.append(len(started))
            assert entity["RowKey"]
        plain = len(started)
        [e async for e in query_json(table, "PartitionKey eq 'p'", 2)]
    # Pages of 2, 2 and 1: the second page has started when the caller holds the first
    # entity, the third when it holds the third.
    assert seen == [2, 2, 3, 3, 3]
    assert started[0] == {} and "NextPartitionKey" in started[1], "the next page, not again"
    assert len(started) - plain == 3, "without reading ahead, one request per page, in turn"


async def test_a_point_read_reads_what_the_sdk_reads_with_an_etag_it_accepts(
    sim: SimulatedTenant, azurite: Azurite
) -> None:
    settings = settings_for(sim, azurite)
    name = f"Point{uuid.uuid4().hex[:8]}"
    key = "it's a key: grüße %41 & more"
    async with table_service(settings, None) as service:
        await ensure_tables(service, name)
        table = service.get_table_client(name)
        await table.create_entity(
            {"PartitionKey": "p'1", "RowKey": key, "State": "pending", "Generation": 1_700_000_000}
        )
        sdk = await table.get_entity("p'1", key)
        found = await get_json(table, "p'1", key)
        only_key = await get_json(table, "p'1", key, select=("RowKey",))
        missing = await get_json(table, "p'1", key + "x")
        assert found is not None and only_key is not None
        entity, etag = found
        # The ETag is the one the SDK reports, and a write conditioned on it lands.
        assert etag == sdk.metadata["etag"]
        await table.update_entity(
            {"PartitionKey": "p'1", "RowKey": key, "State": "blocked"},
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
        )
        with pytest.raises(ResourceNotFoundError):
            await get_json(service.get_table_client("Missing" + name), "p", "r")
    assert missing is None
    assert {k: v for k, v in entity.items() if k != "Timestamp"} == dict(sdk)
    assert isinstance(entity["Timestamp"], str)
    assert set(only_key[0]) == {"RowKey"}


def _wrong_key(connection: str) -> str:
    parts = dict(part.split("=", 1) for part in connection.split(";") if part)
    parts["AccountKey"] = base64.b64encode(b"not the account key").decode()
    return ";".join(f"{k}={v}" for k, v in parts.items())
