"""A loopback HTTP server answering the slice of Graph v1.0 and Exchange's admin API we call, and
publishing the tenant's token signing keys.

Unknown routes get 404 with error code `UnknownRoute`, so a call the simulator does not model
fails loudly instead of looking like a missing user.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import re
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from shared.permissions import EXCHANGE_AUDIENCE, FEATURES, GRAPH_AUDIENCE, manifest
from shared.simulator.access import AccessError, AccessStore
from shared.simulator.exchange import (
    NOT_FOUND,
    CmdletError,
    ExchangeApi,
    TransportRuleStore,
    parse_invocation,
)
from shared.simulator.identity import DEFAULT_UPN, AppIdentity, TokenError, TokenIssuer
from shared.simulator.named_locations import NamedLocationError, NamedLocationStore
from shared.simulator.notices import (
    ARM_AUDIENCE,
    ARM_PREFIX,
    WORKFLOW_PREFIX,
    NoticeError,
    NoticeStore,
    SentMail,
)
from shared.simulator.permissions import (
    PermissionDenied,
    check,
    limit_memberships,
    requirement,
)
from shared.simulator.state import (
    Fault,
    JsonObject,
    SimUser,
    TenantState,
    TenantWrite,
    parse_timestamp,
)
from shared.simulator.subscriptions import Delivery, SubscriptionError, SubscriptionStore

logger = logging.getLogger(__name__)

API_PREFIX = "/v1.0"
EXCHANGE_PREFIX = "/adminapi/"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 2000

_JSON_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;"
    "IEEE754Compatible=false;charset=utf-8"
)
_FILTER = re.compile(r"^\s*lastUpdateDateTime\s+(gt|ge)\s+(\S+)\s*$")
_REVOKE_ACTIONS = ("revokeSignInSessions", "microsoft.graph.revokeSignInSessions")
_NAMED_LOCATIONS = ("identity", "conditionalAccess", "namedLocations")
_GROUP_CASTS = ("graph.group", "microsoft.graph.group")
_EXCHANGE_LOGGED_HEADERS = ("Prefer", "X-AnchorMailbox")


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
    # Sent as is, without a Content-Type, instead of a JSON body (Exchange's non-JSON answers).
    raw: bytes | None = None


class _GraphApi:
    """The Graph semantics of the simulator, free of HTTP plumbing."""

    def __init__(
        self,
        state: TenantState,
        locations: NamedLocationStore,
        access: AccessStore,
        subscriptions: SubscriptionStore,
        base_url: str,
        notices: NoticeStore,
    ) -> None:
        self._state = state
        self._locations = locations
        self._access = access
        self._subscriptions = subscriptions
        self._base_url = base_url
        self._notices = notices

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
            case "POST", ["users", key, "sendMail"]:
                return self._send_mail(key, body)
            case "GET", ["security", "alerts_v2", alert_id]:
                alert = self._alert(alert_id)
                return _Reply(200, {**alert, "comments": self._notices.alert_comments(alert_id)})
            case "POST", ["security", "alerts_v2", alert_id, "comments"]:
                self._alert(alert_id)
                try:
                    comments = self._notices.add_alert_comment(alert_id, _maybe_json(body))
                except NoticeError as error:
                    raise _GraphError(error.status, error.code, error.message) from None
                context = (
                    f"{self._base_url}/$metadata#Collection(microsoft.graph.security.alertComment)"
                )
                return _Reply(200, {"@odata.context": context, "value": comments})
            case "GET", ["roleManagement", "directory", "roleAssignments"]:
                return self._role_assignments(query)
            case _, ["identity", "conditionalAccess", "policies", *rest] if len(rest) < 2:
                try:
                    return self._policies(method, rest[0] if rest else None, query, body)
                except AccessError as error:
                    raise _GraphError(error.status, error.code, error.message) from None
            case _, ["identity", "conditionalAccess", "namedLocations", *rest] if len(rest) < 2:
                try:
                    return self._named_locations(method, rest[0] if rest else None, query, body)
                except NamedLocationError as error:
                    raise _GraphError(
                        error.status, error.code, error.message, error.headers
                    ) from None
            case _, ["subscriptions", *rest] if len(rest) < 2:
                try:
                    return self._subscription(method, rest[0] if rest else None, body)
                except SubscriptionError as error:
                    raise _GraphError(error.status, error.code, error.message) from None
            case "GET", ["users", key, "transitiveMemberOf", cast] if cast in _GROUP_CASTS:
                # Role-assignable groups cannot hold groups: direct membership is transitive.
                groups = self._subscriptions.groups_of(self._user(key).id)
                return _Reply(
                    200, {"value": [{"@odata.type": "#microsoft.graph.group", **g} for g in groups]}
                )
            case "GET", ["groups", group_id, *rest] if rest in ([], ["members"]):
                try:
                    group = self._subscriptions.group(group_id)
                except SubscriptionError as error:
                    raise _GraphError(error.status, error.code, error.message) from None
                return _Reply(200, self._members_json(group) if rest else group)
        raise _GraphError(404, "UnknownRoute", f"Unsupported route: {method} /{'/'.join(segments)}")

    def _alert(self, alert_id: str) -> JsonObject:
        alert = self._state.alert(alert_id)
        if alert is not None:
            return alert
        raise _GraphError(404, "NotFound", f"Alert {alert_id} was not found.")

    def _send_mail(self, key: str, body: bytes) -> _Reply:
        """sendMail as the mailbox `key`; Exchange, not the token, decides who may (RBAC for
        Applications: an "Application Mail.Send" scope holding the mailbox)."""
        try:
            user = self._state.user(key)
        except KeyError:
            user = None
        mailbox = user.user_principal_name if user else key
        try:
            self._notices.send_mail(mailbox, user is not None, _maybe_json(body))
        except NoticeError as error:
            raise _GraphError(error.status, error.code, error.message, error.headers) from None
        return _Reply(202)

    def _subscription(self, method: str, subscription_id: str | None, body: bytes) -> _Reply:
        store = self._subscriptions
        match method, subscription_id:
            case "POST", None:
                return _Reply(201, store.create(_json_object(body)))
            case "GET", None:
                return _Reply(200, {"value": store.all()})
            case "GET", str():
                return _Reply(200, store.get(subscription_id))
            case "PATCH", str():
                return _Reply(200, store.update(subscription_id, _json_object(body)))
            case "DELETE", str():
                store.delete(subscription_id)
                return _Reply(204)
        raise _GraphError(404, "UnknownRoute", f"Unsupported route: {method} /subscriptions")

    def _members_json(self, group: JsonObject) -> JsonObject:
        members = []
        for member in group["members"]:
            user = self._user(member)
            members.append(
                {
                    "@odata.type": "#microsoft.graph.user",
                    "id": user.id,
                    "userPrincipalName": user.user_principal_name,
                }
            )
        return {"@odata.context": f"{self._base_url}/$metadata#directoryObjects", "value": members}

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
            "createdDateTime": (
                user.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if user.created_at else None
            ),
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
        if "accountEnabled" in changes:
            self._check_account_write(key)
        try:
            user = self._state.update_user(
                key, account_enabled=account_enabled, display_name=display_name
            )
        except KeyError:
            raise _user_not_found(key) from None
        self._subscriptions.notify(*user_change(user))
        return _Reply(204)

    def _check_account_write(self, key: str) -> None:
        user_id = self._user(key).id
        member_of = [
            g["id"] for g in self._subscriptions.groups_of(user_id) if g["isAssignableToRole"]
        ]
        owner_of = [
            g["id"] for g in self._subscriptions.groups_owned_by(user_id) if g["isAssignableToRole"]
        ]
        try:
            self._access.check_account_write(user_id, member_of, bool(member_of or owner_of))
        except AccessError as error:
            raise _GraphError(error.status, error.code, error.message) from None

    def _role_assignments(self, query: Mapping[str, str]) -> _Reply:
        try:
            # Without a $filter Graph would list every assignment; the responder never asks.
            found = self._access.assignments(query.get("$filter", ""))
        except AccessError as error:
            raise _GraphError(error.status, error.code, error.message) from None
        return self._page("roleManagement/directory/roleAssignments", found, query)

    def _page(self, path: str, found: list[JsonObject], query: Mapping[str, str]) -> _Reply:
        """One page of `found` (the access store's page size unless $top says otherwise),
        with an @odata.nextLink that repeats the caller's $filter and $top."""
        limit = _parse_top(query.get("$top"), self._access.page_size)
        skip = _decode_offset(query["$skiptoken"]) if "$skiptoken" in query else 0
        body: JsonObject = {
            "@odata.context": f"{self._base_url}/$metadata#{path}",
            "value": found[skip : skip + limit],
        }
        if skip + limit < len(found):
            carried = {name: query[name] for name in ("$filter", "$top") if name in query}
            carried["$skiptoken"] = _encode_offset(skip + limit)
            body["@odata.nextLink"] = f"{self._base_url}/{path}?" + urlencode(
                carried, quote_via=quote, safe="$:"
            )
        return _Reply(200, body)

    def _policies(
        self, method: str, policy_id: str | None, query: Mapping[str, str], body: bytes
    ) -> _Reply:
        collection = f"{self._base_url}/$metadata#identity/conditionalAccess/policies"
        match method, policy_id:
            case "GET", None:
                return self._page(
                    "identity/conditionalAccess/policies", self._access.policies(), query
                )
            case "GET", str():
                policy = self._access.policy(policy_id)
                return _Reply(200, {"@odata.context": f"{collection}/$entity", **policy})
            case "POST", None:
                policy = self._access.add_policy(_json_object(body))
                return _Reply(201, {"@odata.context": f"{collection}/$entity", **policy})
            case "PATCH", str():
                self._access.update_policy(policy_id, _json_object(body))
                return _Reply(204)
            case "DELETE", str():
                self._access.delete_policy(policy_id)
                return _Reply(204)
        path = f"identity/conditionalAccess/policies{'/' + policy_id if policy_id else ''}"
        raise _GraphError(404, "UnknownRoute", f"Unsupported route: {method} /{path}")

    def _revoke_sessions(self, key: str) -> _Reply:
        self._check_account_write(key)
        try:
            self._state.revoke_sessions(key, datetime.now(UTC))
        except KeyError:
            raise _user_not_found(key) from None
        return _Reply(
            200, {"@odata.context": f"{self._base_url}/$metadata#Edm.Boolean", "value": True}
        )

    def _list_alerts(self, query: Mapping[str, str]) -> _Reply:
        """List alerts_v2: $filter (lastUpdateDateTime gt|ge only), $top, $skip and $count, newest
        first, with an @odata.nextLink that carries $skip. The documented query options are
        $count, $filter, $skip and $top; anything else is refused."""
        for name in query:
            if name.startswith("$") and name not in ("$filter", "$top", "$skip", "$count"):
                raise _GraphError(
                    400, "BadRequest", f"Query option {name!r} is not supported on alerts_v2."
                )
        updated_since: datetime | None = None
        inclusive = False
        if "$filter" in query:
            updated_since, inclusive = _parse_filter(query["$filter"])
        limit = _parse_top(query.get("$top"))
        skip = _parse_skip(query.get("$skip"))
        count = query.get("$count")
        if count not in (None, "true", "false"):
            raise _GraphError(400, "BadRequest", f"Invalid $count: {count!r}.")
        for hook in self._state.take_alert_page_hooks(skip):
            hook()
        page, total = self._state.alerts_page(
            updated_since=updated_since, inclusive=inclusive, skip=skip, limit=limit
        )
        body: JsonObject = {"@odata.context": f"{self._base_url}/$metadata#security/alerts_v2"}
        if count == "true":
            body["@odata.count"] = total
        body["value"] = page
        if skip + limit < total:
            # The next link repeats the caller's query so each page is filtered the same way.
            carried = {name: query[name] for name in ("$filter", "$top", "$count") if name in query}
            carried["$skip"] = str(skip + limit)
            body["@odata.nextLink"] = f"{self._base_url}/security/alerts_v2?" + urlencode(
                carried, quote_via=quote, safe="$:"
            )
        return _Reply(200, body)

    def _named_locations(
        self, method: str, location_id: str | None, query: Mapping[str, str], body: bytes
    ) -> _Reply:
        collection = f"{self._base_url}/$metadata#identity/conditionalAccess/namedLocations"
        match method, location_id:
            case "GET", None:
                return self._list_named_locations(query)
            case "GET", str():
                location = self._locations.get(location_id)
                return _Reply(200, {"@odata.context": f"{collection}/$entity", **location})
            case "POST", None:
                self._locations.admit_write()
                location = self._locations.create(_json_object(body))
                return _Reply(201, {"@odata.context": f"{collection}/$entity", **location})
            case "PATCH", str():
                self._locations.admit_write()
                self._locations.update(location_id, _json_object(body))
                return _Reply(204)
            case "DELETE", str():
                self._locations.admit_write()
                self._locations.delete(location_id)
                return _Reply(204)
        path = "/".join((*_NAMED_LOCATIONS, *([location_id] if location_id else [])))
        raise _GraphError(404, "UnknownRoute", f"Unsupported route: {method} /{path}")

    def _list_named_locations(self, query: Mapping[str, str]) -> _Reply:
        # $filter and $select are accepted and ignored: callers filter the page themselves.
        limit = _parse_top(query.get("$top"))
        skip = _decode_offset(query["$skiptoken"]) if "$skiptoken" in query else 0
        page, next_skip = self._locations.page(skip, limit)
        body: JsonObject = {
            "@odata.context": f"{self._base_url}/$metadata#identity/conditionalAccess/"
            "namedLocations",
            "value": page,
        }
        if next_skip is not None:
            carried = {
                name: query[name] for name in ("$filter", "$select", "$top") if name in query
            }
            carried["$skiptoken"] = _encode_offset(next_skip)
            body["@odata.nextLink"] = f"{self._base_url}/{'/'.join(_NAMED_LOCATIONS)}?" + urlencode(
                carried, quote_via=quote, safe="$:"
            )
        return _Reply(200, body)


def user_change(user: SimUser) -> tuple[str, str, JsonObject]:
    """The change notification of an updated user: no resource data beyond the id."""
    data = {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user.id}", "id": user.id}
    return f"Users/{user.id}", "updated", data


def _json_object(body: bytes) -> JsonObject:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise _GraphError(400, "BadRequest", "The request body is not valid JSON.") from None
    if not isinstance(parsed, dict):
        raise _GraphError(400, "BadRequest", "The request body must be a JSON object.")
    return parsed


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"skip": offset}).encode()).rstrip(b"=").decode()


def _decode_offset(token: str) -> int:
    try:
        offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["skip"]
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            return offset
    except (binascii.Error, ValueError, TypeError, KeyError):
        pass
    raise _GraphError(400, "BadRequest", "Invalid $skiptoken.")


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


def _parse_top(value: str | None, default: int = DEFAULT_PAGE_SIZE) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise _GraphError(
            400, "BadRequest", f"Invalid $top: {value!r}; expected 1 to {MAX_PAGE_SIZE}."
        )
    return int(value)


def _parse_skip(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit():
        raise _GraphError(400, "BadRequest", f"Invalid $skip: {value!r}.")
    return int(value)


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

    def __init__(
        self,
        state: TenantState,
        token: str,
        rules: TransportRuleStore,
        locations: NamedLocationStore,
        access: AccessStore,
        subscriptions: SubscriptionStore,
        tenant_names: tuple[str, ...],
        token_issuer: TokenIssuer,
        app: AppIdentity,
        notices: NoticeStore,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.notices = notices
        self.state = state
        self.token = token
        self.app = app
        self.subscription_store = subscriptions
        # A single-tenant stand-in: its token endpoint answers under the tenant's names and
        # under "organizations".
        self.token_tenants = (*tenant_names, "organizations")
        self.rules = rules
        self.tenant_names = tenant_names
        self.token_issuer = token_issuer
        self.exchange_base_url = f"http://127.0.0.1:{self.server_port}"
        self.base_url = f"{self.exchange_base_url}{API_PREFIX}"
        self.api = _GraphApi(state, locations, access, subscriptions, self.base_url, notices)
        self.exchange_api = ExchangeApi(rules, self.exchange_base_url, tenant_names)
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def subscription_resource(self, subscription_id: str) -> str | None:
        """The resource a live subscription watches; None if there is none (the handler then
        answers 404)."""
        try:
            resource = self.subscription_store.get(subscription_id).get("resource")
        except SubscriptionError:
            return None
        return resource if isinstance(resource, str) else None

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
    # Whether the request being answered is for Exchange, whose errors have their own envelope.
    on_exchange = False
    # Whether a fault said to carry the request out and then hang up without answering.
    drop_response = False

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
        self.on_exchange = urlsplit(self.path).path.startswith(EXCHANGE_PREFIX)
        self.drop_response = False
        try:
            reply = self._answer(server)
        except CmdletError as error:
            body = None if error.raw is not None else error.body()
            reply = _Reply(error.status, body, error.headers, error.raw)
        except _GraphError as error:
            reply = self._error_reply(error, request_id)
        except Exception:
            # A simulator bug should fail the caller's request visibly, not hang up on it.
            logger.exception("Simulator failed on %s %s", self.command, self.path)
            failure = _GraphError(500, "generalException", "The simulator failed; see its log.")
            reply = self._error_reply(failure, request_id)
        if self.drop_response:
            self.close_connection = True
            return
        self._send(reply, request_id)

    def _answer(self, server: _GraphServer) -> _Reply:
        parts = urlsplit(self.path)
        if self.command == "POST" and _token_tenant(parts.path) in server.token_tenants:
            # The identity platform stands apart from Graph: not logged, no faults.
            return self._issue_token(server)
        relative = _relative_path(parts.path)
        logged_path = unquote(relative if relative is not None else parts.path)
        server.state.record_request(self.command, logged_path)
        body = self._read_body()
        # Like Entra's, the signing keys are public.
        serves_keys = self.command == "GET" and _jwks_tenant(parts.path) in server.tenant_names
        if parts.path.startswith((WORKFLOW_PREFIX, ARM_PREFIX)):
            return self._notice_endpoint(server, parts.path, parts.query, logged_path, body)
        tenant = _exchange_tenant(parts.path)
        headers = dict(self.headers.items())
        roles: frozenset[str] = frozenset()
        if not serves_keys:
            roles = self._authenticate(server, EXCHANGE_AUDIENCE if tenant else GRAPH_AUDIENCE)
        cmdlet = _record_invocation(server.rules, body, headers) if tenant is not None else None
        fault = server.state.take_fault(self.command, logged_path, cmdlet)
        if fault is not None:
            self._apply(fault, server.stopping)
            self.drop_response = fault.drop_response
        if serves_keys:
            return _Reply(200, server.token_issuer.jwks())
        if tenant is not None and self.command == "POST":
            try:
                server.app.admit_cmdlet(roles, cmdlet)
            except PermissionDenied as error:
                raise _GraphError(error.status, error.code, error.message) from None
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            return _Reply(200, server.exchange_api.invoke(tenant, query, body, headers))
        if relative is None:
            raise _GraphError(
                404, "UnknownRoute", f"Unsupported route: {self.command} {parts.path}"
            )
        # Split before decoding so an encoded '/' inside an id stays part of that segment.
        segments = [unquote(segment) for segment in relative.split("/") if segment]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        need = requirement(self.command, segments, _maybe_json(body), server.subscription_resource)
        try:
            check(need, roles)
        except PermissionDenied as error:
            raise _GraphError(error.status, error.code, error.message) from None
        reply = server.api.handle(self.command, segments, query, body)
        limited = limit_memberships(self.command, segments, reply.body, roles)
        return reply if limited is reply.body else _Reply(reply.status, limited, reply.headers)

    def _notice_endpoint(
        self, server: _GraphServer, path: str, raw_query: str, logged_path: str, body: bytes
    ) -> _Reply:
        """A Teams Workflows trigger (authorized by its URL's signature, no bearer token) or
        an ARM Sentinel incident comment (a bearer token for ARM)."""
        workflow = path.startswith(WORKFLOW_PREFIX)
        if not workflow:
            self._authenticate(server, ARM_AUDIENCE)
        fault = server.state.take_fault(self.command, logged_path)
        if fault is not None:
            self._apply(fault, server.stopping)
            self.drop_response = fault.drop_response
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        try:
            if workflow and self.command == "POST":
                server.notices.post_workflow(path, query, _maybe_json(body))
                return _Reply(202)
            if not workflow and self.command == "PUT":
                status, resource = server.notices.put_incident_comment(
                    path, query, _maybe_json(body)
                )
                return _Reply(status, resource)
        except NoticeError as error:
            raise _GraphError(error.status, error.code, error.message, error.headers) from None
        raise _GraphError(404, "UnknownRoute", f"Unsupported route: {self.command} {path}")

    def _issue_token(self, server: _GraphServer) -> _Reply:
        form = dict(parse_qsl(self._read_body().decode("utf-8", "replace")))
        try:
            return _Reply(200, server.app.token_response(form))
        except TokenError as error:
            return _Reply(error.status, error.body())

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

    def _authenticate(self, server: _GraphServer, audience: str) -> frozenset[str]:
        """The application permissions (`roles`) of the request's token for `audience`."""
        scheme, _, credential = self.headers.get("Authorization", "").partition(" ")
        if not credential:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        roles = (
            server.app.roles_of(credential.strip(), audience)
            if scheme.lower() == "bearer"
            else None
        )
        if roles is None:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.")
        return roles

    def _apply(self, fault: Fault, stopping: threading.Event) -> None:
        if fault.delay_s:
            # An Event wait rather than sleep, so stop() is not held up by a slow fault.
            stopping.wait(fault.delay_s)
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            raise _GraphError(fault.status, _error_code(fault.status), "Injected fault.", headers)

    def _error_reply(self, error: _GraphError, request_id: str) -> _Reply:
        if self.on_exchange:
            # No Retry-After was ever seen on the live admin endpoint, throttled or not.
            headers = {k: v for k, v in error.headers.items() if k.lower() != "retry-after"}
            failure = CmdletError(error.status, error.code, error.message, headers=headers)
            return _Reply(failure.status, failure.body(), failure.headers)
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
        if reply.raw is not None:
            payload = reply.raw
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


def _exchange_tenant(path: str) -> str | None:
    """The decoded `{tenant}` of `/adminapi/beta/{tenant}/InvokeCommand`, else None."""
    match path.split("/"):
        case ["", "adminapi", "beta", tenant, "InvokeCommand"] if tenant:
            return unquote(tenant)
    return None


def _token_tenant(path: str) -> str | None:
    """The decoded `{tenant}` of `/{tenant}/oauth2/v2.0/token`, else None."""
    match path.split("/"):
        case ["", tenant, "oauth2", "v2.0", "token"] if tenant:
            return unquote(tenant)
    return None


def _maybe_json(body: bytes) -> JsonObject | None:
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _jwks_tenant(path: str) -> str | None:
    """The decoded `{tenant}` of `/{tenant}/discovery/v2.0/keys`, else None."""
    match path.split("/"):
        case ["", tenant, "discovery", "v2.0", "keys"] if tenant:
            return unquote(tenant)
    return None


def _record_invocation(
    rules: TransportRuleStore, body: bytes, headers: Mapping[str, str]
) -> str | None:
    """Log the InvokeCommand before faults can fail it; the cmdlet name, or None if malformed."""
    try:
        cmdlet, parameters = parse_invocation(body)
    except CmdletError:
        # The endpoint itself answers 400 for it, once the faults have had their chance.
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    sent = {name: lowered.get(name.lower()) for name in _EXCHANGE_LOGGED_HEADERS}
    rules.record_call(cmdlet, parameters, sent)
    return cmdlet


class SimulatedTenant:
    """A Graph v1.0 and Exchange admin API stand-in on 127.0.0.1; use it as a context manager.

    Requests to either must carry `Authorization: Bearer <token>`. Faults apply after that check,
    in the order they were added, so unauthenticated requests never use them up. Writes to named
    locations faster than `named_location_writes_per_second` get 429; None turns that off.
    Role assignments and Conditional Access policies are listed `page_size` at a time unless
    the request sends `$top`.

    It is also the tenant's token issuer: `GET /{tenant}/discovery/v2.0/keys` (no bearer token
    needed, faults apply) serves its signing key, and `issue_token` signs access tokens with it.
    """

    def __init__(
        self,
        token: str = "sim-token",
        tenant_id: str = "00000000-0000-0000-0000-0000000000aa",
        *,
        default_domain: str = "contoso.onmicrosoft.com",
        named_location_writes_per_second: float | None = 1.0,
        page_size: int = DEFAULT_PAGE_SIZE,
        grants: Iterable[str] | None = None,
    ) -> None:
        self._token = token
        self._tenant_id = tenant_id
        self._default_domain = default_domain
        self._state = TenantState()
        self._rules = TransportRuleStore()
        self._locations = NamedLocationStore(named_location_writes_per_second)
        self._access = AccessStore(page_size)
        self._token_issuer = TokenIssuer(tenant_id)
        self._subscriptions = SubscriptionStore(tenant_id)
        self._notices = NoticeStore()
        self._app = AppIdentity(
            token,
            self._token_issuer,
            lambda: self.issuer,
            self._access.app_roles,
            every_grant() if grants is None else grants,
        )
        self._server: _GraphServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return self._token

    @property
    def tenant_id(self) -> str:
        return self._tenant_id

    @property
    def default_domain(self) -> str:
        """The tenant's `*.onmicrosoft.com` domain; Exchange accepts it in place of the id."""
        return self._default_domain

    @property
    def base_url(self) -> str:
        """The Graph base URL to give the SDK, such as `http://127.0.0.1:PORT/v1.0`."""
        return self._running().base_url

    @property
    def exchange_base_url(self) -> str:
        """Where Exchange's admin API lives, such as `http://127.0.0.1:PORT`.

        Cmdlets are POSTed to `{exchange_base_url}/adminapi/beta/{tenant id or default
        domain}/InvokeCommand`.
        """
        return self._running().exchange_base_url

    def _running(self) -> _GraphServer:
        if self._server is None:
            raise RuntimeError("the simulated tenant is not started")
        return self._server

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a simulated tenant can only be started once")
        # Make the signing key now, beside the caller's setup, rather than inside the first
        # token request, where it would slow the first Graph or Exchange call of a run.
        threading.Thread(
            target=lambda: self._token_issuer.kid, name="simulated-tenant-key", daemon=True
        ).start()
        self._server = _GraphServer(
            self._state,
            self._token,
            self._rules,
            self._locations,
            self._access,
            self._subscriptions,
            (self._tenant_id, self._default_domain),
            self._token_issuer,
            self._app,
            self._notices,
        )
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
        self._subscriptions.stop()
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

    def create_user(self, user: SimUser) -> None:
        """Create a user as someone else would (an admin, an attacker). Graph announces a new
        user to `users` subscriptions as `updated` (they support only `updated` and `deleted`),
        and a creation stamps createdDateTime."""
        created = (
            user if user.created_at else dataclasses.replace(user, created_at=datetime.now(UTC))
        )
        self._state.add_user(created)
        self._subscriptions.notify(*user_change(self._state.user(created.id)))

    def user(self, id_or_upn: str) -> SimUser:
        """A snapshot of the user found by id or UPN (case-insensitive); KeyError if none."""
        return self._state.user(id_or_upn)

    def assign_role(self, principal_id: str, role_id: str) -> None:
        """Give `principal_id` an active directory role assignment (tenant scope)."""
        self._access.assign(principal_id, role_id)

    def unassign_role(self, principal_id: str, role_id: str) -> None:
        """Remove that assignment; nothing happens if there is none."""
        self._access.unassign(principal_id, role_id)

    def role_assignments(self) -> list[JsonObject]:
        """Copies of every active role assignment, as Graph lists them."""
        return self._access.assignments()

    @property
    def grants(self) -> frozenset[str]:
        """The application permissions granted to the responder's app (Graph and Exchange)."""
        return self._app.grants()

    def set_grants(self, names: Iterable[str]) -> None:
        """Grant exactly `names`, as app role assignments; tokens issued from now on carry
        them (one already issued keeps what it had)."""
        self._app.set_grants(names)

    def revoke_grant(self, name: str) -> None:
        """Remove one application permission; KeyError if it is not granted."""
        held = set(self._app.grants())
        held.remove(name)
        self._app.set_grants(held)

    def set_exchange_roles(self, names: Iterable[str]) -> None:
        """The Exchange management roles assigned to the app (default: "Transport Rules");
        without one covering transport rules (or Exchange Administrator among the app's
        directory roles) the transport rule cmdlets are refused."""
        self._app.set_exchange_roles(names)

    @property
    def token_url(self) -> str:
        """The identity platform's token endpoint (client credentials grant)."""
        return f"{self._running().exchange_base_url}/{self._tenant_id}/oauth2/v2.0/token"

    def app_token(self, audience: str = GRAPH_AUDIENCE) -> str:
        """An access token of the app for `audience`, with the grants held now."""
        return self._app.mint(audience)

    def set_app_roles(self, role_ids: Iterable[str]) -> None:
        """The directory roles the responder's app holds (default: Privileged Authentication
        Administrator). Without it, or Global Administrator, enabling, disabling or signing
        out an account that holds a privileged role is answered 403."""
        self._access.set_app_roles(role_ids)

    def add_ca_policy(
        self,
        name: str,
        *,
        state: str = "enabled",
        include_users: Iterable[str] = ("All",),
        exclude_users: Iterable[str] = (),
        include_groups: Iterable[str] = (),
        exclude_groups: Iterable[str] = (),
        include_roles: Iterable[str] = (),
        exclude_roles: Iterable[str] = (),
        include_applications: Iterable[str] = ("All",),
        built_in_controls: Iterable[str] = ("block",),
        users_extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Add a Conditional Access policy (by default: all users, all apps, block) as an
        administrator would, with POST's checks; returns its id. `users_extra` adds other
        users-condition properties, such as `excludeGuestsOrExternalUsers`. ValueError
        carries the reason a policy is refused."""
        users = {
            "includeUsers": list(include_users),
            "excludeUsers": list(exclude_users),
            "includeGroups": list(include_groups),
            "excludeGroups": list(exclude_groups),
            "includeRoles": list(include_roles),
            "excludeRoles": list(exclude_roles),
            **(users_extra or {}),
        }
        body = {
            "displayName": name,
            "state": state,
            "conditions": {
                "users": users,
                "applications": {"includeApplications": list(include_applications)},
            },
            "grantControls": {"operator": "OR", "builtInControls": list(built_in_controls)},
        }
        try:
            return str(self._access.add_policy(body)["id"])
        except AccessError as error:
            raise ValueError(error.message) from None

    def ca_policies(self) -> list[JsonObject]:
        """Copies of the Conditional Access policies as Graph shows them, in creation order."""
        return self._access.policies()

    def ca_policy(self, policy_id: str) -> JsonObject:
        """A copy of one policy; KeyError if there is none."""
        try:
            return self._access.policy(policy_id)
        except AccessError:
            raise KeyError(policy_id) from None

    def edit_ca_policy(
        self, policy_id: str, changes: Mapping[str, Any] | None = None, **more: Any
    ) -> None:
        """Change a policy as an administrator would, with the PATCH semantics of the API
        (Graph property names: `edit_ca_policy(id, state="disabled")` or
        `edit_ca_policy(id, {"conditions": {...}})`) but no hooks. KeyError if there is no
        such policy, ValueError with the reason a change is refused."""
        try:
            self._access.edit_policy(policy_id, {**(changes or {}), **more})
        except AccessError as error:
            if error.status == 404:
                raise KeyError(policy_id) from None
            raise ValueError(error.message) from None

    def delete_ca_policy(self, policy_id: str) -> None:
        """Delete a policy as an administrator would; KeyError if there is none."""
        try:
            self._access.delete_policy(policy_id)
        except AccessError:
            raise KeyError(policy_id) from None

    def before_ca_write(self, hook: Callable[[SimulatedTenant], None], times: int = 1) -> None:
        """Run `hook(tenant)` just before each of the next `times` PATCHes of a Conditional
        Access policy is applied: after auth and faults, before the policy is looked up (a hook
        that deletes it makes the PATCH a 404), outside the simulator's locks so it can add,
        edit or delete policies. An exception from it fails the PATCH with 500."""
        self._access.before_write(lambda: hook(self), times)

    def change_user(
        self,
        id_or_upn: str,
        *,
        account_enabled: bool | None = None,
        display_name: str | None = None,
    ) -> None:
        """Change a user as someone else would (an admin, an attacker); notifies subscribers."""
        user = self._state.update_user(
            id_or_upn, account_enabled=account_enabled, display_name=display_name
        )
        self._subscriptions.notify(*user_change(user))

    def add_group(self, group_id: str, name: str, *, role_assignable: bool = False) -> None:
        """Add a security group; a role-assignable one can hold directory roles."""
        self._subscriptions.add_group(group_id, name, role_assignable)

    def add_group_member(self, group_id: str, user_id: str) -> None:
        """Add a member as someone else would; notifies subscribers of the group (with
        `members@delta`, which the responder does not rely on)."""
        self._subscriptions.add_member(group_id, user_id)
        data = {
            "@odata.type": "#Microsoft.Graph.Group",
            "@odata.id": f"Groups/{group_id}",
            "id": group_id,
            "members@delta": [{"id": user_id}],
        }
        self._subscriptions.notify(f"Groups/{group_id}", "updated", data)

    def add_group_owner(self, group_id: str, user_id: str) -> None:
        """Make `user_id` an owner of the group (owners of role-assignable groups count as
        privileged accounts)."""
        self._subscriptions.add_owner(group_id, user_id)

    def group_members(self, group_id: str) -> list[str]:
        return list(self._subscriptions.group(group_id)["members"])

    @property
    def subscriptions(self) -> list[JsonObject]:
        """Copies of the live (unexpired, undeleted) subscriptions."""
        return self._subscriptions.all()

    def set_subscription_expiry(self, subscription_id: str, expires_at: datetime) -> None:
        """Move a subscription's expiry, within Graph's limits, as if it were created earlier."""
        self._subscriptions.update(subscription_id, {"expirationDateTime": expires_at.isoformat()})

    def delete_subscription(self, subscription_id: str) -> None:
        """Delete a subscription out of band, without a lifecycle notification."""
        self._subscriptions.delete(subscription_id)

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        """Post a lifecycle notification (`reauthorizationRequired`, `subscriptionRemoved`,
        `missed`) to the subscription's lifecycle URL."""
        self._subscriptions.lifecycle(subscription_id, event)

    def post_notifications(self, url: str, body: JsonObject) -> None:
        """Post any body to a webhook, as a forger would."""
        self._subscriptions.send(url, body)

    def wait_for_deliveries(self) -> list[Delivery]:
        """Wait until every queued notification was posted; every delivery so far."""
        return self._subscriptions.wait_for_deliveries()

    # Notices: a Teams Workflows webhook, sendMail, alert and Sentinel incident comments

    @property
    def workflow_url(self) -> str:
        """The URL of a Teams Workflows "post to a channel when a webhook request is received"
        flow (its `sig` authorizes the call)."""
        return f"{self.exchange_base_url}{self._notices.workflow_path()}"

    @property
    def arm_base_url(self) -> str:
        return self.exchange_base_url

    def set_mailbox_clock(self, now: Callable[[], datetime]) -> None:
        """Count the mailbox's messages per minute on `now` (a drill's movable clock)."""
        self._notices.seconds = lambda: now().timestamp()

    def cards(self) -> list[JsonObject]:
        """What the Workflows webhook was posted, in order."""
        return self._notices.cards()

    def allow_mail_sender(self, mailbox: str) -> None:
        """Scope an "Application Mail.Send" role assignment of the app to `mailbox`."""
        self._notices.allow_sender(mailbox)

    def mail(self) -> list[SentMail]:
        return self._notices.mail()

    def alert_comments(self, alert_id: str) -> list[JsonObject]:
        return self._notices.alert_comments(alert_id)

    def commented_alerts(self) -> dict[str, list[JsonObject]]:
        """Every alerts_v2 alert with comments, and its comments."""
        return self._notices.commented_alerts()

    def commented_incidents(self) -> dict[str, dict[str, JsonObject]]:
        """Every Sentinel incident (lower-cased ARM id) with comments, by comment id."""
        return self._notices.commented_incidents()

    def add_sentinel_incident(self, incident_arm_id: str) -> None:
        self._notices.add_incident(incident_arm_id)

    def grant_sentinel_responder(self, workspace_id: str) -> None:
        self._notices.grant_responder(workspace_id)

    def incident_comments(self, incident_arm_id: str) -> dict[str, JsonObject]:
        return self._notices.incident_comments(incident_arm_id)

    def add_alert(self, alert: Mapping[str, Any]) -> None:
        """Store a raw alerts_v2 object with `id` and `lastUpdateDateTime`; same id replaces."""
        self._state.add_alert(alert)

    def before_alerts_page(self, skip: int, hook: Callable[[], None]) -> None:
        """Run `hook` once, right before the alerts_v2 page at `$skip` = `skip` is next read
        (hooks for the same page run one per read, in order): an alert that changes between
        two page requests."""
        self._state.add_alert_page_hook(skip, hook)

    @property
    def alerts(self) -> list[JsonObject]:
        """Copies of the stored alerts, ascending by lastUpdateDateTime."""
        return self._state.alerts()

    def add_fault(self, fault: Fault) -> None:
        """Inject `fault`. On Exchange its `retry_after` is not sent: no Retry-After was ever
        seen on the live admin endpoint."""
        self._state.add_fault(fault)

    def clear_faults(self) -> None:
        self._state.clear_faults()

    def seed_faults(self, seed: int) -> None:
        """Seed the draws of faults with a `rate` below 1."""
        self._state.seed_faults(seed)

    @property
    def faults_applied(self) -> dict[str, int]:
        """How many requests each kind of fault hit so far (`429`, `503`, `delay`, ...)."""
        return self._state.faults_applied()

    @property
    def writes(self) -> list[TenantWrite]:
        """Every write the tenant carried out, oldest first: account enables and disables (also
        those that found the account already so: `changed` False), session revocations and
        transport rule writes. Requests refused or failed by a fault before they ran are not
        writes; a lost response's request is one."""
        return sorted([*self._state.writes(), *self._rules.writes()], key=lambda write: write.at)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far, the path decoded and without its query.

        Graph paths start after `/v1.0`; Exchange and signing key paths are whole,
        `/adminapi/beta/...` and `/{tenant}/discovery/v2.0/keys`.
        """
        return self._state.requests()

    def reset_requests(self) -> None:
        self._state.reset_requests()

    def add_transport_rule(self, params: Mapping[str, Any]) -> JsonObject:
        """Create a rule as "someone else" would, with New-TransportRule's parameters and checks.

        Returns the rule as Get-TransportRule shows it; ValueError carries the refusal's reason.
        """
        try:
            return self._rules.new(params)
        except CmdletError as error:
            raise ValueError(error.reason) from None

    def edit_transport_rule(self, identity: str, **params: Any) -> JsonObject:
        """Change a rule out of band as Set-TransportRule would; KeyError if there is no such rule.

        Returns the changed rule; ValueError carries the reason a change is refused.
        """
        try:
            return self._rules.set(identity, params)
        except CmdletError as error:
            if error.exception_type == NOT_FOUND:
                raise KeyError(identity) from None
            raise ValueError(error.reason) from None

    def remove_transport_rule(self, identity: str) -> None:
        """Remove a rule out of band as Remove-TransportRule would; KeyError if there is none."""
        try:
            self._rules.remove(identity)
        except CmdletError:
            raise KeyError(identity) from None

    @property
    def transport_rules(self) -> list[JsonObject]:
        """Copies of the transport rules in priority order, as Get-TransportRule shows them."""
        return self._rules.rules()

    @property
    def exchange_calls(self) -> list[tuple[str, JsonObject]]:
        """(cmdlet name, parameters) of every authenticated InvokeCommand with a well-formed body.

        Calls a fault then failed, or the endpoint refused, are included.
        """
        return self._rules.calls()

    @property
    def exchange_request_headers(self) -> list[dict[str, str | None]]:
        """The `Prefer` and `X-AnchorMailbox` headers (None if absent) of each call in
        `exchange_calls`, in the same order."""
        return self._rules.call_headers()

    def add_exchange_warning(self, cmdlet: str, text: str) -> None:
        """Put `text` in `@adminapi.warnings` of the next successful answer to `cmdlet`."""
        self._rules.add_warning(cmdlet, text)

    def answer_exchange_not_found_with(self, status: int) -> None:
        """Answer a missing transport rule with `status`: 400 (the default, as live tenants
        mostly do) or 500 (as they sometimes do); the envelope names the exception either way."""
        if status not in (400, 500):
            raise ValueError(f"a missing object is answered with 400 or 500, not {status}")
        self._rules.not_found_status = status

    def limit_exchange_pages(self, rows: int) -> None:
        """Answer at most `rows` rules at a time, whatever the client's `Prefer` header asks
        for, so a listing comes back truncated (with a next link that cannot be replayed)."""
        if rows < 1:
            raise ValueError(f"a page holds at least one row, got {rows}")
        self._rules.max_page_size = rows

    def point_exchange_next_links_at(self, base_url: str) -> None:
        """Make next links name `{base_url}/InvokeCommand?...` instead of this endpoint."""
        self._rules.next_link_base = base_url.rstrip("/")

    def before_cmdlet(
        self, cmdlet: str, hook: Callable[[SimulatedTenant], None], times: int = 1
    ) -> None:
        """Run `hook(tenant)` just before each of the next `times` calls of `cmdlet` executes.

        It runs once auth, faults and the checks of the cmdlet's parameters have passed, outside
        the simulator's locks so it can edit rules; an exception from it fails the call with 500.
        """
        self._rules.add_hook(cmdlet, lambda: hook(self), times)

    @property
    def named_locations(self) -> list[JsonObject]:
        """Copies of the IP named locations, in creation order."""
        return self._locations.all()

    @property
    def jwks_url(self) -> str:
        """Where the tenant publishes its token signing keys, as Entra's v2.0 JWKS."""
        return f"{self._running().exchange_base_url}/{self._tenant_id}/discovery/v2.0/keys"

    @property
    def issuer(self) -> str:
        """The `iss` of the tenant's tokens, shaped like Entra's v2.0 issuer."""
        return f"{self._running().exchange_base_url}/{self._tenant_id}/v2.0"

    @property
    def signing_kid(self) -> str:
        """The kid of the key that signs tokens now."""
        return self._token_issuer.kid

    def rotate_signing_key(self) -> str:
        """Sign with a new key; the old one leaves the JWKS at once. Returns the new kid."""
        return self._token_issuer.rotate()

    def issue_token(
        self,
        *,
        audience: str,
        roles: Iterable[str] = (),
        upn: str | None = DEFAULT_UPN,
        app_id: str | None = None,
        expires_in: int = 3600,
        not_before_offset: int = 0,
        issuer: str | None = None,
        kid: str | None = None,
        algorithm: str = "RS256",
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A v2.0 access token from this tenant: an engineer's when `upn` is given, else an
        app-only one (`idtyp: app`, `azp` = `app_id`).

        `issuer` and `kid` override the real ones; `algorithm` "none" or "HS256" (keyed with the
        public key's PEM) makes the forgeries a validator must refuse. `extra_claims` are merged
        last, a None value removing the claim.
        """
        return self._token_issuer.issue(
            issuer=self.issuer if issuer is None else issuer,
            audience=audience,
            roles=roles,
            upn=upn,
            app_id=app_id,
            expires_in=expires_in,
            not_before_offset=not_before_offset,
            kid=kid,
            algorithm=algorithm,
            extra_claims=extra_claims,
        )


def every_grant() -> frozenset[str]:
    """What a deployment with every feature grants: the simulator's default."""
    return manifest().grants(FEATURES, GRAPH_AUDIENCE) | manifest().grants(
        FEATURES, EXCHANGE_AUDIENCE
    )
