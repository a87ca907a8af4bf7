"""Comments on the alert a containment came from: Graph alerts_v2 alerts, and Microsoft
Sentinel incidents through the Azure Resource Manager REST API."""

from __future__ import annotations

import uuid
from urllib.parse import quote

from azure.core.credentials_async import AsyncTokenCredential

from shared.adapters.rest import BearerJson, require_https

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ARM_SCOPE = "https://management.azure.com/.default"
SENTINEL_API_VERSION = "2025-09-01"
# Comment ids derive from the notice task id, so a repeated PUT rewrites the same comment.
_COMMENT_NAMESPACE = uuid.UUID("6d1b7c9e-3f0a-4e55-9a0e-5b2f3c8d7e14")


class GraphAlertComments:
    """`AlertComments` over `/security/alerts_v2/{id}` and its `comments` collection."""

    def __init__(self, base_url: str, credential: AsyncTokenCredential, timeout_s: float) -> None:
        require_https(base_url, "GRAPH_BASE_URL")
        self._base = f"{base_url.rstrip('/')}/security/alerts_v2"
        self._http = BearerJson(credential, GRAPH_SCOPE, timeout_s)

    def _alert_url(self, alert_id: str) -> str:
        return f"{self._base}/{quote(alert_id, safe='')}"

    async def has_comment(self, alert_id: str, marker: str) -> bool:
        """Whether a comment on the alert carries `marker` (the alert's `comments` property).
        Permission: SecurityAlert.ReadWrite.All"""
        response = await self._http.request("GET", self._alert_url(alert_id), "get alert")
        comments = response.json().get("comments") or []
        return any(
            isinstance(c, dict) and f"[{marker}]" in str(c.get("comment", "")) for c in comments
        )

    async def add_comment(self, alert_id: str, text: str) -> None:
        """Permission: SecurityAlert.ReadWrite.All"""
        body = {"@odata.type": "microsoft.graph.security.alertComment", "comment": text}
        await self._http.request(
            "POST", f"{self._alert_url(alert_id)}/comments", "comment on alert", body
        )

    async def close(self) -> None:
        await self._http.close()


class SentinelIncidentComments:
    """`IncidentComments` over ARM: `PUT {incident}/comments/{commentId}`. Needs the Azure role
    Microsoft Sentinel Responder on the workspace (infra grants it when
    SENTINEL_WORKSPACE_ID is set)."""

    def __init__(
        self, arm_base_url: str, credential: AsyncTokenCredential, timeout_s: float
    ) -> None:
        require_https(arm_base_url, "ARM_BASE_URL")
        self._base = arm_base_url.rstrip("/")
        self._http = BearerJson(credential, ARM_SCOPE, timeout_s)

    async def put_comment(self, incident_arm_id: str, comment_id: str, text: str) -> None:
        name = uuid.uuid5(_COMMENT_NAMESPACE, comment_id)
        path = quote(incident_arm_id.rstrip("/"), safe="/")
        url = f"{self._base}{path}/comments/{name}?api-version={SENTINEL_API_VERSION}"
        await self._http.request(
            "PUT", url, "comment on Sentinel incident", {"properties": {"message": text}}
        )

    async def close(self) -> None:
        await self._http.close()
