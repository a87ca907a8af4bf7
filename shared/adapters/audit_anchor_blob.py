"""Audit checkpoints in append blobs: one JSON line per checkpoint, one blob per month
(`checkpoints-YYYY-MM.jsonl`, well below an append blob's 50,000 blocks at one checkpoint every
five minutes), in a container with a time-based immutability policy that allows protected
append writes: blocks can be added, nothing written can be changed or deleted until the policy
lets it.

Least privilege (a custom role on the container, see infra/app/rbac.bicep): data actions
`blobServices/containers/blobs/read` (verify lists and reads the checkpoints) and
`blobServices/containers/blobs/add/action` (create the append blob, append blocks); neither
`write` nor `delete`.
"""

from __future__ import annotations

import json
from datetime import UTC

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from shared.audit import checkpoint_from_json, checkpoint_json
from shared.config import Settings
from shared.ports import Checkpoint

PREFIX = "checkpoints-"


def blob_name(checkpoint: Checkpoint) -> str:
    return f"{PREFIX}{checkpoint.at.astimezone(UTC):%Y-%m}.jsonl"


def blob_service(
    settings: Settings, credential: AsyncTokenCredential | None
) -> BlobServiceClient | None:
    """The blob service the checkpoints go to; None when none is configured."""
    connection = settings.tables_connection
    if connection is not None:
        text = connection.get_secret_value()
        if "BlobEndpoint=" in text or text.startswith("UseDevelopmentStorage=true"):
            return BlobServiceClient.from_connection_string(text)
    if settings.blob_endpoint is not None and credential is not None:
        return BlobServiceClient(str(settings.blob_endpoint), credential=credential)
    return None


class BlobAnchor:
    """`AuditAnchor` on append blobs in one container."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    async def append(self, checkpoint: Checkpoint) -> None:
        line = json.dumps(checkpoint_json(checkpoint), separators=(",", ":")) + "\n"
        blob = self._container.get_blob_client(blob_name(checkpoint))
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
        names = [b.name async for b in self._container.list_blobs(name_starts_with=PREFIX)]
        for name in sorted(names):
            data = await (await self._container.download_blob(name)).readall()
            found += [
                checkpoint_from_json(json.loads(line))
                for line in data.decode().splitlines()
                if line.strip()
            ]
        return sorted(found, key=lambda point: point.at)

    async def ensure_container(self) -> None:
        """Create the container (local development only: in Azure the deployment does)."""
        try:
            await self._container.create_container()
        except ResourceExistsError:
            pass
