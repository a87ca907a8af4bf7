"""The simulated tenant's state: users, security alerts, injected faults and the request log.

Every method takes the one lock, so the HTTP handler threads and the test thread can share it.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

JsonObject = dict[str, Any]

# Alerts are ordered by (lastUpdateDateTime, id), newest first: the id breaks ties between
# alerts updated in the same instant.
AlertKey = tuple[datetime, str]


@dataclass
class SimUser:
    """A directory user as the simulator stores it."""

    id: str
    user_principal_name: str
    display_name: str
    account_enabled: bool = True
    sign_in_sessions_revoked_at: datetime | None = None
    revocations: int = 0
    # Graph's createdDateTime; null for accounts created before 2018 (user resource type).
    created_at: datetime | None = None


@dataclass(frozen=True)
class Fault:
    """An injected failure or slowdown for requests matching `method`, `path_pattern` and `cmdlet`.

    `path_pattern` is a regex searched in the decoded path: after `/v1.0` for Graph, the whole
    path (such as `/adminapi/beta/{tenant}/InvokeCommand`) for Exchange. `cmdlet`, when set, also
    requires an Exchange InvokeCommand naming that cmdlet (case-insensitive), so such a fault never
    hits Graph. `status` 0 means "answer normally after `delay_s`". `times` is how many matching
    requests it affects; None keeps it active until the faults are cleared. `rate` below 1 makes
    it hit only that share of the matching requests, at random (`SimulatedTenant.seed_faults`);
    a request it spares goes on to the next fault. `drop_response` (with `status` 0) carries the
    request out and then closes the connection without an answer: a lost response.
    """

    method: str | None = None
    path_pattern: str = ".*"
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    times: int | None = 1
    cmdlet: str | None = None
    rate: float = 1.0
    drop_response: bool = False

    def __post_init__(self) -> None:
        re.compile(self.path_pattern)
        if not 0 < self.rate <= 1:
            raise ValueError(f"Fault rate must be in (0, 1], got {self.rate}")
        if self.drop_response and self.status != 0:
            raise ValueError("Fault drop_response needs status 0 (the request is carried out)")
        if self.status != 0 and not 400 <= self.status <= 599:
            raise ValueError(f"Fault status must be 0 or an error status, got {self.status}")
        if self.delay_s < 0:
            raise ValueError(f"Fault delay_s must not be negative, got {self.delay_s}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault times must be at least 1 or None, got {self.times}")

    def matches(self, method: str, path: str, cmdlet: str | None = None) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.cmdlet is not None and (cmdlet is None or cmdlet.lower() != self.cmdlet.lower()):
            return False
        return re.search(self.path_pattern, path) is not None

    @property
    def label(self) -> str:
        """How the fault shows in `SimulatedTenant.faults_applied`."""
        if self.drop_response:
            return "lost_response"
        if self.status == 0:
            return "delay"
        return str(self.status)


@dataclass(frozen=True)
class TenantWrite:
    """One write the tenant carried out: `kind` (`disable`, `enable`, `revoke`, or the
    transport rule cmdlet), the object written and whether it changed anything."""

    at: datetime
    kind: str
    target: str
    changed: bool


@dataclass
class _ActiveFault:
    fault: Fault
    remaining: int | None


def parse_timestamp(text: str) -> datetime:
    """Parse a Graph DateTimeOffset such as `2024-05-01T10:00:00Z` or one with fractional seconds.

    A value without an offset is taken as UTC, as Graph does. Raises ValueError if unparseable.
    """
    if "T" not in text:
        raise ValueError(f"not a date and time: {text!r}")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_timestamp(moment: datetime) -> str:
    """Write a UTC DateTimeOffset the way Graph does, with seven fractional digits and `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


class TenantState:
    """Users, alerts, faults and the request log of one simulated tenant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: list[SimUser] = []
        self._alerts: dict[str, JsonObject] = {}
        self._faults: list[_ActiveFault] = []
        self._requests: list[tuple[str, str]] = []
        self._alert_page_hooks: dict[int, list[Callable[[], None]]] = {}
        self._random = random.Random(0)
        self._faults_applied: dict[str, int] = {}
        self._writes: list[TenantWrite] = []

    def add_user(self, user: SimUser) -> None:
        stored = dataclasses.replace(user)
        with self._lock:
            for existing in self._users:
                if existing.id.lower() == user.id.lower():
                    raise ValueError(f"a user with id {user.id} already exists")
                if existing.user_principal_name.lower() == user.user_principal_name.lower():
                    raise ValueError(f"a user with UPN {user.user_principal_name} already exists")
            self._users.append(stored)

    def user(self, id_or_upn: str) -> SimUser:
        """A snapshot of the user; later changes made through the API do not show in it."""
        with self._lock:
            return dataclasses.replace(self._find_user(id_or_upn))

    def update_user(
        self,
        id_or_upn: str,
        *,
        account_enabled: bool | None = None,
        display_name: str | None = None,
    ) -> SimUser:
        with self._lock:
            user = self._find_user(id_or_upn)
            if account_enabled is not None:
                kind = "enable" if account_enabled else "disable"
                changed = user.account_enabled != account_enabled
                self._writes.append(TenantWrite(datetime.now(UTC), kind, user.id, changed))
                user.account_enabled = account_enabled
            if display_name is not None:
                user.display_name = display_name
            return dataclasses.replace(user)

    def revoke_sessions(self, id_or_upn: str, at: datetime) -> SimUser:
        with self._lock:
            user = self._find_user(id_or_upn)
            user.sign_in_sessions_revoked_at = at
            user.revocations += 1
            self._writes.append(TenantWrite(at, "revoke", user.id, True))
            return dataclasses.replace(user)

    def _find_user(self, id_or_upn: str) -> SimUser:
        wanted = id_or_upn.lower()
        for user in self._users:
            if wanted in (user.id.lower(), user.user_principal_name.lower()):
                return user
        raise KeyError(id_or_upn)

    def add_alert(self, alert: Mapping[str, Any]) -> None:
        """Store an alerts_v2 object; one with the id of a stored alert replaces it."""
        for name in ("id", "lastUpdateDateTime"):
            if not alert.get(name):
                raise ValueError(f"an alert needs '{name}'")
            if not isinstance(alert[name], str):
                raise TypeError(f"an alert's '{name}' must be a string")
        parse_timestamp(alert["lastUpdateDateTime"])
        stored = copy.deepcopy(dict(alert))
        with self._lock:
            self._alerts[stored["id"]] = stored

    def alerts(self) -> list[JsonObject]:
        with self._lock:
            ordered = sorted(self._alerts.values(), key=_alert_key)
            return copy.deepcopy(ordered)

    def alert(self, alert_id: str) -> JsonObject | None:
        with self._lock:
            found = self._alerts.get(alert_id)
            return copy.deepcopy(found) if found is not None else None

    def alerts_page(
        self,
        *,
        updated_since: datetime | None,
        inclusive: bool,
        skip: int,
        limit: int,
    ) -> tuple[list[JsonObject], int]:
        """Up to `limit` alerts from position `skip`, newest first (List alerts_v2: "the most
        recent alerts are displayed at the top of the list"), and how many match in all.

        Positions are counted afresh on every request, as with Graph's $skip: an alert updated
        between two requests moves to the top and shifts the others.
        """
        with self._lock:
            candidates = sorted(
                ((_alert_key(alert), alert) for alert in self._alerts.values()),
                key=lambda pair: pair[0],
                reverse=True,
            )
            selected = [
                alert for key, alert in candidates if _within(key[0], updated_since, inclusive)
            ]
            page = copy.deepcopy(selected[skip : skip + limit])
        return page, len(selected)

    def add_alert_page_hook(self, skip: int, hook: Callable[[], None]) -> None:
        with self._lock:
            self._alert_page_hooks.setdefault(skip, []).append(hook)

    def take_alert_page_hooks(self, skip: int) -> list[Callable[[], None]]:
        """The first hook waiting for the page at `skip` (each hook runs before one read)."""
        with self._lock:
            waiting = self._alert_page_hooks.get(skip, [])
            return [waiting.pop(0)] if waiting else []

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_ActiveFault(fault, fault.times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def seed_faults(self, seed: int) -> None:
        with self._lock:
            self._random.seed(seed)

    def take_fault(self, method: str, path: str, cmdlet: str | None = None) -> Fault | None:
        """The first active fault matching the request (and drawn, for a rate below 1),
        counting this request against it."""
        with self._lock:
            for active in self._faults:
                if not active.fault.matches(method, path, cmdlet):
                    continue
                if active.fault.rate < 1 and self._random.random() >= active.fault.rate:
                    continue
                if active.remaining is not None:
                    active.remaining -= 1
                    if active.remaining == 0:
                        self._faults.remove(active)
                label = active.fault.label
                self._faults_applied[label] = self._faults_applied.get(label, 0) + 1
                return active.fault
            return None

    def faults_applied(self) -> dict[str, int]:
        with self._lock:
            return dict(self._faults_applied)

    def writes(self) -> list[TenantWrite]:
        with self._lock:
            return list(self._writes)

    def record_request(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))

    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()


def _alert_key(alert: Mapping[str, Any]) -> AlertKey:
    return parse_timestamp(alert["lastUpdateDateTime"]), alert["id"]


def _within(updated: datetime, since: datetime | None, inclusive: bool) -> bool:
    if since is None:
        return True
    return updated >= since if inclusive else updated > since
