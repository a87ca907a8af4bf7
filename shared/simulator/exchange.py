"""Exchange Online transport rules behind the simulated admin API's `InvokeCommand` endpoint.

A rule's size is the UTF-8 length of `json.dumps(p, separators=(",", ":"), sort_keys=True)`, where
`p` maps the rule's stored Name, Comments, SenderIpRanges, Mode, RejectMessageEnhancedStatusCode,
RejectMessageReasonText, DeleteMessage and StopRuleProcessing (defaults filled in, nulls left out)
to their values, and a rule larger than `RULE_SIZE_LIMIT` bytes is refused.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
import threading
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from shared.simulator.state import JsonObject, TenantWrite, format_timestamp

RULE_SIZE_LIMIT = 8192
MAX_TRANSPORT_RULES = 300
MAX_NAME_LENGTH = 64
MAX_TEXT_LENGTH = 1024
PAGE_SIZE = 100

MODES = ("Enforce", "Audit", "AuditAndNotify")
DEFAULT_REJECT_STATUS_CODE = "5.7.1"
DEFAULT_REJECT_REASON_TEXT = "Delivery not authorized, message refused"

# What a rule stores and rule_size() counts, in the casing Get-TransportRule reports.
SIZED_PARAMETERS = (
    "Name",
    "Comments",
    "SenderIpRanges",
    "Mode",
    "RejectMessageEnhancedStatusCode",
    "RejectMessageReasonText",
    "DeleteMessage",
    "StopRuleProcessing",
)
_RULE_PARAMETERS = (*SIZED_PARAMETERS, "Priority", "Confirm")
_CMDLETS: dict[str, tuple[str, ...]] = {
    "Get-TransportRule": ("Identity",),
    "New-TransportRule": _RULE_PARAMETERS,
    "Set-TransportRule": ("Identity", *_RULE_PARAMETERS),
    "Remove-TransportRule": ("Identity", "Confirm"),
}
_DEFAULTS: JsonObject = {"Mode": "Enforce", "DeleteMessage": False, "StopRuleProcessing": False}

_STATUS_CODE = re.compile(r"^5\.7\.(1|9\d\d)$")
# The admin API reports every failed cmdlet as this service exception; the cmdlet's own
# exception type and text only appear in `details` and `internalexception`.
_SERVICE_EXCEPTION = "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"
_NOT_FOUND = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
_BINDING = "System.Management.Automation.ParameterBindingException"
_VALIDATION = "Microsoft.Exchange.Management.Tasks.ValidationException"
_NO_SUCH_CMDLET = "System.Management.Automation.CommandNotFoundException"
_DOMAIN_CONTROLLER = "SIMPR01A001DC001.PROD.OUTLOOK.COM"


class CmdletError(Exception):
    """A failed InvokeCommand, answered in the admin API's error envelope.

    The top-level message is always "Invalid Operation"; the reason is in `details[0].message`
    (prefixed `ExNNNNNN|<exception type>|` as Exchange does) and in
    `innererror.internalexception.message`.
    """

    def __init__(
        self,
        status: int,
        code: str,
        reason: str,
        exception_type: str = _SERVICE_EXCEPTION,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.exception_type = exception_type
        self.headers = dict(headers or {})

    @property
    def error_id(self) -> str:
        # Exchange's ids are opaque; the not-found one is the id real tenants return.
        if self.exception_type == _NOT_FOUND:
            return "Ex6F9304"
        return f"Ex{zlib.crc32(self.exception_type.encode()) & 0xFFFFFF:06X}"

    def body(self) -> JsonObject:
        return {
            "error": {
                "code": self.code,
                "message": "Invalid Operation",
                "details": [
                    {
                        "code": "Client",
                        "target": "",
                        "message": f"{self.error_id}|{self.exception_type}|{self.reason}",
                    }
                ],
                "innererror": {
                    "message": "Invalid Operation",
                    "type": _SERVICE_EXCEPTION,
                    "stacktrace": "",
                    "internalexception": {
                        "message": self.reason,
                        "type": self.exception_type,
                        "stacktrace": "",
                    },
                },
            }
        }


def rule_size(params: Mapping[str, Any]) -> int:
    """Bytes that a rule with these settings counts against `RULE_SIZE_LIMIT`.

    Only the stored parameters count and null values are left out, so a Get-TransportRule object
    gives exactly the size the simulator checked. Defaults the simulator fills in (Mode "Enforce",
    DeleteMessage and StopRuleProcessing false, and the other Reject* value when only one is set)
    count as well.
    """
    sized = {name: params[name] for name in SIZED_PARAMETERS if params.get(name) is not None}
    return len(json.dumps(sized, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def parse_invocation(body: bytes) -> tuple[str, JsonObject]:
    """The cmdlet name and parameters of an InvokeCommand body; CmdletError 400 if malformed."""
    try:
        envelope = json.loads(body)
    except ValueError:
        raise CmdletError(400, "BadRequest", "The request body is not valid JSON.") from None
    cmdlet_input = envelope.get("CmdletInput") if isinstance(envelope, dict) else None
    if not isinstance(cmdlet_input, dict):
        raise CmdletError(
            400, "BadRequest", "The request body must be an object with a 'CmdletInput' object."
        )
    name = cmdlet_input.get("CmdletName")
    if not isinstance(name, str) or not name:
        raise CmdletError(400, "BadRequest", "'CmdletInput.CmdletName' must be a cmdlet name.")
    parameters = cmdlet_input.get("Parameters", {})
    if not isinstance(parameters, dict):
        raise CmdletError(400, "BadRequest", "'CmdletInput.Parameters' must be an object.")
    return name, parameters


@dataclass
class _Rule:
    guid: str
    params: JsonObject
    when_changed: datetime


@dataclass
class _Hook:
    cmdlet: str
    run: Callable[[], None]
    remaining: int


class TransportRuleStore:
    """Transport rules in priority order, the InvokeCommand log and the before-cmdlet hooks.

    Every method takes the one lock; hooks are handed out to run outside it, since they usually
    edit rules themselves.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._calls: list[tuple[str, JsonObject]] = []
        self._hooks: list[_Hook] = []
        self._last_change = datetime.min.replace(tzinfo=UTC)
        self._writes: list[TenantWrite] = []

    def rules(self) -> list[JsonObject]:
        with self._lock:
            return [self._json(rule, priority) for priority, rule in enumerate(self._rules)]

    def page(self, identity: str | None, skip: int) -> tuple[list[JsonObject], int | None]:
        """Rules from priority `skip` on, at most PAGE_SIZE, and where the next page starts."""
        with self._lock:
            if identity is not None:
                index = self._index(identity)
                return [self._json(self._rules[index], index)], None
            end = skip + PAGE_SIZE
            page = [
                self._json(rule, priority)
                for priority, rule in enumerate(self._rules[skip:end], start=skip)
            ]
            return page, end if end < len(self._rules) else None

    def new(self, parameters: Mapping[str, Any]) -> JsonObject:
        changes = _settable(parameters, _RULE_PARAMETERS)
        changes.pop("Confirm", None)
        priority = changes.pop("Priority", None)
        if "Name" not in changes:
            raise _binding_error("Missing an argument for the mandatory parameter 'Name'.")
        with self._lock:
            if len(self._rules) >= MAX_TRANSPORT_RULES:
                raise _validation_error(
                    f"The organization already has the maximum of {MAX_TRANSPORT_RULES} "
                    "transport rules. Remove a rule before you create another one."
                )
            self._check_unique(changes["Name"], None)
            stored = _stored({**_DEFAULTS, **changes})
            if priority is None:
                priority = len(self._rules)
            elif priority > len(self._rules):
                raise _priority_error(priority, len(self._rules))
            rule = _Rule(str(uuid.uuid4()), stored, self._tick())
            self._rules.insert(priority, rule)
            self._writes.append(
                TenantWrite(rule.when_changed, "New-TransportRule", rule.guid, True)
            )
            return self._json(rule, priority)

    def set(self, identity: str, parameters: Mapping[str, Any]) -> JsonObject:
        changes = _settable(_without(parameters, "Identity"), _RULE_PARAMETERS)
        changes.pop("Confirm", None)
        priority = changes.pop("Priority", None)
        with self._lock:
            index = self._index(identity)
            rule = self._rules[index]
            if "Name" in changes:
                self._check_unique(changes["Name"], rule)
            stored = _stored({**rule.params, **changes})
            if priority is not None and priority >= len(self._rules):
                raise _priority_error(priority, len(self._rules) - 1)
            changed = _meaning(stored) != _meaning(rule.params) or priority not in (None, index)
            rule.params = stored
            rule.when_changed = self._tick()
            self._writes.append(
                TenantWrite(rule.when_changed, "Set-TransportRule", rule.guid, changed)
            )
            if priority is not None:
                self._rules.insert(priority, self._rules.pop(index))
                index = priority
            return self._json(rule, index)

    def remove(self, identity: str) -> None:
        with self._lock:
            rule = self._rules.pop(self._index(identity))
            self._writes.append(
                TenantWrite(datetime.now(UTC), "Remove-TransportRule", rule.guid, True)
            )

    def record_call(self, cmdlet: str, parameters: Mapping[str, Any]) -> None:
        stored = copy.deepcopy(dict(parameters))
        with self._lock:
            self._calls.append((cmdlet, stored))

    def calls(self) -> list[tuple[str, JsonObject]]:
        with self._lock:
            return copy.deepcopy(self._calls)

    def writes(self) -> list[TenantWrite]:
        """The rule writes carried out (refused ones are not), oldest first."""
        with self._lock:
            return list(self._writes)

    def add_hook(self, cmdlet: str, run: Callable[[], None], times: int) -> None:
        if times < 1:
            raise ValueError(f"a hook must run at least once, got times={times}")
        with self._lock:
            self._hooks.append(_Hook(cmdlet.lower(), run, times))

    def take_hooks(self, cmdlet: str) -> list[Callable[[], None]]:
        """The hooks due before this cmdlet, in the order added, counting this call against them."""
        due: list[Callable[[], None]] = []
        with self._lock:
            for hook in list(self._hooks):
                if hook.cmdlet == cmdlet.lower():
                    due.append(hook.run)
                    hook.remaining -= 1
                    if hook.remaining == 0:
                        self._hooks.remove(hook)
        return due

    def _index(self, identity: str) -> int:
        wanted = identity.lower()
        for index, rule in enumerate(self._rules):
            if wanted in (rule.guid.lower(), rule.params["Name"].lower()):
                return index
        raise CmdletError(
            404,
            "NotFound",
            f"The operation couldn't be performed because object '{identity}' couldn't be "
            f"found on '{_DOMAIN_CONTROLLER}'.",
            _NOT_FOUND,
        )

    def _check_unique(self, name: str, renamed: _Rule | None) -> None:
        for rule in self._rules:
            if rule is not renamed and rule.params["Name"].lower() == name.lower():
                raise _validation_error(
                    f"A transport rule named '{name}' already exists. Rule names must be unique."
                )

    def _tick(self) -> datetime:
        # WhenChanged must move on every change, even two within one clock tick, so a client
        # comparing it between its read and its write always sees an edit.
        now = datetime.now(UTC)
        if now <= self._last_change:
            now = self._last_change + timedelta(microseconds=1)
        self._last_change = now
        return now

    @staticmethod
    def _json(rule: _Rule, priority: int) -> JsonObject:
        params = copy.deepcopy(rule.params)
        return {
            "Name": params["Name"],
            "Identity": params["Name"],
            "Guid": rule.guid,
            "Priority": priority,
            "State": "Enabled",
            "Mode": params["Mode"],
            "Comments": params["Comments"],
            "SenderIpRanges": params["SenderIpRanges"],
            "RejectMessageEnhancedStatusCode": params["RejectMessageEnhancedStatusCode"],
            "RejectMessageReasonText": params["RejectMessageReasonText"],
            "DeleteMessage": params["DeleteMessage"],
            "StopRuleProcessing": params["StopRuleProcessing"],
            "WhenChanged": format_timestamp(rule.when_changed),
        }


class ExchangeApi:
    """The InvokeCommand semantics of the simulator, free of HTTP plumbing."""

    def __init__(
        self, store: TransportRuleStore, base_url: str, tenant_names: tuple[str, ...]
    ) -> None:
        self._store = store
        self._base_url = base_url
        self._tenant_names = {name.lower() for name in tenant_names}

    def invoke(self, tenant: str, query: Mapping[str, str], body: bytes) -> JsonObject:
        if tenant.lower() not in self._tenant_names:
            raise CmdletError(404, "NotFound", f"Tenant '{tenant}' was not found.")
        requested, parameters = parse_invocation(body)
        cmdlet = _canonical(requested, _CMDLETS)
        if cmdlet is None:
            raise CmdletError(
                400,
                "BadRequest",
                f"The term '{requested}' is not recognized as a name of a cmdlet, function, "
                "script file, or executable program.",
                _NO_SUCH_CMDLET,
            )
        skip = 0
        if "$skiptoken" in query:
            if cmdlet != "Get-TransportRule":
                raise CmdletError(400, "BadRequest", "$skiptoken only pages Get-TransportRule.")
            skip = _decode_skiptoken(query["$skiptoken"])
        arguments = _settable(parameters, _CMDLETS[cmdlet])
        for run in self._store.take_hooks(cmdlet):
            run()
        value: list[JsonObject] = []
        next_skip: int | None = None
        match cmdlet:
            case "Get-TransportRule":
                value, next_skip = self._store.page(arguments.get("Identity"), skip)
            case "New-TransportRule":
                value = [self._store.new(parameters)]
            case "Set-TransportRule":
                self._store.set(_identity(arguments), parameters)
            case "Remove-TransportRule":
                self._store.remove(_identity(arguments))
        answer: JsonObject = {
            "@odata.context": f"{self._tenant_url(tenant)}/$metadata#Collection("
            "Exchange.GenericHashTable)",
            "value": value,
        }
        if next_skip is not None:
            # The next page is the same POST, body and all, to this link.
            carried = {name: text for name, text in query.items() if name != "$skiptoken"}
            carried["$skiptoken"] = _encode_skiptoken(next_skip)
            answer["@odata.nextLink"] = f"{self._tenant_url(tenant)}/InvokeCommand?" + urlencode(
                carried, quote_via=quote, safe="$"
            )
        return answer

    def _tenant_url(self, tenant: str) -> str:
        return f"{self._base_url}/adminapi/beta/{quote(tenant, safe='@')}"


def _canonical(name: str, known: Mapping[str, Any] | tuple[str, ...]) -> str | None:
    # PowerShell matches cmdlet and parameter names case-insensitively.
    for candidate in known:
        if candidate.lower() == name.lower():
            return candidate
    return None


def _settable(parameters: Mapping[str, Any], allowed: tuple[str, ...]) -> JsonObject:
    """Parameters under their canonical names with checked values; CmdletError 400 otherwise."""
    checked: JsonObject = {}
    for given, value in parameters.items():
        name = _canonical(given, allowed)
        if name is None:
            raise _binding_error(
                f"A parameter cannot be found that matches parameter name '{given}'."
            )
        checked[name] = _checked(name, value)
    return checked


def _checked(name: str, value: Any) -> Any:
    match name:
        case "Name" | "Identity":
            if not isinstance(value, str) or not value.strip():
                raise _binding_error(f"Parameter '{name}' must be a non-empty string.")
            if name == "Name" and len(value) > MAX_NAME_LENGTH:
                raise _validation_error(
                    f"The rule name is {len(value)} characters long; the maximum is "
                    f"{MAX_NAME_LENGTH}."
                )
            return value
        case "Comments" | "RejectMessageReasonText":
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise _binding_error(f"Parameter '{name}' must be a string.")
            if len(value) > MAX_TEXT_LENGTH:
                raise _validation_error(
                    f"{name} is {len(value)} characters long; the maximum is {MAX_TEXT_LENGTH}."
                )
            return value
        case "SenderIpRanges":
            return _ip_ranges(value)
        case "Mode":
            mode = _canonical(value, MODES) if isinstance(value, str) else None
            if mode is None:
                raise _binding_error(
                    f"Cannot convert value '{value}' to type RuleMode; valid values are "
                    f"{', '.join(MODES)}."
                )
            return mode
        case "RejectMessageEnhancedStatusCode":
            if value is None or value == "":
                return None
            if not isinstance(value, str) or not _STATUS_CODE.match(value):
                raise _validation_error(
                    f"'{value}' isn't a valid RejectMessageEnhancedStatusCode; use 5.7.1 or a "
                    "code from 5.7.900 through 5.7.999."
                )
            return value
        case "Priority":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _binding_error(
                    f"Parameter 'Priority' must be a non-negative integer: {value!r}."
                )
            return value
        case _:
            if not isinstance(value, bool):
                raise _binding_error(f"Parameter '{name}' must be true or false.")
            return value


def _ip_ranges(value: Any) -> list[str] | None:
    if value is None:
        return None
    # A lone string binds to the multi-valued parameter as one entry, as in PowerShell.
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        raise _binding_error("Parameter 'SenderIpRanges' must be a list of strings.")
    for entry in entries:
        if not isinstance(entry, str) or not _is_ip_range(entry):
            raise _validation_error(
                f"'{entry}' isn't a valid IP address or range for SenderIpRanges. Use a single "
                "address (192.168.1.1), a range (192.168.0.1-192.168.0.254) or a CIDR range "
                "(192.168.0.1/25)."
            )
    return list(entries) or None


def _is_ip_range(entry: str) -> bool:
    # Exact text only: no surrounding spaces, separators or IPv6 zone ids slip through.
    if not entry or entry != entry.strip() or "%" in entry:
        return False
    try:
        if "/" in entry:
            address, _, prefix = entry.partition("/")
            if not prefix.isdigit() or not address:
                return False
            # Exchange's own example, 192.168.0.1/25, has host bits set, so they are allowed.
            ipaddress.ip_network(entry, strict=False)
            return True
        if "-" in entry:
            first, _, last = entry.partition("-")
            low, high = ipaddress.ip_address(first), ipaddress.ip_address(last)
            return low.version == high.version and low <= high  # type: ignore[operator]
        ipaddress.ip_address(entry)
        return True
    except ValueError:
        return False


def _meaning(params: Mapping[str, Any]) -> JsonObject:
    """A rule's parameters with the address ranges as a set: their order means nothing."""
    ranges = params.get("SenderIpRanges")
    return {**params, "SenderIpRanges": sorted(ranges) if ranges else ranges}


def _stored(params: Mapping[str, Any]) -> JsonObject:
    """The rule as stored: every sized parameter, the Reject* pair completed, size checked."""
    stored: JsonObject = {name: params.get(name) for name in SIZED_PARAMETERS}
    status, text = stored["RejectMessageEnhancedStatusCode"], stored["RejectMessageReasonText"]
    # Exchange completes a half-given rejection with its defaults.
    if status is not None and text is None:
        stored["RejectMessageReasonText"] = DEFAULT_REJECT_REASON_TEXT
    elif text is not None and status is None:
        stored["RejectMessageEnhancedStatusCode"] = DEFAULT_REJECT_STATUS_CODE
    size = rule_size(stored)
    if size > RULE_SIZE_LIMIT:
        raise _validation_error(
            f"The transport rule '{stored['Name']}' is {size} bytes, which exceeds the limit of "
            f"{RULE_SIZE_LIMIT} bytes (8 KB) for a single rule."
        )
    return stored


def _identity(arguments: Mapping[str, Any]) -> str:
    identity = arguments.get("Identity")
    if not isinstance(identity, str):
        raise _binding_error("Missing an argument for the mandatory parameter 'Identity'.")
    return identity


def _without(parameters: Mapping[str, Any], name: str) -> JsonObject:
    return {key: value for key, value in parameters.items() if key.lower() != name.lower()}


def _priority_error(priority: int, highest: int) -> CmdletError:
    return _validation_error(f"Priority {priority} is out of range; use 0 through {highest}.")


def _binding_error(reason: str) -> CmdletError:
    return CmdletError(400, "BadRequest", reason, _BINDING)


def _validation_error(reason: str) -> CmdletError:
    return CmdletError(400, "BadRequest", reason, _VALIDATION)


def _encode_skiptoken(skip: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"skip": skip}).encode()).rstrip(b"=").decode()


def _decode_skiptoken(token: str) -> int:
    try:
        skip = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["skip"]
        if isinstance(skip, int) and not isinstance(skip, bool) and skip >= 0:
            return skip
    except (binascii.Error, ValueError, TypeError, KeyError):
        pass
    raise CmdletError(400, "BadRequest", "Invalid $skiptoken.")
