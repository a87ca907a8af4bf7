"""The receiving ends of the responder's notices in the simulated tenant: a Teams Workflows
webhook (records the cards it is posted), Graph `sendMail` (records messages; only mailboxes
an "Application Mail.Send" scope covers may send, at most 30 messages a minute each), comments
on alerts_v2 alerts, and Microsoft Sentinel incident comments over ARM (only with the Sentinel
Responder role on the workspace). Sources and the emulated gaps: docs/fidelity.md."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.simulator.state import JsonObject

ARM_AUDIENCE = "https://management.azure.com"
WORKFLOW_PREFIX = "/workflows/"
ARM_PREFIX = "/subscriptions/"
# Exchange Online sending limits: 30 messages a minute per mailbox.
MESSAGES_PER_MINUTE = 30
_SENTINEL = "/providers/microsoft.securityinsights/incidents/"


class NoticeError(Exception):
    """An error answer in the service's own envelope."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class SentMail:
    sender: str
    message: JsonObject


class NoticeStore:
    """What the notice endpoints received, under one lock (HTTP threads and the test share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Seconds, for the mailbox's messages-per-minute window; a drill moving its own clock
        # forward hands it over (`set_mailbox_clock`), so a minute passes for the mailbox too.
        self.seconds: Callable[[], float] = time.monotonic
        self.flow_id = uuid.uuid4().hex
        self._signature = secrets.token_urlsafe(32)
        self._cards: list[JsonObject] = []
        self._mail: list[SentMail] = []
        self._senders: set[str] = set()
        self._sent_at: dict[str, deque[float]] = defaultdict(deque)
        self._alert_comments: dict[str, list[JsonObject]] = defaultdict(list)
        self._incidents: dict[str, dict[str, JsonObject]] = {}
        self._responder_on: set[str] = set()

    # Teams Workflows webhook

    def workflow_path(self) -> str:
        return (
            f"{WORKFLOW_PREFIX}{self.flow_id}/triggers/manual/paths/invoke?api-version=2016-06-01"
            f"&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self._signature}"
        )

    def post_workflow(self, path: str, query: Mapping[str, str], body: JsonObject | None) -> None:
        """A flow trigger call: authorized by the URL's signature alone; 202 once accepted."""
        if path != f"{WORKFLOW_PREFIX}{self.flow_id}/triggers/manual/paths/invoke":
            raise NoticeError(404, "WorkflowNotFound", "The workflow could not be found.")
        if not hmac.compare_digest(query.get("sig", "").encode(), self._signature.encode()):
            raise NoticeError(
                401,
                "DirectApiInvalidAuthorizationSignature",
                "The provided request has an invalid authorization signature.",
            )
        if body is None:
            raise NoticeError(
                400, "InvalidRequestContent", "The request content is not valid JSON."
            )
        with self._lock:
            self._cards.append(body)

    def cards(self) -> list[JsonObject]:
        with self._lock:
            return list(self._cards)

    # Graph sendMail

    def allow_sender(self, mailbox: str) -> None:
        """An "Application Mail.Send" role assignment whose scope holds `mailbox`."""
        with self._lock:
            self._senders.add(mailbox.lower())

    def send_mail(self, mailbox: str, known: bool, body: JsonObject | None) -> None:
        key = mailbox.lower()
        if not known:
            raise NoticeError(
                404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid."
            )
        with self._lock:
            allowed = key in self._senders
        if not allowed:
            raise NoticeError(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        message = body.get("message") if isinstance(body, dict) else None
        recipients = message.get("toRecipients") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not isinstance(recipients, list) or not recipients:
            raise NoticeError(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
        now = self.seconds()
        with self._lock:
            sent = self._sent_at[key]
            while sent and now - sent[0] >= 60:
                sent.popleft()
            if len(sent) >= MESSAGES_PER_MINUTE:
                wait = int(60 - (now - sent[0])) + 1
                raise NoticeError(
                    429,
                    "ErrorExceededMessageLimit",
                    "Message submission rate for this mailbox has exceeded the limit.",
                    {"Retry-After": str(wait)},
                )
            sent.append(now)
            self._mail.append(SentMail(mailbox, message))

    def mail(self) -> list[SentMail]:
        with self._lock:
            return list(self._mail)

    # alerts_v2 comments

    def alert_comments(self, alert_id: str) -> list[JsonObject]:
        with self._lock:
            return [dict(c) for c in self._alert_comments.get(alert_id, [])]

    def add_alert_comment(self, alert_id: str, body: JsonObject | None) -> list[JsonObject]:
        text = body.get("comment") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise NoticeError(400, "BadRequest", "The comment must be a non-empty string.")
        comment = {
            "@odata.type": "#microsoft.graph.security.alertComment",
            "comment": text,
            "createdByDisplayName": "Automation",
            "createdDateTime": _now(),
        }
        with self._lock:
            self._alert_comments[alert_id].append(comment)
            return [dict(c) for c in self._alert_comments[alert_id]]

    def commented_alerts(self) -> dict[str, list[JsonObject]]:
        with self._lock:
            return {a: [dict(c) for c in cs] for a, cs in self._alert_comments.items() if cs}

    # Sentinel incident comments (ARM)

    def add_incident(self, incident_id: str) -> None:
        with self._lock:
            self._incidents.setdefault(incident_id.lower(), {})

    def grant_responder(self, workspace_id: str) -> None:
        """The Microsoft Sentinel Responder role for the app on `workspace_id`."""
        with self._lock:
            self._responder_on.add(workspace_id.lower().rstrip("/"))

    def incident_comments(self, incident_id: str) -> dict[str, JsonObject]:
        with self._lock:
            return dict(self._incidents.get(incident_id.lower(), {}))

    def commented_incidents(self) -> dict[str, dict[str, JsonObject]]:
        with self._lock:
            return {i: dict(cs) for i, cs in self._incidents.items() if cs}

    def put_incident_comment(
        self, path: str, query: Mapping[str, str], body: JsonObject | None
    ) -> tuple[int, JsonObject]:
        lowered = path.lower()
        incident, marker, comment_id = lowered.rpartition("/comments/")
        if not marker or _SENTINEL not in incident or "/" in comment_id or not comment_id:
            raise NoticeError(404, "NotFound", f"No route for PUT {path}.")
        if not query.get("api-version"):
            raise NoticeError(
                400, "MissingApiVersionParameter", "The api-version query parameter is required."
            )
        workspace = incident.partition(_SENTINEL)[0]
        with self._lock:
            authorized = workspace in self._responder_on
            known = incident in self._incidents
        if not authorized:
            raise NoticeError(
                403,
                "AuthorizationFailed",
                "The client does not have authorization to perform action "
                "'Microsoft.SecurityInsights/incidents/comments/write' over scope "
                f"'{path.rpartition('/comments/')[0]}' or the scope is invalid.",
            )
        if not known:
            raise NoticeError(404, "NotFound", "Incident not found.")
        properties = body.get("properties") if isinstance(body, dict) else None
        message = properties.get("message") if isinstance(properties, dict) else None
        if not isinstance(message, str) or not message:
            raise NoticeError(400, "BadRequest", "properties.message is required.")
        original = path.rpartition("/comments/")
        resource = {
            "id": path,
            "name": original[2],
            "type": "Microsoft.SecurityInsights/Incidents/Comments",
            "etag": f'"{uuid.uuid4()}"',
            "properties": {"message": message, "createdTimeUtc": _now()},
        }
        with self._lock:
            comments = self._incidents[incident]
            status = 200 if comment_id in comments else 201
            comments[comment_id] = resource
        return status, resource


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_body(error: NoticeError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message}}
