"""Audit checkpoints in append blobs: one JSON line per checkpoint, one blob per month
(`checkpoints-YYYY-MM.jsonl`, well below an append blob's 50,000 blocks at one checkpoint every
five minutes), in a container with a time-based immutability policy that allows protected
append writes: blocks can be added, nothing written can be changed or deleted until the policy
lets it.

Least privilege (a custom role on the container, see infra/app/rbac.bicep): data actions
`blobServices/containers/blobs/read` (verify lists and reads the checkpoints) and
`blobServices/containers/blobs/add/action` (create the append blob, append blocks); neither
`write` nor `delete`.

The blob SDK loads on the first checkpoint or verification, not with the app: containing an
account needs no checkpoint (docs/performance.md).
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import TYPE_CHECKING

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from shared.adapters.proxy_settings import storage_client_options
from shared.audit import checkpoint_from_json, checkpoint_json
from shared.config import Settings
from shared.ports import Checkpoint

if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobServiceClient, ContainerClient

PREFIX = "checkpoints-"


def blob_name(checkpoint: Checkpoint) -> str:
    return f"{PREFIX}{checkpoint.at.astimezone(UTC):%Y-%m}.jsonl"


def blob_anchor(settings: Settings, credential: AsyncTokenCredential | None) -> BlobAnchor | None:
    """The anchor the checkpoints go to; None when no blob service is configured. A local
    connection string (Azurite) gets its container created on first use; in Azure the
    deployment creates it, with its immutability policy."""
    connection = settings.tables_connection
    container = settings.audit_anchor_container
    if connection is not None:
        text = connection.get_secret_value()
        if "BlobEndpoint=" in text or text.startswith("UseDevelopmentStorage=true"):
            return BlobAnchor(container, connection=text)
    if settings.blob_endpoint is not None and credential is not None:
        return BlobAnchor(container, endpoint=str(settings.blob_endpoint), credential=credential)
    return None


class BlobAnchor:
    """`AuditAnchor` on append blobs in one container, with a client built on first use."""

    def __init__(
        self,
        container: str,
        *,
        connection: str | None = None,
        endpoint: str | None = None,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        self._name = container
        self._connection = connection
        self._endpoint = endpoint
        self._credential = credential
        self._service: BlobServiceClient | None = None
        self._client: ContainerClient | None = None

    async def _container(self) -> ContainerClient:
        if self._client is None:
            from azure.storage.blob.aio import BlobServiceClient

            options = storage_client_options()
            if self._connection is not None:
                self._service = BlobServiceClient.from_connection_string(
                    self._connection, **options
                )
            else:
                self._service = BlobServiceClient(
                    str(self._endpoint), credential=self._credential, **options
                )
            client = self._service.get_container_client(self._name)
            if self._connection is not None:
                try:
                    await client.create_container()
                except ResourceExistsError:
                    pass
            self._client = client
        return self._client

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()

    async def append(self, checkpoint: Checkpoint) -> None:
        line = json.dumps(checkpoint_json(checkpoint), separators=(",", ":")) + "\n"
        blob = (await self._container()).get_blob_client(blob_name(checkpoint))
        try:
            await blob.append_block(line.encode())
            return
        except ResourceNotFoundError:
            pass
        try:
            # Only if absent: a concurrent writer's blob (and its blocks) stay as they are.
            await blob.create_append_blob(if_none_match="*")
        except ResourceExistsError:
            pass
        await blob.append_block(line.encode())

    async def checkpoints(self) -> list[Checkpoint]:
        found: list[Checkpoint] = []
        container = await self._container()
        names = [b.name async for b in container.list_blobs(name_starts_with=PREFIX)]
        for name in sorted(names):
            data = await (await container.download_blob(name)).readall()
            found += [
                checkpoint_from_json(json.loads(line))
                for line in data.decode().splitlines()
                if line.strip()
            ]
        return sorted(found, key=lambda point: point.at)
