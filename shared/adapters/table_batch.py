"""Entity group transactions with the `$batch` body written directly.

`TableClient.submit_transaction` builds one `HttpRequest` per operation, writes the multipart
body with the standard library's `email` package and parses the multipart response with it
again; for an audit record with its index rows (about six inserts) that was most of the
client's CPU time per append. This writes the same body as plain text (one batch holding one
change set, as "Performing entity group transactions" in the Table service REST reference
describes it) and reads the status line of each part of the response. The request goes
through the table client's own pipeline (authentication, retries, response hooks), as the
SDK's does.

A single merge (`merge_entity`) is written the same way, outside a transaction. Three kinds
of operation, each as the SDK writes it: inserts (`POST` to the table), merges
(`PATCH` to the entity's address; with `If-Match: *` an update that fails when the entity is
missing, without it an insert-or-merge, which is the SDK's `upsert`), and replacements (`PUT`
to the entity's address with the ETag it was read with, the SDK's `update_entity` in replace
mode with `IfNotModified`). One transaction may mix them, an operation for each entity. Only
the property types the SDK writes without being told: `str`, `bool`, `int` (Int32),
`datetime` (Edm.DateTime, UTC) and `EntityProperty` of `EdmType.INT64`; anything else is
refused rather than written differently from the SDK.

A failed change set raises `TableTransactionError` as the SDK does: `status_code` and
`error_code` of the failing part, `index` the failing operation (the number before the first
`:` of the service's message). A change set that lands gives each operation's new ETag, from
the `ETag` header of its part of the response (parts answer the operations in their order).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.rest import AsyncHttpResponse, HttpRequest
from azure.data.tables import EdmType, EntityProperty, TableTransactionError
from azure.data.tables.aio import TableClient

MAX_OPERATIONS = 100  # the Table service's limit of operations in one transaction
MAX_BODY_BYTES = 4 * 1024 * 1024  # and of its payload
_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_PART_BODY = re.compile(rb"\r?\n\r?\n(.*?)\r?\n--", re.DOTALL)
_ETAG = re.compile(rb"^ETag:[ \t]*(\S+)[ \t]*\r?$", re.MULTILINE | re.IGNORECASE)
# Errors of the whole request (the table is missing, the caller may not write) as the SDK
# raises them.
_REFUSALS: dict[str, type[HttpResponseError]] = {
    "TableNotFound": ResourceNotFoundError,
    "ResourceNotFound": ResourceNotFoundError,
    "AuthenticationFailed": ClientAuthenticationError,
    "InvalidAuthenticationInfo": ClientAuthenticationError,
}


def refused(what: str, status: int, body: bytes, headers: Mapping[str, str]) -> HttpResponseError:
    """The error the SDK raises for a request the service refused, chosen by the service's
    error code: a missing table or entity is a `ResourceNotFoundError`, a refused signature a
    `ClientAuthenticationError`, a failed `If-Match` (412, whatever the code) a
    `ResourceModifiedError`, anything else an `HttpResponseError`; with the status and the
    error code set as the SDK sets them."""
    error = headers.get("x-ms-error-code")
    kind = _REFUSALS.get(error or "") or (
        ResourceModifiedError if status == 412 else HttpResponseError
    )
    exc = kind(message=f"{what} refused: HTTP {status}: {body[:500]!r}\nErrorCode:{error}")
    exc.status_code = status
    exc.error_code = error  # type: ignore[attr-defined]  # as the SDK sets it
    return exc


def entity_json(entity: Mapping[str, Any]) -> dict[str, Any]:
    """An entity's JSON properties, typed as the SDK types them."""
    properties: dict[str, Any] = {}
    for name, value in entity.items():
        if value is None:
            continue
        if isinstance(value, str):
            properties[name] = value
        elif isinstance(value, bool):
            properties[name] = value
        elif isinstance(value, int):
            if not -(2**31) <= value < 2**31:
                raise TypeError(f"{name}: {value} does not fit Int32; write it as Int64")
            properties[name] = value
        elif isinstance(value, datetime):
            properties[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            properties[name + "@odata.type"] = EdmType.DATETIME.value
        elif isinstance(value, EntityProperty) and value.edm_type == EdmType.INT64:
            number = int(value.value)
            if not -(2**63) <= number < 2**63:
                raise TypeError(f"{name}: {number} does not fit Int64")
            properties[name] = str(number)
            properties[name + "@odata.type"] = EdmType.INT64.value
        else:
            raise TypeError(f"{name}: {type(value).__name__} is not written by this encoder")
    return properties


@dataclass(frozen=True)
class Operation:
    """How an entity of a transaction is written: `POST` to the table inserts; `PATCH` to
    the entity's address merges (`if_match` "*": only into an existing entity); `PUT` to it
    replaces the entity as it was when read (`if_match`: the ETag it was read with)."""

    method: str
    if_match: str | None = None


INSERT = Operation("POST")
MERGE = Operation("PATCH", if_match="*")
UPSERT = Operation("PATCH")


def replace_if_unchanged(etag: str) -> Operation:
    """Replace an entity only if its ETag is still `etag` (without one, a `PUT` would replace
    it whatever it holds now, so none is refused)."""
    if not etag:
        raise ValueError("a conditional replacement needs the ETag the entity was read with")
    return Operation("PUT", if_match=etag)


def entity_url(table_url: str, entity: Mapping[str, Any]) -> str:
    """An entity's address: its keys quoted as OData string literals, then percent-encoded."""

    def literal(key: str) -> str:
        return quote(str(entity[key]).replace("'", "''"), safe="")

    return f"{table_url}(PartitionKey='{literal('PartitionKey')}',RowKey='{literal('RowKey')}')"


def batch_body(
    table_url: str,
    entities: Sequence[Mapping[str, Any]],
    batch: str,
    changeset: str,
    operations: Operation | Sequence[Operation] = INSERT,
) -> bytes:
    """The multipart body of one batch holding one change set writing `entities`, each with
    its operation (`operations`: one for all, or one per entity)."""
    each = [operations] * len(entities) if isinstance(operations, Operation) else operations
    if len(each) != len(entities):
        raise ValueError("a transaction names one operation for each entity")
    parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode()]
    for index, (entity, operation) in enumerate(zip(entities, each, strict=True)):
        url = table_url if operation.method == "POST" else entity_url(table_url, entity)
        payload = json.dumps(entity_json(entity), separators=(",", ":")).encode()
        head = (
            f"--{changeset}\r\n"
            "Content-Type: application/http\r\n"
            "Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n"
            "\r\n"
            f"{operation.method} {url} HTTP/1.1\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json;odata=minimalmetadata\r\n"
            + ("Prefer: return-no-content\r\n" if operation.method == "POST" else "")
            + (f"If-Match: {operation.if_match}\r\n" if operation.if_match else "")
            + "DataServiceVersion: 3.0\r\n"
            f"Content-Length: {len(payload)}\r\n"
            "\r\n"
        )
        parts.append(head.encode())
        parts.append(payload + b"\r\n")
    parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n".encode())
    return b"".join(parts)


def _failure(status: int, part: bytes) -> TableTransactionError:
    """The error of a failed change set's part, as the SDK reports it."""
    found = _PART_BODY.search(part)
    code: str | None = None
    message = part.decode(errors="replace")
    try:
        error = json.loads(found.group(1) if found else b"")["odata.error"]
        code = error["code"]
        message = error["message"]["value"]
    except (ValueError, KeyError, TypeError):
        pass
    exc = TableTransactionError(message=f"{message}\nErrorCode:{code}")
    exc.status_code = status
    exc.error_code = code  # type: ignore[attr-defined]  # as the SDK sets it
    return exc


def check_response(
    status: int, body: bytes, headers: Mapping[str, str], count: int
) -> list[str | None]:
    """Raise unless the batch response says every one of `count` operations succeeded; the
    ETag each operation's part of the response gives (None where a part has none)."""
    if status != 202:
        raise refused("transaction", status, body, headers)
    statuses = list(_STATUS_LINE.finditer(body))
    etags: list[str | None] = []
    for n, line in enumerate(statuses):
        code = int(line.group(1))
        end = statuses[n + 1].start() if n + 1 < len(statuses) else len(body)
        if not 200 <= code < 300:
            raise _failure(code, body[line.end() : end])
        found = _ETAG.search(body, line.end(), end)
        etags.append(found.group(1).decode() if found else None)
    if len(statuses) != count:
        raise HttpResponseError(
            message=f"transaction answered {len(statuses)} of {count} operations"
        )
    return etags


async def insert_entities(
    table: TableClient, entities: Sequence[Mapping[str, Any]]
) -> list[str | None]:
    """Insert `entities` (all of one partition) atomically, in one round trip; their ETags."""
    return await write_entities(table, entities, INSERT)


async def write_entities(
    table: TableClient,
    entities: Sequence[Mapping[str, Any]],
    operation: Operation | Sequence[Operation],
) -> list[str | None]:
    """Write `entities` (all of one partition) with `operation` (one for all, or one per
    entity), atomically, in one round trip; the ETag each has now (None where the response
    gave none)."""
    if not 0 < len(entities) <= MAX_OPERATIONS:
        raise ValueError(f"a transaction holds 1 to {MAX_OPERATIONS} operations")
    if len({entity["PartitionKey"] for entity in entities}) != 1:
        raise ValueError("a transaction's entities share one partition")
    endpoint, _, query = table.url.partition("?")
    suffix = f"?{query}" if query else ""
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    body = batch_body(f"{endpoint}/{table.table_name}", entities, batch, changeset, operation)
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"a transaction's payload is at most {MAX_BODY_BYTES} bytes")
    request = HttpRequest(
        "POST",
        f"{endpoint}/$batch{suffix}",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch}",
            "Accept": "application/json",
        },
        content=body,
    )
    response = await send_read(table, request)
    return check_response(response.status_code, response.content, response.headers, len(entities))


async def merge_entity(
    table: TableClient, entity: Mapping[str, Any], if_match: str | None = None
) -> str:
    """Merge `entity`'s properties into its row (`PATCH` to the entity's address), as the SDK
    does: without `if_match` an insert-or-merge (`upsert_entity` in merge mode), with it only
    into the row as it was (`update_entity` in merge mode; "*": any existing row). A changed
    row raises `ResourceModifiedError`, a missing one (or table) `ResourceNotFoundError`, as
    the SDK's do. The row's new ETag."""
    endpoint, _, query = table.url.partition("?")
    url = entity_url(f"{endpoint}/{table.table_name}", entity) + (f"?{query}" if query else "")
    headers = {
        "x-ms-version": table.api_version,
        "DataServiceVersion": "3.0",
        "MaxDataServiceVersion": "3.0;NetFx",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if if_match is not None:
        if not if_match:
            raise ValueError("a conditional merge needs the ETag the entity was read with")
        headers["If-Match"] = if_match
    body = json.dumps(entity_json(entity), separators=(",", ":")).encode()
    response = await send_read(table, HttpRequest("PATCH", url, headers=headers, content=body))
    if 200 <= response.status_code < 300:
        return response.headers.get("ETag", "")
    raise refused("merge", response.status_code, response.content, response.headers)


async def send_read(table: TableClient, request: HttpRequest) -> AsyncHttpResponse:
    """Send `request` (its URL absolute) through the table client's pipeline (authentication,
    retries, response hooks) and read its answer. It goes to the pipeline client itself: the
    generated client's `send_request` in front of it deep-copies every request and formats its
    URL against the endpoint, which an absolute URL comes out of unchanged (a storm sends tens
    of thousands of these; docs/performance.md)."""
    response: AsyncHttpResponse = await table._client._client.send_request(request, stream=True)
    await response.read()
    return response
