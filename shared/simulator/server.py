"""A loopback HTTP server that answers the slice of Microsoft Graph v1.0 the responder calls.

Unknown routes get 404 with error code `UnknownRoute`, so a call the simulator does not model
fails loudly instead of looking like a missing user.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import socket
import sys
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from shared.simulator.state import (
    AlertKey,
    Fault,
    JsonObject,
    SimUser,
    TenantState,
    parse_timestamp,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/v1.0"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 2000

_JSON_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
_FILTER = re.compile(r"^\s*lastUpdateDateTime\s+(gt|ge)\s+(\S+)\s*$")
_ORDERBY = re.compile(r"^\s*lastUpdateDateTime(\s+asc)?\s*$")
_REVOKE_ACTIONS = ("revokeSignInSessions", "microsoft.graph.revokeSignInSessions")


class _GraphError(Exception):
    """An error answer; the handler wraps it in Graph's error envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Reply:
    status: int
    body: JsonObject | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class _GraphApi:
    """The Graph semantics of the simulator, free of HTTP plumbing."""

    def __init__(self, state: TenantState, base_url: str) -> None:
        self._state = state
        self._base_url = base_url

    def handle(
        self, method: str, segments: list[str], query: Mapping[str, str], body: bytes
    ) -> _Reply:
        match method, segments:
            case "GET", ["users", key]:
                return _Reply(200, self._user_json(self._user(key)))
            case "PATCH", ["users", key]:
                return self._patch_user(key, body)
            case "POST", ["users", key, action] if action in _REVOKE_ACTIONS:
                return self._revoke_sessions(key)
            case "GET", ["security", "alerts_v2"]:
                return self._list_alerts(query)
        raise _GraphError(404, "UnknownRoute", f"Unsupported route: {method} /{'/'.join(segments)}")

    def _user(self, key: str) -> SimUser:
        try:
            return self._state.user(key)
        except KeyError:
            raise _user_not_found(key) from None

    def _user_json(self, user: SimUser) -> JsonObject:
        return {
            "@odata.context": f"{self._base_url}/$metadata#users/$entity",
            "id": user.id,
            "userPrincipalName": user.user_principal_name,
            "displayName": user.display_name,
            "accountEnabled": user.account_enabled,
            "signInSessionsValidFromDateTime": (
                user.sign_in_sessions_revoked_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                if user.sign_in_sessions_revoked_at
                else None
            ),
        }

    def _patch_user(self, key: str, body: bytes) -> _Reply:
        try:
            changes = json.loads(body)
        except ValueError:
            raise _GraphError(
                400, "Request_BadRequest", "The request body is not valid JSON."
            ) from None
        if not isinstance(changes, dict):
            raise _GraphError(400, "Request_BadRequest", "The request body must be a JSON object.")
        for name in changes:
            if name not in ("accountEnabled", "displayName") and not name.startswith("@odata."):
                raise _GraphError(
                    400, "Request_BadRequest", f"Property '{name}' is not supported here."
                )
        account_enabled = changes.get("accountEnabled")
        if "accountEnabled" in changes and not isinstance(account_enabled, bool):
            raise _GraphError(
                400, "Request_BadRequest", "Property 'accountEnabled' must be a bool."
            )
        display_name = changes.get("displayName")
        if "displayName" in changes and not (isinstance(display_name, str) and display_name):
            raise _GraphError(
                400, "Request_BadRequest", "Property 'displayName' must be a non-empty string."
            )
        try:
            self._state.update_user(key, account_enabled=account_enabled, display_name=display_name)
        except KeyError:
            raise _user_not_found(key) from None
        return _Reply(204)

    def _revoke_sessions(self, key: str) -> _Reply:
        try:
            self._state.revoke_sessions(key, datetime.now(UTC))
        except KeyError:
            raise _user_not_found(key) from None
        return _Reply(
            200, {"@odata.context": f"{self._base_url}/$metadata#Edm.Boolean", "value": True}
        )

    def _list_alerts(self, query: Mapping[str, str]) -> _Reply:
        updated_since: datetime | None = None
        inclusive = False
        if "$filter" in query:
            updated_since, inclusive = _parse_filter(query["$filter"])
        if "$orderby" in query and not _ORDERBY.match(query["$orderby"]):
            raise _GraphError(
                400,
                "BadRequest",
                f"Unsupported $orderby: {query['$orderby']!r}; "
                "only 'lastUpdateDateTime asc' is supported.",
            )
        limit = _parse_top(query.get("$top"))
        after = _decode_skiptoken(query["$skiptoken"]) if "$skiptoken" in query else None
        page, cursor = self._state.alerts_page(
            updated_since=updated_since, inclusive=inclusive, after=after, limit=limit
        )
        body: JsonObject = {
            "@odata.context": f"{self._base_url}/$metadata#security/alerts_v2",
            "value": page,
        }
        if cursor is not None:
            # The next link repeats the caller's query so each page is filtered the same way.
            carried = {
                name: query[name] for name in ("$filter", "$orderby", "$top") if name in query
            }
            carried["$skiptoken"] = _encode_skiptoken(cursor)
            body["@odata.nextLink"] = f"{self._base_url}/security/alerts_v2?" + urlencode(
                carried, quote_via=quote, safe="$:"
            )
        return _Reply(200, body)


def _user_not_found(key: str) -> _GraphError:
    return _GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects "
        "are not present.",
    )


def _parse_filter(expression: str) -> tuple[datetime, bool]:
    match = _FILTER.match(expression)
    if match is None:
        raise _GraphError(
            400,
            "BadRequest",
            f"Unsupported $filter: {expression!r}; only "
            "'lastUpdateDateTime gt|ge <DateTimeOffset>' is supported.",
        )
    operator, literal = match.groups()
    try:
        since = parse_timestamp(literal)
    except ValueError:
        raise _GraphError(
            400, "BadRequest", f"Invalid DateTimeOffset in $filter: {literal!r}."
        ) from None
    return since, operator == "ge"


def _parse_top(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise _GraphError(
            400, "BadRequest", f"Invalid $top: {value!r}; expected 1 to {MAX_PAGE_SIZE}."
        )
    return int(value)


def _encode_skiptoken(key: AlertKey) -> str:
    raw = json.dumps([key[0].isoformat(), key[1]]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_skiptoken(token: str) -> AlertKey:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        updated, alert_id = json.loads(raw)
        if isinstance(updated, str) and isinstance(alert_id, str):
            return parse_timestamp(updated), alert_id
    except (binascii.Error, ValueError, TypeError):
        pass
    raise _GraphError(400, "BadRequest", "Invalid $skiptoken.")


def _error_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "UnknownError"


class _GraphServer(ThreadingHTTPServer):
    daemon_threads = True
    # Idle keep-alive connections would make server_close() wait forever; stop() closes
    # them itself instead.
    block_on_close = False

    def __init__(self, state: TenantState, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.token = token
        self.base_url = f"http://127.0.0.1:{self.server_port}{API_PREFIX}"
        self.api = _GraphApi(state, self.base_url)
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("Connection already closed", exc_info=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer (timeouts, stop()) are routine here; the default
        # prints a traceback to stderr. socketserver calls this from inside its except block.
        logger.debug("Error while serving %s", client_address, exc_info=sys.exc_info())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SimulatedGraph/1.0"
    # Headers and body go out in two writes; without TCP_NODELAY the client's delayed ACK
    # adds about 40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        server = self.server
        assert isinstance(server, _GraphServer)
        request_id = str(uuid.uuid4())
        try:
            reply = self._answer(server)
        except _GraphError as error:
            reply = self._error_reply(error, request_id)
        except Exception:
            # A simulator bug should fail the caller's request visibly, not hang up on it.
            logger.exception("Simulator failed on %s %s", self.command, self.path)
            failure = _GraphError(500, "generalException", "The simulator failed; see its log.")
            reply = self._error_reply(failure, request_id)
        self._send(reply, request_id)

    def _answer(self, server: _GraphServer) -> _Reply:
        parts = urlsplit(self.path)
        relative = _relative_path(parts.path)
        logged_path = unquote(relative if relative is not None else parts.path)
        server.state.record_request(self.command, logged_path)
        body = self._read_body()
        self._authenticate(server.token)
        fault = server.state.take_fault(self.command, logged_path)
        if fault is not None:
            self._apply(fault, server.stopping)
        if relative is None:
            raise _GraphError(
                404, "UnknownRoute", f"Unsupported route: {self.command} {parts.path}"
            )
        # Split before decoding so an encoded '/' inside an id stays part of that segment.
        segments = [unquote(segment) for segment in relative.split("/") if segment]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        return server.api.handle(self.command, segments, query, body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Without a length the rest of the stream cannot be framed, so drop the connection.
            self.close_connection = True
            raise _GraphError(411, "LengthRequired", "Send the body with a Content-Length.")
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            self.close_connection = True
            raise _GraphError(400, "BadRequest", f"Invalid Content-Length: {length!r}.")
        return self.rfile.read(int(length))

    def _authenticate(self, token: str) -> None:
        scheme, _, credential = self.headers.get("Authorization", "").partition(" ")
        if not credential:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        if scheme.lower() != "bearer" or credential.strip() != token:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.")

    def _apply(self, fault: Fault, stopping: threading.Event) -> None:
        if fault.delay_s:
            # An Event wait rather than sleep, so stop() is not held up by a slow fault.
            stopping.wait(fault.delay_s)
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            raise _GraphError(fault.status, _error_code(fault.status), "Injected fault.", headers)

    def _error_reply(self, error: _GraphError, request_id: str) -> _Reply:
        body: JsonObject = {
            "error": {
                "code": error.code,
                "message": error.message,
                "innerError": self._inner_error(request_id),
            }
        }
        return _Reply(error.status, body, error.headers)

    def _inner_error(self, request_id: str) -> JsonObject:
        inner: JsonObject = {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
        }
        client_request_id = self.headers.get("client-request-id")
        if client_request_id:
            inner["client-request-id"] = client_request_id
        return inner

    def _send(self, reply: _Reply, request_id: str) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("request-id", request_id)
        client_request_id = self.headers.get("client-request-id")
        if client_request_id:
            self.send_header("client-request-id", client_request_id)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.body is not None:
            self.send_header("Content-Type", _JSON_CONTENT_TYPE)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


def _relative_path(path: str) -> str | None:
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        return path[len(API_PREFIX) :]
    return None


class SimulatedTenant:
    """A Graph v1.0 stand-in on 127.0.0.1 for tests and drills; use it as a context manager.

    Requests must carry `Authorization: Bearer <token>`. Faults apply after that check, in the
    order they were added, so unauthenticated requests never use them up.
    """

    def __init__(
        self,
        token: str = "sim-token",
        tenant_id: str = "00000000-0000-0000-0000-0000000000aa",
    ) -> None:
        self._token = token
        self._tenant_id = tenant_id
        self._state = TenantState()
        self._server: _GraphServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self._token

    @property
    def tenant_id(self) -> str:
        return self._tenant_id

    @property
    def base_url(self) -> str:
        """The Graph base URL to give the SDK, such as `http://127.0.0.1:PORT/v1.0`."""
        if self._server is None:
            raise RuntimeError("the simulated tenant is not started")
        return self._server.base_url

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a simulated tenant can only be started once")
        self._server = _GraphServer(self._state, self._token)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="simulated-tenant",
            daemon=True,
        )
        self._thread.start()
        logger.info("Simulated tenant serving Graph at %s", self._server.base_url)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None or server.stopping.is_set():
            return
        server.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        logger.info("Simulated tenant at %s stopped", server.base_url)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def add_user(self, user: SimUser) -> None:
        """Store a copy of `user`; ValueError if its id or UPN is taken."""
        self._state.add_user(user)

    def user(self, id_or_upn: str) -> SimUser:
        """A snapshot of the user found by id or UPN (case-insensitive); KeyError if none."""
        return self._state.user(id_or_upn)

    def add_alert(self, alert: Mapping[str, Any]) -> None:
        """Store a raw alerts_v2 object with `id` and `lastUpdateDateTime`; same id replaces."""
        self._state.add_alert(alert)

    @property
    def alerts(self) -> list[JsonObject]:
        """Copies of the stored alerts, ascending by lastUpdateDateTime."""
        return self._state.alerts()

    def add_fault(self, fault: Fault) -> None:
        self._state.add_fault(fault)

    def clear_faults(self) -> None:
        self._state.clear_faults()

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far; the path is decoded, after `/v1.0`."""
        return self._state.requests()

    def reset_requests(self) -> None:
        self._state.reset_requests()
