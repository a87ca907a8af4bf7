"""The directly written entity group transaction (`table_batch`) against Azurite: rows read back
as the SDK's own insert writes them, a failed change set lands nothing and names its failing
operation, and the service's limits are kept before anything is sent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from drill.azurite import Azurite
from shared.adapters.table_batch import (
    MAX_OPERATIONS,
    MERGE,
    UPSERT,
    check_response,
    insert_entities,
    merge_entity,
    replace_if_unchanged,
    write_entities,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def table(azurite: Azurite) -> AsyncIterator[TableClient]:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        client = await service.create_table(f"Batch{uuid.uuid4().hex[:10]}")
        yield client
        await service.delete_table(client.table_name)


def row(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "PartitionKey": "c07",
        "RowKey": key,
        "Text": 'Überprüfung "quoted" \\ back / slash – \u2603 \U0001f600',
        "Empty": "",
        "Flag": True,
        "Off": False,
        "Small": -(2**31),
        "Position": EntityProperty(2**62 + 12345, EdmType.INT64),
        "Negative": EntityProperty(-(2**63), EdmType.INT64),
        "At": datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
        "Offset": datetime(2026, 3, 4, 7, 6, 7, tzinfo=timezone(timedelta(hours=2))),
        "Missing": None,
        **extra,
    }


def properties(entity: Any) -> dict[str, Any]:
    """Values with their types, as the SDK reads them back (Int64 and dates are typed)."""
    found = {}
    for name, value in entity.items():
        shown = value.value if isinstance(value, EntityProperty) else value
        edm = value.edm_type if isinstance(value, EntityProperty) else None
        found[name] = (type(shown).__name__, shown, edm)
    return found


async def test_rows_read_back_as_the_sdk_writes_them(table: TableClient) -> None:
    await table.create_entity(row("by-sdk"))
    await insert_entities(table, [row("direct-1"), row("direct-2")])
    sdk = properties(await table.get_entity("c07", "by-sdk"))
    for key in ("direct-1", "direct-2"):
        direct = properties(await table.get_entity("c07", key))
        assert direct == {**sdk, "RowKey": ("str", key, None)}
    assert "Missing" not in sdk


# Row keys the entity's address must quote: OData quotes, a space, percent, URL delimiters,
# non-ASCII (the service refuses "/", "\\", "#" and "?" in keys).
AWKWARD_KEYS = ("o'brien", "two words", "100%", "a+b&c=d", "Überprüfung", "a''b")


async def test_merges_read_back_as_the_sdks_merges_write_them(table: TableClient) -> None:
    keys = [*AWKWARD_KEYS, "plain"]
    await insert_entities(table, [row(f"sdk-{k}") for k in keys])
    await insert_entities(table, [row(f"direct-{k}") for k in keys])
    change = {"Sent": True, "Text": "changed", "Position": EntityProperty(7, EdmType.INT64)}
    for key in keys:
        await table.update_entity({**row(f"sdk-{key}"), **change}, mode=UpdateMode.MERGE)
    await write_entities(
        table,
        [{"PartitionKey": "c07", "RowKey": f"direct-{k}", **change} for k in keys],
        MERGE,
    )
    for key in keys:
        sdk = properties(await table.get_entity("c07", f"sdk-{key}"))
        direct = properties(await table.get_entity("c07", f"direct-{key}"))
        assert direct == {**sdk, "RowKey": ("str", f"direct-{key}", None)}
        assert direct["Flag"] == ("bool", True, None), "the other properties stay"


async def test_each_operation_gets_the_etag_a_conditional_write_then_accepts(
    table: TableClient,
) -> None:
    inserted = await insert_entities(table, [row("tagged-1"), row("tagged-2")])
    merged = await write_entities(
        table, [{"PartitionKey": "c07", "RowKey": "tagged-2", "Text": "merged"}], MERGE
    )
    assert inserted[0] == (await table.get_entity("c07", "tagged-1")).metadata["etag"]
    assert merged[0] == (await table.get_entity("c07", "tagged-2")).metadata["etag"]
    assert inserted[1] != merged[0]
    await table.update_entity(
        {"PartitionKey": "c07", "RowKey": "tagged-1", "Text": "by etag"},
        mode=UpdateMode.MERGE,
        etag=inserted[0],
        match_condition=MatchConditions.IfNotModified,
    )
    with pytest.raises(ResourceModifiedError):
        await table.update_entity(
            {"PartitionKey": "c07", "RowKey": "tagged-2", "Text": "stale"},
            mode=UpdateMode.MERGE,
            etag=inserted[1],
            match_condition=MatchConditions.IfNotModified,
        )


async def test_an_upsert_inserts_the_missing_and_merges_the_present(table: TableClient) -> None:
    await insert_entities(table, [row("present")])
    rows = [{"PartitionKey": "c07", "RowKey": key, "Version": "v2"} for key in ("present", "o'new")]
    await write_entities(table, rows, UPSERT)
    present = await table.get_entity("c07", "present")
    assert present["Version"] == "v2" and present["Flag"] is True
    assert dict(await table.get_entity("c07", "o'new")) == rows[1]


async def test_a_merge_into_a_missing_row_lands_nothing(table: TableClient) -> None:
    await insert_entities(table, [row("a"), row("c")])
    merges = [{"PartitionKey": "c07", "RowKey": key, "Sent": True} for key in ("a", "b", "c")]
    with pytest.raises(TableTransactionError) as raised:
        await write_entities(table, merges, MERGE)
    assert raised.value.status_code == 404
    assert raised.value.index == 1
    assert [e.get("Sent") async for e in table.list_entities()] == [None, None]


async def test_a_conflict_lands_nothing_and_names_the_failing_operation(
    table: TableClient,
) -> None:
    await insert_entities(table, [row("a"), row("b")])
    with pytest.raises(TableTransactionError) as raised:
        await insert_entities(table, [row("c"), row("d"), row("b"), row("e")])
    assert raised.value.status_code == 409
    assert getattr(raised.value, "error_code", None) == "EntityAlreadyExists"
    assert raised.value.index == 2
    keys = [e["RowKey"] async for e in table.list_entities()]
    assert keys == ["a", "b"]


async def test_a_row_named_twice_is_refused_by_the_service(table: TableClient) -> None:
    with pytest.raises(TableTransactionError) as raised:
        await insert_entities(table, [row("a"), row("a")])
    assert raised.value.status_code == 400
    assert [e async for e in table.list_entities()] == []


async def test_a_missing_table_raises_as_the_sdk_does(azurite: Azurite) -> None:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        missing = service.get_table_client(f"Missing{uuid.uuid4().hex[:10]}")
        with pytest.raises(TableTransactionError) as by_sdk:
            await missing.submit_transaction([("create", row("a")), ("create", row("b"))])
        with pytest.raises(TableTransactionError) as direct:
            await insert_entities(missing, [row("a"), row("b")])
    assert type(direct.value) is type(by_sdk.value)
    assert direct.value.status_code == by_sdk.value.status_code == 404
    assert getattr(direct.value, "error_code", None) == "TableNotFound"
    assert getattr(by_sdk.value, "error_code", None) == "TableNotFound"


async def test_the_largest_transaction_lands(table: TableClient) -> None:
    await insert_entities(table, [row(f"{n:03d}") for n in range(MAX_OPERATIONS)])
    assert len([e async for e in table.list_entities(select=["RowKey"])]) == MAX_OPERATIONS


async def test_limits_are_kept_before_sending(table: TableClient) -> None:
    with pytest.raises(ValueError, match="operations"):
        await insert_entities(table, [row(f"{n:03d}") for n in range(MAX_OPERATIONS + 1)])
    with pytest.raises(ValueError, match="partition"):
        await insert_entities(table, [row("a"), {**row("b"), "PartitionKey": "c08"}])
    with pytest.raises(ValueError, match="payload"):
        big = "x" * 30_000
        rows = [row(f"{n:03d}", **{f"Big{k}": big for k in range(8)}) for n in range(20)]
        await insert_entities(table, rows)
    with pytest.raises(TypeError, match="Int32"):
        await insert_entities(table, [row("a"), row("b", Small=2**31)])
    with pytest.raises(TypeError, match="float"):
        await insert_entities(table, [row("a"), row("b", Ratio=0.5)])
    assert [e async for e in table.list_entities()] == []


# The response of the Table service in Azure, in the form of "Performing entity group
# transactions" (Table service REST reference): CRLF lines, `204 No Content` per insert with
# `Prefer: return-no-content`, and one part for a failed change set.
AZURE_OK = (
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
    + "".join(
        "--changesetresponse_2\r\n"
        "Content-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\n"
        "HTTP/1.1 204 No Content\r\n"
        f"Content-ID: {n}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-cache\r\n"
        "Preference-Applied: return-no-content\r\n"
        "DataServiceVersion: 3.0;\r\n"
        f"Location: https://acct.table.core.windows.net/Audit(PartitionKey='c01',RowKey='{n}')\r\n"
        f"ETag: W/\"datetime'2026-11-30T19%3A29%3A42.297375{n}Z'\"\r\n\r\n"
        for n in range(3)
    )
    + "--changesetresponse_2--\r\n--batchresponse_1--\r\n"
).encode()
AZURE_CONFLICT = (
    b"--batchresponse_1\r\n"
    b"Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
    b"--changesetresponse_2\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n\r\n"
    b"HTTP/1.1 409 Conflict\r\n"
    b"Content-ID: 2\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Cache-Control: no-cache\r\n"
    b"DataServiceVersion: 3.0;\r\n"
    b"Content-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8\r\n\r\n"
    b'{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US",'
    b'"value":"1:The specified entity already exists.\\nRequestId:5b7f\\nTime:2026-11-30"}}}\r\n'
    b"--changesetresponse_2--\r\n--batchresponse_1--\r\n"
)


def test_the_azure_response_form_is_read() -> None:
    etags = check_response(202, AZURE_OK, {}, 3)
    assert etags == [f"W/\"datetime'2026-11-30T19%3A29%3A42.297375{n}Z'\"" for n in range(3)]
    with pytest.raises(TableTransactionError) as raised:
        check_response(202, AZURE_CONFLICT, {}, 3)
    assert raised.value.status_code == 409 and raised.value.index == 1
    assert getattr(raised.value, "error_code", None) == "EntityAlreadyExists"


def test_a_response_that_leaves_an_operation_unanswered_is_a_failure() -> None:
    with pytest.raises(Exception, match="2 of 3"):
        check_response(202, AZURE_OK.replace(b"HTTP/1.1 204", b"HTTP/1.1 20x", 1), {}, 3)


def test_a_conditional_replacement_needs_an_etag() -> None:
    # Without If-Match a PUT replaces whatever the row holds now.
    with pytest.raises(ValueError, match="ETag"):
        replace_if_unchanged("")
    assert replace_if_unchanged('W/"1"').if_match == 'W/"1"'


async def test_a_single_merge_writes_what_the_sdks_merges_write(table: TableClient) -> None:
    keys = [*AWKWARD_KEYS, "plain"]
    change = {"Sent": True, "Text": "changed", "Position": EntityProperty(7, EdmType.INT64)}
    for key in keys:
        # Insert-or-merge: a missing row is created, as by `upsert_entity` in merge mode.
        await table.upsert_entity(row(f"sdk-{key}"), mode=UpdateMode.MERGE)
        await merge_entity(table, row(f"direct-{key}"))
        await table.upsert_entity({**row(f"sdk-{key}"), **change}, mode=UpdateMode.MERGE)
        etag = await merge_entity(
            table, {"PartitionKey": "c07", "RowKey": f"direct-{key}", **change}
        )
        assert etag == (await table.get_entity("c07", f"direct-{key}")).metadata["etag"]
    for key in keys:
        sdk = properties(await table.get_entity("c07", f"sdk-{key}"))
        direct = properties(await table.get_entity("c07", f"direct-{key}"))
        assert direct == {**sdk, "RowKey": ("str", f"direct-{key}", None)}
        assert direct["Flag"] == ("bool", True, None), "the other properties stay"


async def test_a_conditional_merge_raises_as_the_sdks_does(table: TableClient) -> None:
    first = await merge_entity(table, row("tagged"))
    second = await merge_entity(
        table, {"PartitionKey": "c07", "RowKey": "tagged", "Text": "v2"}, if_match=first
    )
    assert second != first
    stale = {"PartitionKey": "c07", "RowKey": "tagged", "Text": "stale"}
    with pytest.raises(ResourceModifiedError) as by_sdk:
        await table.update_entity(
            stale, mode=UpdateMode.MERGE, etag=first, match_condition=MatchConditions.IfNotModified
        )
    with pytest.raises(ResourceModifiedError) as direct:
        await merge_entity(table, stale, if_match=first)
    assert direct.value.status_code == by_sdk.value.status_code == 412
    gone = {"PartitionKey": "c07", "RowKey": "gone", "Text": "x"}
    with pytest.raises(ResourceNotFoundError):
        await table.update_entity(
            gone, mode=UpdateMode.MERGE, etag=first, match_condition=MatchConditions.IfNotModified
        )
    with pytest.raises(ResourceNotFoundError):
        await merge_entity(table, gone, if_match=first)
    with pytest.raises(ResourceNotFoundError):
        await merge_entity(table, gone, if_match="*")
    assert (await table.get_entity("c07", "tagged"))["Text"] == "v2"
    with pytest.raises(ValueError, match="ETag"):
        await merge_entity(table, stale, if_match="")


async def test_a_merge_into_a_missing_table_raises_as_the_sdks_does(azurite: Azurite) -> None:
    async with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        missing = service.get_table_client(f"Missing{uuid.uuid4().hex[:10]}")
        with pytest.raises(ResourceNotFoundError):
            await missing.upsert_entity(row("a"), mode=UpdateMode.MERGE)
        with pytest.raises(ResourceNotFoundError):
            await merge_entity(missing, row("a"))
