"""Microsoft Graph through msgraph-sdk: the `Directory`, `AlertFeed`, `NamedLocations`,
`DirectoryRoles` and `ConditionalAccess` ports.

The client is built on a GraphRequestAdapter whose base URL comes from settings, so the same
code talks to graph.microsoft.com in Azure and to the simulated tenant locally. Every method
names the least-privilege application permission it needs. Errors are mapped to the typed
`TransientError` / `PermanentError` so callers decide retries by type.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware.options import (
    HeadersInspectionHandlerOption,
    RetryHandlerOption,
    UrlReplaceHandlerOption,
)
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.groups.item.members.members_request_builder import MembersRequestBuilder
from msgraph.generated.models.conditional_access_policy import ConditionalAccessPolicy
from msgraph.generated.models.i_pv4_cidr_range import IPv4CidrRange
from msgraph.generated.models.i_pv6_cidr_range import IPv6CidrRange
from msgraph.generated.models.ip_named_location import IpNamedLocation
from msgraph.generated.models.ip_range import IpRange
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.role_management.directory.role_assignments.role_assignments_request_builder import (  # noqa: E501
    RoleAssignmentsRequestBuilder,
)
from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import (
    Alerts_v2RequestBuilder,
)
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph_core import GraphClientFactory

from shared.adapters.graph_urls import settle
from shared.adapters.http_transport import http_client
from shared.config import Settings
from shared.errors import PermanentError, TransientError
from shared.models import is_guid
from shared.ports import CaPolicy, IpLocation, RoleAssignment, UserState

logger = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ALERTS_PAGE_SIZE = 200
# Readings of the alert list before a listing that keeps shifting is given up for this poll.
ALERT_LISTING_ATTEMPTS = 3
USER_FIELDS = [
    "id",
    "userPrincipalName",
    "displayName",
    "accountEnabled",
    "signInSessionsValidFromDateTime",
]
_ERROR_MAP: dict[str, Any] = {"XXX": ODataError}


def build_graph_client(
    settings: Settings, credential: AsyncTokenCredential, http: httpx.AsyncClient | None = None
) -> GraphServiceClient:
    """A Graph client sending through `http` (its owner closes it), or through a client of its
    own (`request_adapter._http_client`)."""
    base_url = str(settings.graph_base_url).rstrip("/")
    host = httpx.URL(base_url).host
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[GRAPH_SCOPE], allowed_hosts=[host]
    )
    retry = RetryHandlerOption(
        delay=settings.graph_retry_delay_s, max_retries=settings.graph_max_retries
    )
    # The URL replacement handler turns `/users/TokenToReplace` into `/me`, a path for signed-in
    # users this app-only client never sends; switched off, it no longer parses every URL.
    replace_none = UrlReplaceHandlerOption(enabled=False)
    client = GraphClientFactory.create_with_default_middleware(
        client=http or http_client(settings.graph_timeout_s),
        options={RetryHandlerOption.get_key(): retry, replace_none.get_key(): replace_none},
    )
    adapter = GraphRequestAdapter(auth, client=client)
    adapter.base_url = base_url
    return GraphServiceClient(request_adapter=adapter)


def _raise_typed(exc: Exception, what: str) -> NoReturn:
    """Map an SDK or transport exception to a TransientError or a PermanentError."""
    if isinstance(exc, httpx.TimeoutException | httpx.TransportError):
        raise TransientError(f"{what}: {type(exc).__name__}") from exc
    if not isinstance(exc, APIError):
        raise exc
    status = exc.response_status_code or 0
    headers = {k.lower(): v for k, v in (exc.response_headers or {}).items()}
    request_id = _first(headers.get("request-id")) or _error_request_id(exc)
    message = f"{what}: Graph answered {status}: {_odata_message(exc)}"
    if status == 429 or status >= 500:
        retry_after = _parse_retry_after(_first(headers.get("retry-after")))
        raise TransientError(
            message, status=status, request_id=request_id, retry_after=retry_after
        ) from exc
    raise PermanentError(message, status=status, request_id=request_id) from exc


def _first(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | set | tuple):
        return next(iter(value), None)
    return str(value)


_REQUEST_ID_KEYS = ("request-id", "requestId")


def _error_request_id(exc: APIError) -> str | None:
    """The request id Graph wrote into the error body, for when no header carried it: the
    documented `innerError.request-id`, and the `requestId` / `innererror` spellings other
    Graph workloads answer with (msgraph-sdk keeps what its model does not know in
    additional_data)."""
    error = getattr(exc, "error", None)
    inner = getattr(error, "inner_error", None)
    known = getattr(inner, "request_id", None)
    if isinstance(known, str) and known:
        return known
    holders: list[Any] = [getattr(inner, "additional_data", None)]
    extra = getattr(error, "additional_data", None)
    if isinstance(extra, dict):
        holders += [extra.get("innererror"), extra.get("innerError")]
    for holder in holders:
        if isinstance(holder, dict):
            for key in _REQUEST_ID_KEYS:
                value = holder.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


def _odata_message(exc: APIError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or exc.message or type(exc).__name__
    return f"{code}: {message}" if code else str(message)


def _parse_retry_after(value: str | None) -> float | None:
    # Graph sometimes sends fractional seconds ("2.128").
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _request_id(option: HeadersInspectionHandlerOption) -> str | None:
    values = option.response_headers.get("request-id")
    return next(iter(values), None) if values else None


class GraphDirectory:
    """`Directory`, `AlertFeed`, `NamedLocations`, `DirectoryRoles` and `ConditionalAccess`
    over msgraph-sdk."""

    def __init__(self, client: GraphServiceClient) -> None:
        self._client = client

    async def get_user(self, user: str) -> UserState:
        """Read a user's account state. Permission: User.Read.All. Read as raw JSON: the SDK's
        User model imports every directory model class on first use (seconds of CPU on the
        first containment of a fresh instance; docs/performance.md)."""
        query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=USER_FIELDS)
        request = self._client.users.by_user_id(user).to_get_request_information(
            RequestConfiguration(query_parameters=query)
        )
        found = await send_raw(self._client, request, f"read user {user}")
        user_id = found.get("id")
        if not isinstance(user_id, str) or not user_id:
            raise PermanentError(f"read user {user}: Graph returned no user", status=404)
        return UserState(
            id=user_id,
            upn=_text(found.get("userPrincipalName")),
            account_enabled=found.get("accountEnabled") is True,
            sessions_valid_from=_moment(found.get("signInSessionsValidFromDateTime"), user),
            display_name=_text(found.get("displayName")),
        )

    async def set_account_enabled(self, user_id: str, enabled: bool) -> str | None:
        """Enable or disable sign-in. Permission: User.EnableDisableAccount.All; a target that
        holds an admin role needs the app to hold a higher admin role (see README)."""
        builder = self._client.users.by_user_id(user_id)
        request = RequestInformation(Method.PATCH, builder.url_template, builder.path_parameters)
        request.set_stream_content(
            json.dumps({"accountEnabled": enabled}).encode(), "application/json"
        )
        return await send_empty(self._client, request, f"set accountEnabled={enabled} on {user_id}")

    async def revoke_sign_in_sessions(self, user_id: str) -> str | None:
        """Invalidate refresh tokens and session cookies. Permission: User.RevokeSessions.All."""
        builder = self._client.users.by_user_id(user_id).revoke_sign_in_sessions
        inspect = HeadersInspectionHandlerOption(inspect_request_headers=False)
        request = builder.to_post_request_information()
        request.add_request_options([inspect])
        await send_raw(self._client, request, f"revoke sessions of {user_id}")
        return _request_id(inspect)

    async def alerts_updated_since(self, since: datetime) -> AsyncIterator[list[dict[str, Any]]]:
        """Pages of raw alerts_v2 objects updated at or after `since`, in the order Graph lists
        them (newest first). Permission: SecurityAlert.Read.All. Raw JSON keeps fields the SDK
        models do not know.

        Graph pages alerts_v2 by `$skip` over a list it recomputes on every request, so an alert
        updated between two requests moves to the top and pushes the one that followed it back
        onto a page already read. Such a listing yields fewer distinct alerts than the count
        Graph gave for its first page; it is then read again from the top (pages already handed
        out are handed out again; callers skip what they handled), and a listing that never
        settles raises TransientError, so no watermark moves past an alert never seen."""
        stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(
            filter=f"lastUpdateDateTime ge {stamp}",
            top=ALERTS_PAGE_SIZE,
            count=True,
        )
        for attempt in range(1, ALERT_LISTING_ATTEMPTS + 1):
            expected: int | None = None
            seen: set[str] = set()
            request: RequestInformation | None = (
                self._client.security.alerts_v2.to_get_request_information(
                    RequestConfiguration(query_parameters=query)
                )
            )
            while request is not None:
                request.headers.try_add("Prefer", "include-unknown-enum-members")
                page = await send_raw(self._client, request, "list security alerts")
                if expected is None and isinstance(page.get("@odata.count"), int):
                    expected = page["@odata.count"]
                items = [item for item in page.get("value", []) if isinstance(item, dict)]
                seen.update(str(item.get("id")) for item in items)
                yield items
                next_link = page.get("@odata.nextLink")
                request = _follow(next_link) if isinstance(next_link, str) else None
            if expected is None or len(seen) >= expected:
                return
            logger.warning(
                "alerts changed while they were listed (%s of %s seen, listing %s of %s)",
                len(seen),
                expected,
                attempt,
                ALERT_LISTING_ATTEMPTS,
            )
        raise TransientError(
            f"list security alerts: the listing kept changing while it was read "
            f"({ALERT_LISTING_ATTEMPTS} attempts)"
        )

    async def roles_of(self, principal_id: str) -> list[RoleAssignment]:
        """A user's active directory role assignments: its own, and those of the
        role-assignable groups it belongs to (listed under the group's id).
        Permission: RoleManagement.Read.Directory (with GroupMember.Read.All)."""
        found, groups = await asyncio.gather(
            self._role_assignments(f"principalId eq '{_guid(principal_id)}'"),
            self._role_groups(principal_id),
        )
        for group_id in groups:
            found += await self._role_assignments(f"principalId eq '{_guid(group_id)}'")
        return found

    async def holders_of(self, role_id: str) -> list[RoleAssignment]:
        """Every active assignment of one role, a role-assignable group's expanded to one per
        member (RoleManagement.Read.Directory, GroupMember.Read.All)."""
        found: list[RoleAssignment] = []
        for assignment in await self._role_assignments(f"roleDefinitionId eq '{_guid(role_id)}'"):
            try:
                members = await member_ids(self._client, assignment.principal_id)
            except PermanentError as exc:
                if exc.status != 404:
                    raise
                found.append(assignment)  # not a group: a user or a service principal
                continue
            found += [replace(assignment, principal_id=m.lower()) for m in members]
        return found

    async def _role_groups(self, user_id: str) -> list[str]:
        """The role-assignable groups a user belongs to (they cannot nest, so membership
        is direct)."""
        builder = self._client.users.by_user_id(user_id).transitive_member_of.graph_group
        what = f"list the groups of {user_id}"
        groups = await raw_pages(self._client, builder.to_get_request_information(), what)
        if any(g.get("id") and g.get("isAssignableToRole") is None for g in groups):
            # Without a group permission Graph lists the groups with their ids only: taking
            # that for "not role-assignable" would hide roles held through them.
            raise PermanentError(
                f"{what}: Graph returned the groups without their properties", status=403
            )
        return [g["id"] for g in groups if _text(g.get("id")) and g["isAssignableToRole"] is True]

    async def _role_assignments(self, expression: str) -> list[RoleAssignment]:
        builder = self._client.role_management.directory.role_assignments
        query = RoleAssignmentsRequestBuilder.RoleAssignmentsRequestBuilderGetQueryParameters(
            filter=expression
        )
        request = builder.to_get_request_information(RequestConfiguration(query_parameters=query))
        items = await raw_pages(self._client, request, f"list role assignments ({expression})")
        return [
            RoleAssignment(
                role_id=_text(item.get("roleDefinitionId")).lower(),
                principal_id=_text(item.get("principalId")).lower(),
                scope=_text(item.get("directoryScopeId")) or "/",
            )
            for item in items
        ]

    async def list_policies(self) -> list[CaPolicy]:
        """The tenant's Conditional Access policies. Permission: Policy.Read.All."""
        builder = self._client.identity.conditional_access.policies
        items = await _every_page(builder, builder.get(), "list Conditional Access policies")
        return [_ca_policy(item) for item in items]

    async def set_excluded_users(self, policy_id: str, excluded: list[str]) -> str | None:
        """Make `excluded` a policy's excluded users. The policy is read and its `users`
        condition set written back exactly as read but for `excludeUsers`, so no other user
        condition changes whether Graph merges or replaces a condition set it is sent; the
        other condition sets are left out (Graph keeps those a PATCH does not name). Raw JSON
        both ways: msgraph-sdk's models drop flag-enum values such as
        `excludeGuestsOrExternalUsers.guestOrExternalUserTypes` and turn enum values they do
        not know into null, which a write-back would store.
        Permission: Policy.ReadWrite.ConditionalAccess (with Policy.Read.All)."""
        item = self._client.identity.conditional_access.policies.by_conditional_access_policy_id(
            policy_id
        )
        current = await send_raw(
            self._client,
            item.to_get_request_information(),
            f"read Conditional Access policy {policy_id}",
        )
        conditions = current.get("conditions")
        users = conditions.get("users") if isinstance(conditions, dict) else None
        if not isinstance(users, dict):
            raise PermanentError(f"policy {policy_id} has no user conditions to exclude from")
        users = {**users, "excludeUsers": list(excluded)}
        request = RequestInformation(Method.PATCH, item.url_template, item.path_parameters)
        request.set_stream_content(
            json.dumps({"conditions": {"users": users}}).encode(), "application/json"
        )
        return await send_empty(
            self._client, request, f"update the excluded users of policy {policy_id}"
        )

    async def list_ip_locations(self) -> list[IpLocation]:
        """The tenant's IP named locations. Permission: Policy.Read.All."""
        builder = self._client.identity.conditional_access.named_locations
        items = await _every_page(builder, builder.get(), "list named locations")
        return [_ip_location(item) for item in items if isinstance(item, IpNamedLocation)]

    async def create_ip_location(self, name: str, ranges: list[str]) -> str:
        """Create an IP named location. Permission: Policy.ReadWrite.ConditionalAccess
        (with Policy.Read.All). Locations are never deleted: CA policies reference them."""
        body = IpNamedLocation(display_name=name, is_trusted=False, ip_ranges=_ip_ranges(ranges))
        try:
            created = await self._client.identity.conditional_access.named_locations.post(body)
        except Exception as exc:
            _raise_typed(exc, f"create named location {name}")
        if created is None or not created.id:
            raise PermanentError(f"create named location {name}: Graph returned no id")
        return str(created.id)

    async def set_ip_location_ranges(self, location_id: str, ranges: list[str]) -> None:
        """Replace a location's ranges. Permission: Policy.ReadWrite.ConditionalAccess."""
        body = IpNamedLocation(ip_ranges=_ip_ranges(ranges))
        builder = self._client.identity.conditional_access.named_locations
        try:
            await builder.by_named_location_id(location_id).patch(body)
        except Exception as exc:
            _raise_typed(exc, f"update named location {location_id}")


async def member_ids(client: GraphServiceClient, group_id: str) -> list[str]:
    """A group's direct members' object ids; PermanentError(404) when `group_id` is no group.
    Permission: GroupMember.Read.All."""
    builder = client.groups.by_group_id(group_id).members
    query = MembersRequestBuilder.MembersRequestBuilderGetQueryParameters(select=["id"])
    request = builder.to_get_request_information(RequestConfiguration(query_parameters=query))
    members = await raw_pages(client, request, f"list members of group {group_id}")
    return [m["id"] for m in members if _text(m.get("id"))]


async def send_raw(
    client: GraphServiceClient, request: RequestInformation, what: str
) -> dict[str, Any]:
    """Send `request` through the SDK's adapter (authentication, retries, error mapping as
    everywhere) and return the JSON object Graph answered, untouched by models."""
    # The adapter and its middleware read `request.url` several times, and each read expands
    # the URL template again; expanded once here, it is kept as a plain URL.
    settle(request, client.request_adapter.base_url)
    try:
        raw = await client.request_adapter.send_primitive_async(request, "bytes", _ERROR_MAP)
    except Exception as exc:
        _raise_typed(exc, what)
    try:
        page = json.loads(raw or b"{}")
    except ValueError as exc:
        raise TransientError(f"{what}: Graph returned invalid JSON") from exc
    if not isinstance(page, dict):
        raise TransientError(f"{what}: Graph returned a non-object body")
    return page


async def send_empty(
    client: GraphServiceClient, request: RequestInformation, what: str
) -> str | None:
    """Send `request`, a write Graph answers without content, through the SDK's adapter; the
    request id of Graph's answer."""
    inspect = HeadersInspectionHandlerOption(inspect_request_headers=False)
    request.add_request_options([inspect])
    request.headers.try_add("Accept", "application/json")
    settle(request, client.request_adapter.base_url)
    try:
        await client.request_adapter.send_no_response_content_async(request, _ERROR_MAP)
    except Exception as exc:
        _raise_typed(exc, what)
    return _request_id(inspect)


async def raw_pages(
    client: GraphServiceClient, request: RequestInformation, what: str
) -> list[dict[str, Any]]:
    """The JSON objects of a collection's first page and of every page its @odata.nextLink
    leads to."""
    items: list[dict[str, Any]] = []
    following: RequestInformation | None = request
    while following is not None:
        page = await send_raw(client, following, what)
        values = page.get("value", [])
        if not isinstance(values, list):
            raise TransientError(f"{what}: Graph returned a page without a value list")
        items += [item for item in values if isinstance(item, dict)]
        link = page.get("@odata.nextLink")
        following = _follow(link) if isinstance(link, str) else None
    return items


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _moment(value: Any, user: str) -> datetime | None:
    """A Graph DateTimeOffset (ISO 8601, `Z` or an offset), or None when Graph gave none."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise TransientError(f"read user {user}: Graph returned an invalid time {str(value)[:40]!r}")


async def _every_page(builder: Any, first: Awaitable[Any], what: str) -> list[Any]:
    """The items of a collection's first page and of every page its @odata.nextLink leads
    to, through the same request builder; SDK errors mapped as everywhere."""
    items: list[Any] = []
    try:
        page = await first
        while page is not None:
            items += page.value or []
            link = page.odata_next_link
            page = await builder.with_url(link).get() if link else None
    except Exception as exc:
        _raise_typed(exc, what)
    return items


def _guid(value: str) -> str:
    """An object id, checked before it goes into an OData filter."""
    if not is_guid(value):
        raise PermanentError(f"not an object id: {value[:60]!r}")
    return value.lower()


def _ca_policy(item: ConditionalAccessPolicy) -> CaPolicy:
    users = item.conditions.users if item.conditions else None
    state = item.state
    return CaPolicy(
        id=item.id or "",
        name=item.display_name or "",
        state=str(state.value if hasattr(state, "value") else state or ""),
        excluded_users=tuple(u.lower() for u in (users.exclude_users if users else None) or []),
        modified_at=item.modified_date_time.isoformat() if item.modified_date_time else "",
    )


def _ip_ranges(ranges: list[str]) -> list[IpRange]:
    return [
        IPv6CidrRange(cidr_address=r) if ":" in r else IPv4CidrRange(cidr_address=r) for r in ranges
    ]


def _ip_location(item: IpNamedLocation) -> IpLocation:
    ranges = [
        r.cidr_address for r in item.ip_ranges or [] if isinstance(r, IPv4CidrRange | IPv6CidrRange)
    ]
    return IpLocation(
        id=item.id or "",
        name=item.display_name or "",
        ranges=tuple(r for r in ranges if r),
    )


def _follow(next_link: str) -> RequestInformation:
    request = RequestInformation(Method.GET)
    request.url = next_link
    request.headers.try_add("Accept", "application/json")
    return request
