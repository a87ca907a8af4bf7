"""Conditional Access IP named locations as the simulated Graph stores them, with Entra's limits.

Entra allows 195 named locations of at most 2000 public CIDR ranges with masks longer than /8
(concept-assignment-network); the simulator also demands /9 or longer of IPv6 ranges, refuses
host bits, and throttles writes. What "public" excludes is not spelled out: the simulator takes
the least convenient reading and refuses any range that reaches into a block the IANA
special-purpose registries mark as not globally reachable (private, loopback, link-local,
shared, benchmarking, documentation, multicast, reserved), and IPv6 outside 2000::/3.
"""

from __future__ import annotations

import copy
import ipaddress
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from shared.simulator.state import JsonObject, format_timestamp

MAX_NAMED_LOCATIONS = 195
MAX_IP_RANGES = 2000
MIN_PREFIX_LENGTH = 9
# Not public: the blocks IANA's special-purpose registries mark as not globally reachable,
# multicast, and the reserved space (iana-ipv4-special-registry, iana-ipv6-special-registry).
NOT_PUBLIC = tuple(
    ipaddress.ip_network(block)
    for block in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")

IP_NAMED_LOCATION = "#microsoft.graph.ipNamedLocation"
IPV4_CIDR_RANGE = "#microsoft.graph.iPv4CidrRange"
IPV6_CIDR_RANGE = "#microsoft.graph.iPv6CidrRange"
_RANGE_VERSIONS = {IPV4_CIDR_RANGE: 4, IPV6_CIDR_RANGE: 6}
# Read-only properties a client may echo back from a GET; Graph ignores them on writes.
_READ_ONLY = ("id", "createdDateTime", "modifiedDateTime")


class NamedLocationError(Exception):
    """A refused named-location request; the server answers it in Graph's error envelope."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class NamedLocationStore:
    """IP named locations in creation order, and the write throttle in front of them."""

    def __init__(
        self,
        writes_per_second: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if writes_per_second is not None and not writes_per_second > 0:
            raise ValueError(f"writes_per_second must be positive or None, got {writes_per_second}")
        self._interval = None if writes_per_second is None else 1 / writes_per_second
        self._clock = clock
        self._last_write: float | None = None
        self._lock = threading.Lock()
        self._locations: list[JsonObject] = []

    def admit_write(self) -> None:
        """Count a write against the throttle, or refuse it with 429 if it comes too soon.

        Only admitted writes move the window, so a client that keeps retrying early stays
        throttled no longer than one that waits.
        """
        if self._interval is None:
            return
        with self._lock:
            now = self._clock()
            if self._last_write is not None and now - self._last_write < self._interval:
                wait = self._interval - (now - self._last_write)
                raise NamedLocationError(
                    429,
                    "TooManyRequests",
                    "Too many requests to Conditional Access objects; retry later.",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            self._last_write = now

    def all(self) -> list[JsonObject]:
        with self._lock:
            return copy.deepcopy(self._locations)

    def page(self, skip: int, limit: int) -> tuple[list[JsonObject], int | None]:
        """Up to `limit` locations from position `skip`, and where the next page starts."""
        with self._lock:
            end = skip + limit
            page = copy.deepcopy(self._locations[skip:end])
            return page, end if end < len(self._locations) else None

    def get(self, location_id: str) -> JsonObject:
        with self._lock:
            return copy.deepcopy(self._find(location_id))

    def create(self, body: Mapping[str, Any]) -> JsonObject:
        changes = _validated(body, creating=True)
        now = format_timestamp(datetime.now(UTC))
        location: JsonObject = {
            "@odata.type": IP_NAMED_LOCATION,
            "id": str(uuid.uuid4()),
            "displayName": changes["displayName"],
            "createdDateTime": now,
            "modifiedDateTime": now,
            "isTrusted": changes.get("isTrusted", False),
            "ipRanges": changes["ipRanges"],
        }
        with self._lock:
            if len(self._locations) >= MAX_NAMED_LOCATIONS:
                raise NamedLocationError(
                    400,
                    "BadRequest",
                    f"The tenant already has the maximum of {MAX_NAMED_LOCATIONS} named locations.",
                )
            self._locations.append(location)
            return copy.deepcopy(location)

    def update(self, location_id: str, body: Mapping[str, Any]) -> None:
        changes = _validated(body, creating=False)
        with self._lock:
            location = self._find(location_id)
            location.update(changes)
            location["modifiedDateTime"] = format_timestamp(datetime.now(UTC))

    def delete(self, location_id: str) -> None:
        with self._lock:
            self._locations.remove(self._find(location_id))

    def _find(self, location_id: str) -> JsonObject:
        for location in self._locations:
            if location["id"].lower() == location_id.lower():
                return location
        raise NamedLocationError(
            404, "ResourceNotFound", f"Named location '{location_id}' does not exist."
        )


def _validated(body: Mapping[str, Any], *, creating: bool) -> JsonObject:
    """The writable properties of a create or update body; NamedLocationError 400 otherwise."""
    if body.get("@odata.type") != IP_NAMED_LOCATION:
        raise _bad_request(
            f'The body must carry "@odata.type": "{IP_NAMED_LOCATION}"; the simulator only '
            "models IP named locations."
        )
    for name in body:
        if name not in ("displayName", "isTrusted", "ipRanges", *_READ_ONLY) and not (
            name.startswith("@odata.")
        ):
            raise _bad_request(f"Property '{name}' is not supported on an ipNamedLocation.")
    changes: JsonObject = {}
    if creating or "displayName" in body:
        display_name = body.get("displayName")
        if not isinstance(display_name, str) or not display_name.strip():
            raise _bad_request("Property 'displayName' must be a non-empty string.")
        changes["displayName"] = display_name
    if "isTrusted" in body:
        if not isinstance(body["isTrusted"], bool):
            raise _bad_request("Property 'isTrusted' must be a bool.")
        changes["isTrusted"] = body["isTrusted"]
    if creating or "ipRanges" in body:
        changes["ipRanges"] = _ip_ranges(body.get("ipRanges"))
    return changes


def _ip_ranges(value: Any) -> list[JsonObject]:
    if not isinstance(value, list) or not value:
        raise _bad_request("Property 'ipRanges' must be a non-empty list of ipRange objects.")
    if len(value) > MAX_IP_RANGES:
        raise _bad_request(
            f"A named location can hold at most {MAX_IP_RANGES} IP ranges; got {len(value)}."
        )
    return [_ip_range(item) for item in value]


def _ip_range(item: Any) -> JsonObject:
    if not isinstance(item, dict):
        raise _bad_request("Each entry of 'ipRanges' must be an ipRange object.")
    range_type, cidr = item.get("@odata.type"), item.get("cidrAddress")
    version = _RANGE_VERSIONS.get(range_type) if isinstance(range_type, str) else None
    if version is None:
        raise _bad_request(
            f'Each ipRange needs "@odata.type" {IPV4_CIDR_RANGE} or {IPV6_CIDR_RANGE}; '
            f"got {range_type!r}."
        )
    if not isinstance(cidr, str) or "/" not in cidr:
        raise _bad_request(f"cidrAddress {cidr!r} is not in CIDR notation (address/prefix).")
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise _bad_request(f"cidrAddress '{cidr}' is not a valid CIDR range.") from None
    if network.version != version:
        raise _bad_request(f"cidrAddress '{cidr}' is not an IPv{version} range ({range_type}).")
    if network.prefixlen < MIN_PREFIX_LENGTH:
        raise _bad_request(
            f"cidrAddress '{cidr}' is too large: the prefix must be /{MIN_PREFIX_LENGTH} or longer."
        )
    if str(network.network_address) != str(ipaddress.ip_address(cidr.partition("/")[0])):
        raise _bad_request(f"cidrAddress '{cidr}' has host bits set; use '{network}'.")
    if not _public(network):
        raise _bad_request(f"cidrAddress '{cidr}' is not a public IP range.")
    return {"@odata.type": range_type, "cidrAddress": cidr}


def _public(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if network.version == 6 and not network.subnet_of(GLOBAL_UNICAST_V6):  # type: ignore[arg-type]
        return False
    return not any(
        network.overlaps(block) for block in NOT_PUBLIC if block.version == network.version
    )


def _bad_request(message: str) -> NamedLocationError:
    return NamedLocationError(400, "BadRequest", message)
