"""Entity queries read as plain JSON, without the SDK's deserializer.

`TableClient.query_entities` runs every page through the generated msrest deserializer and
then converts each entity property by property (timestamps through `strptime`): reading the
audit trail for `audit verify`, that was about 60 % of the CPU per record (docs/performance.md).
This sends the same request ("Query Entities" in the Table service REST reference: `$filter`,
`$top`, and the `NextPartitionKey` / `NextRowKey` continuation the service answers in its
`x-ms-continuation-*` headers) through the table client's own pipeline (authentication,
retries, response hooks) and hands each entity over as the service wrote it with
`odata=nometadata`: strings, booleans and Int32 numbers as JSON values, Int64 values as
strings, DateTime values as ISO 8601 strings, and no `odata.*` annotations (the type
annotations `minimalmetadata` adds cost a pass over every property to drop). The service's own
`Timestamp` is left out, as the SDK leaves it out of the entity's keys.

For tables whose columns the caller reads as such: the audit lanes (strings and integers),
and the point reads an alert storm makes per alert (`get_json`: the handled check, the block
registry's rows).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from azure.core.rest import AsyncHttpResponse, HttpRequest
from azure.data.tables.aio import TableClient

from shared.adapters.table_batch import refused, send_read

# The most entities the service returns in one page.
MAX_PAGE = 1000
# The service's error code for an entity that does not exist (a missing table's is
# `TableNotFound`).
NO_ENTITY = "ResourceNotFound"


async def query_json(
    table: TableClient,
    query: str,
    page_size: int = MAX_PAGE,
    *,
    read_ahead: bool = False,
    select: tuple[str, ...] = (),
    etags: bool = False,
) -> AsyncGenerator[dict[str, Any], None]:
    """The entities `query` (an OData filter) selects, page by page, in the service's order;
    with `select`, only those columns. With `read_ahead` (for a caller that reads to the end)
    the next page is requested while this one is handed out, so the service's time overlaps
    the caller's. With `etags`, the entities are read with `odata=minimalmetadata`: each
    keeps its ETag (`odata.etag`) and the service's `Timestamp` (ISO 8601), beside the
    `@odata.type` annotations of its typed columns."""
    shape = _Shape(page_size, select, etags)
    following: dict[str, str] | None = {}
    ahead: asyncio.Task[tuple[list[dict[str, Any]], dict[str, str] | None]] | None = None
    try:
        while following is not None:
            items, following = await (ahead or _page(table, query, shape, following))
            ahead = None
            if read_ahead and following is not None:
                ahead = asyncio.ensure_future(_page(table, query, shape, following))
            for number, item in enumerate(items):
                # A caller that awaits nothing but these entities never hands the loop back:
                # the page read ahead would not even be requested before this one is done.
                # Every 100 entities it gets a turn (to send, then to take the answer in).
                if ahead is not None and number % 100 == 0:
                    await asyncio.sleep(0)
                yield item
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()
        elif ahead is not None and not ahead.cancelled():
            ahead.exception()  # read: a page nobody waits for any more is no lost error


async def first_page(
    table: TableClient, query: str, page_size: int = MAX_PAGE
) -> tuple[list[dict[str, Any]], bool]:
    """The first page of the entities `query` selects, read with their ETags (as `query_json`
    with `etags`), and whether the service has more. A page may hold fewer than `page_size`
    entities and still not be the last."""
    items, following = await _page(table, query, _Shape(page_size, (), True), {})
    return items, following is not None


async def get_json(
    table: TableClient, partition: str, row: str, select: tuple[str, ...] = ()
) -> tuple[dict[str, Any], str] | None:
    """One entity ("Query Entities" addressed by its keys), with the service's `Timestamp` as
    an ISO 8601 string, and its ETag; None when it does not exist. With `select`, only those
    columns."""
    endpoint, _, sas = table.url.partition("?")
    address = f"(PartitionKey='{_quoted(partition)}',RowKey='{_quoted(row)}')"
    parameters = urlencode({"$select": ",".join(select)}, quote_via=quote) if select else ""
    query = "&".join(part for part in (sas, parameters) if part)
    response = await _send(table, f"{endpoint}/{table.table_name}{address}?{query}")
    if response.status_code == 404 and response.headers.get("x-ms-error-code") == NO_ENTITY:
        return None  # only a missing row: a missing table (`TableNotFound`) raises
    if response.status_code != 200:
        raise refused("get", response.status_code, response.content, response.headers)
    return json.loads(response.content), response.headers.get("ETag", "")


def _quoted(key: str) -> str:
    """A key inside the request's path: quotes doubled (OData), then percent-encoded."""
    return quote(key.replace("'", "''"), safe="")


async def _send(table: TableClient, url: str, metadata: str = "nometadata") -> AsyncHttpResponse:
    request = HttpRequest(
        "GET",
        url,
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Accept": f"application/json;odata={metadata}",
        },
    )
    return await send_read(table, request)


@dataclass(frozen=True)
class _Shape:
    """How a query's pages are asked for: entities per page, columns, metadata."""

    page_size: int
    select: tuple[str, ...]
    etags: bool


async def _page(
    table: TableClient, query: str, shape: _Shape, following: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
    """One page's entities, and the continuation to the next page (None after the last)."""
    endpoint, _, sas = table.url.partition("?")
    columns = {"$select": ",".join(shape.select)} if shape.select else {}
    parameters = urlencode(
        {"$filter": query, "$top": str(shape.page_size), **columns, **following}, quote_via=quote
    )
    response = await _send(
        table,
        f"{endpoint}/{table.table_name}()?{sas + '&' if sas else ''}{parameters}",
        "minimalmetadata" if shape.etags else "nometadata",
    )
    if response.status_code != 200:
        raise refused("query", response.status_code, response.content, response.headers)
    items = json.loads(response.content)["value"]
    if not shape.etags:
        for item in items:
            item.pop("Timestamp", None)
    partition = response.headers.get("x-ms-continuation-NextPartitionKey")
    if not partition:
        return items, None
    row = response.headers.get("x-ms-continuation-NextRowKey")
    return items, {"NextPartitionKey": partition, **({"NextRowKey": row} if row else {})}
